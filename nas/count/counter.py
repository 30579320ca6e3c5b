"""Count params and MACs of a built `nn.Module`, table-driven, with forward hooks.

The module-side cross-check of `nas.cost` (which never looks at modules). Like fvcore's
counter: a table maps module kinds to handlers; a module nobody handles is *reported*,
never silently counted as zero:

- a leaf module (no children) with no handler is listed in `CountResult.unknown`, with its
  parameter count (its parameters are still in `params`, which is always the sum of
  `p.numel()` over the model's parameters);
- parameters held directly by a non-leaf module without a handler are listed too;
- compute done outside modules (functional calls, `x @ w`) is caught by running the same
  forward pass under `torch.utils.flop_counter.FlopCounterMode`: conv / matmul MACs that no
  handler accounted for are reported as `unattributed_macs` (ops torch's flop counter has no
  formula for are invisible to this check; CPU scaled-dot-product attention is added here);
- a conv / linear the forward pass never called (a fused path that bypasses it) is listed.

MACs follow the vocabulary: conv k_h*k_w*(C_in/g)*C_out*H_out*W_out, linear in*out (per
sample, batch 1); normalisation, activations, pooling, shift, shuffle, quantizers: 0.
Counting (`count_modules`) and printing (`format_counts`) are separate.
"""

import math
import re
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class ModuleCount:
    name: str
    type: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    params: int  # parameters held directly by this module
    macs: int


@dataclass(frozen=True)
class CountResult:
    params: int  # sum of p.numel() over model.parameters()
    macs: int  # sum of the handlers' MACs
    layers: tuple[ModuleCount, ...]  # handled modules with MACs or parameters, in call order
    unknown: tuple[str, ...] = field(default_factory=tuple)  # "name (Type): why"
    unattributed_macs: int = 0  # conv/matmul MACs seen by torch but by no handler

    @property
    def complete(self) -> bool:
        return not self.unknown and self.unattributed_macs == 0


def _spatial(t: torch.Tensor) -> int:
    return math.prod(t.shape[2:]) if t.dim() > 2 else 1


def _conv_macs(m, inputs, output) -> int:
    return m.weight.numel() * _spatial(output)


def _conv_transpose_macs(m, inputs, output) -> int:
    return m.weight.numel() * _spatial(inputs[0])


def _linear_macs(m, inputs, output) -> int:
    rows = output.numel() // output.shape[0] // m.out_features  # tokens per sample
    return m.in_features * m.out_features * rows


def _zero(m, inputs, output) -> int:
    return 0


# Module type -> handler, first match wins (isinstance: quantized wrappers that subclass
# nn.Conv2d / nn.Linear are convs / linears).
TYPE_HANDLERS: tuple[tuple[type, object], ...] = (
    (nn.modules.conv._ConvTransposeNd, _conv_transpose_macs),
    (nn.modules.conv._ConvNd, _conv_macs),
    (nn.Linear, _linear_macs),
    (nn.modules.batchnorm._NormBase, _zero),  # BatchNorm (folded at deployment), InstanceNorm
    (nn.GroupNorm, _zero), (nn.LayerNorm, _zero),
    (nn.modules.pooling._MaxPoolNd, _zero), (nn.modules.pooling._AvgPoolNd, _zero),
    (nn.modules.pooling._AdaptiveAvgPoolNd, _zero), (nn.modules.pooling._AdaptiveMaxPoolNd, _zero),
    (nn.ReLU, _zero), (nn.ReLU6, _zero), (nn.SiLU, _zero), (nn.Hardswish, _zero), (nn.Hardsigmoid, _zero),
    (nn.Sigmoid, _zero), (nn.Tanh, _zero), (nn.GELU, _zero), (nn.LeakyReLU, _zero), (nn.ELU, _zero),
    (nn.PReLU, _zero), (nn.Mish, _zero), (nn.Softmax, _zero), (nn.Hardtanh, _zero),
    (nn.Identity, _zero), (nn.Dropout, _zero), (nn.Flatten, _zero), (nn.Upsample, _zero),
    (nn.Sequential, _zero),  # a container: its children are counted; an empty one is the identity
)
# Class-name handlers (duck typing) for modules from timm and from this project that
# compute nothing countable as MACs: activations, drop-path, the shift op, channel shuffle,
# quantizers (PACT clip, sign / ApproxSign, fake-quant). Matched on the words of the class
# name (CamelCase split, lowercased: "ChannelShuffle" -> channel, shuffle), so "Mystery"
# is not a "ste". A matching module that does matmuls anyway is still caught by the
# FlopCounterMode check (`unattributed_macs`).
NAME_WORDS: dict[str, object] = {word: _zero for word in (
    "swish", "sigmoid", "gelu", "mish", "relu", "silu", "tanh", "softmax", "drop", "droppath", "dropblock",
    "shift", "shuffle", "quant", "quantizer", "pact", "sign", "ste", "clip",
)}


