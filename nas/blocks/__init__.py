"""Block kinds, one file each, and the model builder.

Each kind file (`ir.py`, `shift.py`, `grouped.py`, `dense.py`) holds, side by side:

- `KEYS`: the arch-string keys its segment takes, in canonical order;
- `MODULE_NAMES`: cost op role -> the module it is built as (float, 1-bit);
- `expand(net, prefix, x, b, in_chs, stride, bits)`: its op expansion onto a
  `nas.cost.graph.GraphBuilder`, i.e. what the cost model prices;
- `build(b, in_chs, stride, bits)`: its modules (`bits`: (w_bits, a_bits) of each of the
  block's convs, `b.block_bits(j)`, in the order of `layer_roles(b)`);
- `layer_roles(b)`: the block's bit-carrying convs in execution order (their count is
  `nas.space.spec.block_layers`, which the spec and codec validate against).

Design (why the cost model can import this package without torch): a kind file imports
nothing heavy at module level - only `nas.blocks.common` (pure rules: `make_divisible`,
the residual rule, widths). `build` imports its torch layers (`nas.blocks.layers`)
inside the function. So `nas.cost.graph` dispatches to `KINDS[kind].expand` while staying
torch-free, and `nas.blocks.model` (torch) dispatches to `KINDS[kind].build`. The widths,
the residual rule and the layer order are written once per kind, in that kind's file;
`tests/test_blocks.py` checks, for every kind x stride x bit width, that the expansion's
weighted layers and the built module's quantized layers are one sequence.

`build_model`, `QuantNet`, `QuantLayer` and the layer classes are importable from here
too; they load torch on first use (PEP 562 module `__getattr__`).
"""

from nas.blocks import dense, grouped, ir, shift

KINDS = {"ir": ir, "shift": shift, "grouped": grouped, "dense": dense}  # kind name -> kind module



def module_name(arch, op_name: str) -> str:
    """The qualified module name (`QuantNet.quant_layers`) of a weighted cost op (`conv` /
    `linear` in `nas.cost.expand`), through the op's kind file's `MODULE_NAMES`."""
    if op_name in ("stem", "head"):
        return f"{op_name}.conv"
    if not op_name.startswith("blocks."):
        return op_name
    _, i, j, rest = op_name.split(".", 3)
    b = arch.blocks[int(i)]
    shortcut = rest.endswith(".shortcut.conv")
    if shortcut:
        rest = rest[: -len(".shortcut.conv")]
    *outer, role = rest.split(".")
    name = ".".join([*outer, KINDS[b.kind].MODULE_NAMES.get(role, (role, role))[b.binary]])
    if b.binary:  # a Bi-Real unit: its binary conv, or its shortcut's 1x1 conv
        name += ".shortcut.conv" if shortcut else ".conv"
    return f"blocks.{i}.{j}.{name}"


_TORCH_NAMES = {
    "build_model": "nas.blocks.model", "QuantNet": "nas.blocks.model", "QuantLayer": "nas.blocks.model",
    "build_stage": "nas.blocks.model", "Block": "nas.blocks.layers", "ChannelShuffle": "nas.blocks.layers",
    "DenseBlock": "nas.blocks.layers", "Shift": "nas.blocks.layers", "ActiveShift": "nas.blocks.layers",
}


def __getattr__(name):
    if name in _TORCH_NAMES:
        import importlib

        return getattr(importlib.import_module(_TORCH_NAMES[name]), name)
    raise AttributeError(f"module 'nas.blocks' has no attribute {name!r}")


__all__ = ["KINDS", "module_name", *_TORCH_NAMES]
