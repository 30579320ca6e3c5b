"""Microcontroller costs of the C package (`nas export --format c`), priced from the spec
before any training: `flash_bytes`, `sram_bytes`, the planned arena, and what the C export
refuses. The definitions are the ones `nas infer --c --mcu` measures from the Cortex-M4 ELF
(`nas.export.c.mcu_check`, docs/deploy-c.md):

- flash_bytes = the ELF's `.text` + `.ARM.exidx` + `.data` image, less the embedded test
  images: `FLASH_CODE_BYTES` (a constant: the kernels `nas_ops.o`, of which `KERNEL_CODE_BYTES`
  is their `.text`, plus startup, driver, `nas_model_run` and the libc / libm pieces: memcpy,
  memset, rintf) + the model's const data: the payload (`weight_bytes`, as payload.bin, its end
  padded to 4 bytes: the next input section's alignment) + one `nas_conv` descriptor
  (`CONV_DESC_BYTES`) per conv / linear + one `nas_step` (`STEP_DESC_BYTES`) per operation +
  the `nas_model` record (`MODEL_DESC_BYTES`). The generated code is table-driven
  (`nas_model_exec` walks the steps), so no code size depends on the model.
- sram_bytes = `.data` (0) + `.bss` (the planned arena + the driver's float32 logits, each
  8-aligned) + the stack peak measured by painting (`STACK_PEAK_BYTES`: every model runs the
  same driver loop and dispatcher, and the deepest frame is `nas_int_conv`'s; 4 bytes more,
  `STACK_REQUANT_BYTES`, when an integer conv writes the next layer's codes and so calls rintf
  from that frame).
- Exact for the build `mcu_check` makes (10 embedded test images: the driver's loop code and
  frame depend on the count, and 40 x H x W x C bytes of images keep the model's data 8-aligned;
  the driver reads the images' stride from memory, so its code does not depend on the input
  size, whose immediate encodings once moved flash by 8 bytes on a 33 x 33 input).

The constants were measured once with Debian's arm-none-eabi-gcc 12.2.1 (gcc-arm-none-eabi
15:12.2.rel1-1, newlib 3.3.0) at `nas.export.c.MCU_CFLAGS`, by

    nas infer --bundle B --c --mcu --json       # B: any bundle exported with --format c
    arm-none-eabi-size -A model.elf nas_ops.o   # (the build directory of mcu_check)

and `tests/test_mcu_cost.py` holds prediction == the linker's figures on exported archs from
search_spaces/mcu.yaml (another compiler version changes the constants: that test then fails
and says by how much).

The C program is derived from `nas.cost.graph` exactly as `nas.export.c.lower` derives it
from the packed model (tests compare the two step by step):
- an integer conv / linear (`nas.cost.kernel_path.layer_path` == "integer") whose input is
  float32 gets a quantize step of its own; its output is the next layer's codes when exactly
  one op reads it and that op is an integer conv (`nas.export.convert.chain_integer_layers`),
  else float32. Codes are stored at the reading layer's width, packed per pixel (a pixel of C
  channels at b bits takes ceil(C * b / 8) bytes: `nas.cost.graph.tensor_bytes`'s rule);
- a residual add whose one input is an integer or binary conv read by nothing else is fused
  into that conv (its epilogue adds the other input, float32);
- a binary conv (1-bit weights, 1-bit input, one group) reads the packed signs of its float32
  input (sign-and-pack step) and writes float32;
- the global pool and the binary shortcut's 2x2 pool read and write float32;
- refused (the C export's one-line errors): float layers (16/32-bit, or a 2..8-bit layer
  whose input is not 2/4/8-bit PACT, or dilated), binary layers with groups > 1 or multi-bit
  inputs, squeeze-excite, shift, channel shuffle and dense concatenation.

Arena: every tensor's lifetime over the step order (a step's inputs and output are live
together), each tensor 8-aligned; `plan_arena` places them two ways, first fit in execution
order and largest first (TFLite Micro's greedy rule), and keeps the smaller plan.
"""

from dataclasses import dataclass, field

from nas.cost.graph import Graph, expand, tensor_bytes
from nas.cost.kernel_path import layer_path