def _words(class_name: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", class_name)]


MAC_HANDLERS = (_conv_macs, _conv_transpose_macs, _linear_macs)


def handler_for(module: nn.Module):
    """The handler of `module`, or None when the table does not know it."""
    for cls, fn in TYPE_HANDLERS:
        if isinstance(module, cls):
            return fn
    for word in _words(type(module).__name__):
        if word in NAME_WORDS:
            return NAME_WORDS[word]
    return None


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """torch's flop counter has no formula for the CPU attention kernel: q @ k^T and
    attn @ v, 2 flops per MAC, as its formulas for the CUDA kernels count them."""
    batch, heads, q_len, e = query_shape  # (N, heads, L, E)
    return 2 * batch * heads * q_len * key_shape[-2] * (e + value_shape[-1])


# ops torch.utils.flop_counter does not know but models call (timm attention on CPU)
EXTRA_FLOP_FORMULAS = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    EXTRA_FLOP_FORMULAS[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops


def _shape(x) -> tuple[int, ...]:
    if isinstance(x, torch.Tensor):
        return tuple(x.shape)
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return tuple(x[0].shape)
    return ()


def count_modules(model: nn.Module, input_shape: tuple[int, ...]) -> CountResult:
    """Run one forward pass of a batch-1 zero tensor of `input_shape` (C, H, W), eval mode,
    autograd on, and count. The model's training mode is restored afterwards."""
    records: list[ModuleCount] = []
    handled_macs = 0
    unknown: list[str] = []
    hooks = []
    called: set[str] = set()

    def hook(name, fn):
        def run(m, inputs, output):
            nonlocal handled_macs
            called.add(name)
            macs = int(fn(m, inputs, output))
            handled_macs += macs
            own = sum(p.numel() for p in m.parameters(recurse=False))
            if macs or own:
                records.append(ModuleCount(name, type(m).__name__, _shape(inputs), _shape(output), own, macs))
        return run

    for name, m in model.named_modules():
        fn = handler_for(m)
        own = sum(p.numel() for p in m.parameters(recurse=False))
        leaf = next(m.children(), None) is None
        if fn is not None:
            hooks.append(m.register_forward_hook(hook(name or type(m).__name__, fn)))
        elif leaf:
            unknown.append(f"{name or '<root>'} ({type(m).__name__}): no handler, {own} parameters, "
                           f"compute not counted")
        elif own:
            unknown.append(f"{name or '<root>'} ({type(m).__name__}): holds {own} parameters directly, "
                           f"no handler, its compute not counted")
    was_training = model.training
    model.eval()
    try:
        # autograd on: the differentiable path runs every module's forward; inference-only
        # fast paths (e.g. the packed-binary kernels, taken under no_grad) would bypass the
        # hooks and torch's flop counter alike
        x = torch.zeros((1, *input_shape), requires_grad=True)
        with torch.enable_grad(), FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) as flops:
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for name, m in model.named_modules():
        if handler_for(m) in MAC_HANDLERS and (name or type(m).__name__) not in called:
            unknown.append(f"{name} ({type(m).__name__}): not called by the forward pass, its compute not counted")
    torch_macs = flops.get_total_flops() // 2  # FlopCounterMode counts a MAC as 2 flops
    return CountResult(
        params=sum(p.numel() for p in model.parameters()),
        macs=handled_macs,
        layers=tuple(records),
        unknown=tuple(unknown),
        unattributed_macs=max(0, torch_macs - handled_macs),
    )


def format_counts(result: CountResult, top: int | None = None) -> str:
    """A plain-text table of the counted modules (largest MACs first when `top` is set)."""
    rows = list(result.layers)
    if top is not None:
        rows = sorted(rows, key=lambda r: r.macs, reverse=True)[:top]
    width = max([len(r.name) for r in rows] + [6])
    lines = [f"{'module':<{width}}  {'type':<18} {'out shape':<20} {'params':>12} {'macs':>15}"]
    for r in rows:
        lines.append(f"{r.name:<{width}}  {r.type:<18} {str(list(r.out_shape)):<20} {r.params:>12,} {r.macs:>15,}")
    lines.append(f"{'total':<{width}}  {'':<18} {'':<20} {result.params:>12,} {result.macs:>15,}")
    for u in result.unknown:
        lines.append(f"unknown: {u}")
    if result.unattributed_macs:
        lines.append(f"unattributed: {result.unattributed_macs:,} MACs in functional ops no module handler saw")
    return "\n".join(lines)