ALIGN = 8  # arena offsets and sizes
F32, CODES, BITS = "f32", "codes", "bits"

# --- measured constants (see the module docstring for the command and the toolchain) ---
KERNEL_CODE_BYTES = 3240  # nas_ops.o's .text* (every kernel and the dispatcher; all are linked)
FLASH_CODE_BYTES = 4328  # flash that is not model data: the kernels' 3240 + vectors, startup, driver,
# nas_model_run, memcpy / memset / rintf and their constants (the ELF's .text less the items below)
STACK_PEAK_BYTES = 272  # painted stack peak: reset handler + driver + nas_model_exec + nas_int_conv (the
# deepest kernel frame: 160 bytes, `-fstack-usage`; nas_binary_conv's is 152)
STACK_REQUANT_BYTES = 4  # more when an integer conv writes the next layer's codes (it then calls rintf)
CONV_DESC_BYTES = 96  # sizeof(nas_conv) on Cortex-M4
STEP_DESC_BYTES = 48  # sizeof(nas_step) on Cortex-M4
MODEL_DESC_BYTES = 32  # sizeof(nas_model) (28), and the 4 bytes of fill that 8-align the payload after it
PAYLOAD_ALIGN = 4  # the payload's end is padded to the next input section's alignment (libm's .rodata: 4)
DATA_BYTES = 0  # .data: the package has no initialised writable data


def _round(n: int, a: int = ALIGN) -> int:
    return -(-n // a) * a


@dataclass(frozen=True)
class CTensor:
    shape: tuple[int, int, int]  # (H, W, C)
    kind: str  # f32 | codes | bits
    code_bits: int = 8  # codes: their width, packed per pixel as `nas.cost.graph.tensor_bytes` counts them

    @property
    def nbytes(self) -> int:
        return c_tensor_bytes(self.shape, self.kind, self.code_bits)


def c_tensor_bytes(shape: tuple[int, int, int], kind: str, code_bits: int = 8) -> int:
    """Bytes of an (H, W, C) tensor in the C package's arena: float32, packed signs, or codes
    packed per pixel at `code_bits`; the cost model's own rule (`tensor_bytes`) at that width."""
    h, w, c = shape
    return tensor_bytes((c, h, w), {F32: 32, BITS: 1}.get(kind, code_bits))


@dataclass(frozen=True)
class CStep:
    name: str
    op: str  # quantize | int_conv | pack_signs | binary_conv | add | avgpool2 | global_avgpool
    inputs: tuple[int, ...]  # tensor ids (main input first, then the residual)
    output: int


@dataclass
class CProgram:
    tensors: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    refused: list = field(default_factory=list)  # one line per refused op
    input: int = 0
    result: int = -1

    def tensor(self, shape, kind, code_bits=8) -> int:
        self.tensors.append(CTensor(tuple(shape), kind, code_bits))
        return len(self.tensors) - 1

    def step(self, name, op, inputs, shape, kind, code_bits=8) -> int:
        out = self.tensor(shape, kind, code_bits)
        self.steps.append(CStep(name, op, tuple(inputs), out))
        return out

    @property
    def convs(self) -> int:
        return sum(s.op in ("int_conv", "binary_conv") for s in self.steps)


def _hwc(shape) -> tuple[int, int, int]:
    c, h, w = shape
    return (h, w, c)


def _path(op, g: Graph) -> str:
    c_in = g.shapes[op.inputs[0]][0]
    row = c_in if op.kind == "linear" else (c_in // op.groups) * op.kernel * op.kernel
    return layer_path(op.w_bits, op.read_bits[0], row, op.dilation)


REFUSED_KINDS = {"mul": "squeeze-excite gate", "concat": "dense concatenation", "shift": "shift",
                 "shuffle": "channel shuffle"}


def c_program(g: Graph) -> CProgram:
    """The C package's steps and tensors for graph `g` (rules in the module docstring);
    `refused` lists what the C export would refuse (then the program is incomplete)."""
    prog = CProgram()
    readers: dict[int, list[int]] = {}
    for i, op in enumerate(g.ops):
        for t in op.inputs:
            readers.setdefault(t, []).append(i)
    paths = {i: _path(op, g) for i, op in enumerate(g.ops) if op.kind in ("conv", "linear")}
    # residual adds fused into the conv that produces one of their inputs
    fused_into: dict[int, tuple[int, int]] = {}  # conv index -> (add index, residual graph tensor)
    fused_adds = set()
    producer = {op.output: i for i, op in enumerate(g.ops)}
    for i, op in enumerate(g.ops):
        if op.kind != "add":
            continue
        for pos in (1, 0):
            t = op.inputs[pos]
            p = producer.get(t)
            if p is not None and paths.get(p) in ("integer", "binary") and readers[t] == [i] \
                    and p not in fused_into:
                fused_into[p] = (i, op.inputs[1 - pos])
                fused_adds.add(i)
                break
    # a graph tensor's reader after fusion (an add fused into a conv reads through the conv)
    out_of = {i: (g.ops[fused_into[i][0]].output if i in fused_into else op.output) for i, op in enumerate(g.ops)}

    def sole_integer_reader(t: int) -> int | None:
        """The op index of t's one reader when that is an integer conv reading it as its input."""
        rs = [r for r in readers.get(t, []) if r not in fused_adds]
        rs += [conv for conv, (_, res) in fused_into.items() if res == t]
        return rs[0] if len(rs) == 1 and paths.get(rs[0]) == "integer" and g.ops[rs[0]].inputs[0] == t else None

    cmap = {g.input: prog.tensor(_hwc(g.shapes[g.input]), F32)}
    prog.input = cmap[g.input]

    def f32_of(t: int, name: str) -> int:
        x = cmap[t]
        if prog.tensors[x].kind != F32:
            prog.refused.append(f"{name}: reads {prog.tensors[x].kind}; expected float32")
        return x

    for i, op in enumerate(g.ops):
        if i in fused_adds:
            continue
        out = out_of[i]
        shape = _hwc(g.shapes[out])
        if op.kind in REFUSED_KINDS:
            prog.refused.append(f"{op.name}: {REFUSED_KINDS[op.kind]} has no C form")
            cmap[out] = prog.tensor(shape, F32)
            continue
        if op.kind in ("conv", "linear"):
            path = paths[i]
            res = [f32_of(fused_into[i][1], op.name)] if i in fused_into else []
            if path == "float":
                prog.refused.append(f"{op.name}: runs in float (w_bits={op.w_bits}, a_bits={op.read_bits[0]})")
                cmap[out] = prog.tensor(shape, F32)
            elif path == "binary":
                if op.read_bits[0] != 1 or op.groups != 1:
                    prog.refused.append(f"{op.name}: binary with a_bits={op.read_bits[0]}, groups={op.groups} "
                                        f"(C: a_bits=1, groups=1)")
                x = cmap[op.inputs[0]]
                if prog.tensors[x].kind != BITS:
                    prog.refused.append(f"{op.name}: binary conv reads {prog.tensors[x].kind}; expected signs")
                cmap[out] = prog.step(op.name, "binary_conv", [x, *res], shape, F32)
            else:
                x = cmap[op.inputs[0]]
                if prog.tensors[x].kind == F32:
                    x = prog.step(op.name + " (input codes)", "quantize", [x], prog.tensors[x].shape, CODES,
                                  op.read_bits[0])
                elif prog.tensors[x].kind != CODES:
                    prog.refused.append(f"{op.name}: integer conv reads {prog.tensors[x].kind}")
                reader = sole_integer_reader(out)
                if reader is None:
                    cmap[out] = prog.step(op.name, "int_conv", [x, *res], shape, F32)
                else:
                    cmap[out] = prog.step(op.name, "int_conv", [x, *res], shape, CODES, g.ops[reader].read_bits[0])
            if op.act is not None and path == "binary":
                prog.refused.append(f"{op.name}: binary conv with a fused {op.act}")
            continue
        if op.kind == "sign":
            cmap[out] = prog.step(op.name, "pack_signs", [f32_of(op.inputs[0], op.name)], shape, BITS)
        elif op.kind == "add":
            cmap[out] = prog.step(op.name, "add", [f32_of(t, op.name) for t in op.inputs], shape, F32)
        elif op.kind == "avgpool":
            cmap[out] = prog.step(op.name, "avgpool2", [f32_of(op.inputs[0], op.name)], shape, F32)
        elif op.kind == "global_pool":
            cmap[out] = prog.step(op.name, "global_avgpool", [f32_of(op.inputs[0], op.name)], shape, F32)
        else:
            prog.refused.append(f"{op.name}: {op.kind} has no C form")
            cmap[out] = prog.tensor(shape, F32)
    prog.result = cmap[g.ops[-1].output]
    if not prog.refused and prog.tensors[prog.result].kind != F32:
        prog.refused.append(f"{g.ops[-1].name}: the model ends in {prog.tensors[prog.result].kind}; expected "
                            f"float32 logits")
    return prog


def plan_arena(sizes: list[int], steps: list[tuple[tuple[int, ...], int]], first: int, result: int
               ) -> tuple[dict[int, int], int]:
    """Offsets of tensors in one static arena: tensor t (`sizes[t]` bytes, placed 8-aligned)
    lives from the step that writes it (`first`: before step 0) to the last step that reads it
    (`result`: to the end); `steps` = (input ids, output id) in execution order. Two plans,
    first fit in execution order and largest first at the lowest free offset; the smaller wins
    (ties: first fit). Returns ({tensor: offset}, arena bytes)."""
    n = len(steps)
    start, end = {first: -1}, {first: -1}
    for i, (ins, out) in enumerate(steps):
        start[out] = i
        end.setdefault(out, i)
        for t in ins:
            end[t] = max(end.get(t, -1), i)
    end[result] = n
    size = {t: _round(sizes[t]) for t in start}

    def overlaps(a, b):
        return start[a] <= end[b] and start[b] <= end[a]

    def place(order):
        placed, top = [], 0  # (offset, size, tensor)
        offsets = {}
        for t in order:
            pos = 0
            for off, sz, u in sorted(placed):
                if not overlaps(t, u):
                    continue
                if pos + size[t] <= off:
                    break
                pos = max(pos, off + sz)
            offsets[t] = pos
            placed.append((pos, size[t], t))
            top = max(top, pos + size[t])
        return offsets, top

    in_order = sorted(start, key=lambda t: (start[t], t))
    plans = [place(in_order), place(sorted(start, key=lambda t: (-size[t], start[t], t)))]
    return min(plans, key=lambda p: p[1])


@dataclass(frozen=True)
class McuCost:
    """The C package's figures on a Cortex-M4 (definitions in the module docstring); None
    when the C export refuses the architecture (`refused` says why)."""

    flash_bytes: int | None
    sram_bytes: int | None
    arena_bytes: int | None
    steps: int
    convs: int
    refused: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"flash_bytes": self.flash_bytes, "sram_bytes": self.sram_bytes, "arena_bytes": self.arena_bytes,
                "c_steps": self.steps, "c_convs": self.convs, "c_refused": len(self.refused)}


def program_arena(prog: CProgram) -> tuple[dict[int, int], int]:
    return plan_arena([t.nbytes for t in prog.tensors], [(s.inputs, s.output) for s in prog.steps], prog.input,
                      prog.result)


def mcu_cost(arch, weight_bytes: int, num_classes: int | None = None) -> McuCost:
    """Flash and SRAM of `arch`'s C package on the Cortex-M4 build (`weight_bytes`: its payload,
    `nas.cost.model`'s figure)."""
    g = expand(arch)
    prog = c_program(g)
    if prog.refused:
        return McuCost(None, None, None, len(prog.steps), prog.convs, tuple(prog.refused))
    _, arena = program_arena(prog)
    classes = num_classes if num_classes is not None else g.shapes[g.ops[-1].output][0]
    flash = (FLASH_CODE_BYTES + _round(weight_bytes, PAYLOAD_ALIGN) + CONV_DESC_BYTES * prog.convs
             + STEP_DESC_BYTES * len(prog.steps) + MODEL_DESC_BYTES)
    requant = any(s.op == "int_conv" and prog.tensors[s.output].kind == CODES for s in prog.steps)
    sram = DATA_BYTES + arena + _round(4 * classes) + STACK_PEAK_BYTES + (STACK_REQUANT_BYTES if requant else 0)
    return McuCost(flash, sram, arena, len(prog.steps), prog.convs, ())
