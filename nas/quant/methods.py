"""Switches for the seed's training methods on a built fake-quant model (issue 19 item 3).

Each acts on the `ActQuant` / `QuantConv2d` / `QuantLinear` modules of a model and leaves
everything else alone; none changes a parameter's shape or the payload, so the cost model,
export and the packed kernels see the same network.

- `set_sign_gradient(model, "approxsign" | "htanh")`: the 1-bit activation binarizer's
  backward, Bi-Real's ApproxSign (the default) or BNN's hard tanh 1_{|x| <= 1}.
- `real_valued_stage(model)`: Bi-Real's first stage (seed 003 §3 "Initialization"; survey
  000 ch. 2 sec. 2, item 4): inside the context every 1-bit input site computes Clip(-1, x, 1) and
  every 1-bit layer uses its float weight; on exit both binarize again, starting from the
  weights stage 1 reached.
- `fix_activation_clips(model)`: DoReFa activations, clip(x, 0, 1) then k bits, i.e. PACT
  with the clip held at 1 and not learned (signed sites: [-1, 1]). The clip stays a
  parameter (of value 1, `requires_grad` False), so the parameter contract, the export and
  the integer kernels read it as before.
- `quantize_gradients(model, bits)`: DoReFa's k-bit stochastic gradient quantization of
  each quantized conv's / linear's output gradient (`GradQuantize`), by forward hooks;
  returns the handles (`.remove()` undoes it).
"""

from contextlib import contextmanager

import torch
from torch import nn

from nas.errors import UsageError
from nas.quant.functions import ApproxSign, GradQuantize, HardTanhSign, quantizer
from nas.quant.modules import ActQuant, _QuantMixin

SIGN_GRADIENTS = {"approxsign": ApproxSign, "htanh": HardTanhSign}
GRAD_BITS = tuple(range(2, 17))  # k of DoReFa's gradient quantizer (the paper used 6)
DOREFA_CLIP = 1.0


def binary_act_sites(model: nn.Module) -> list[ActQuant]:
    return [m for m in model.modules() if isinstance(m, ActQuant) and m.bits == 1]


def binary_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, _QuantMixin) and m.w_bits == 1]


def set_sign_gradient(model: nn.Module, name: str) -> int:
    """Every 1-bit activation site's backward estimator; returns how many sites it set."""
    if name not in SIGN_GRADIENTS:
        raise UsageError(f"sign gradient {name!r}: expected one of {sorted(SIGN_GRADIENTS)}")
    sites = binary_act_sites(model)
    for m in sites:
        if name == "approxsign":
            m.__dict__.pop("sign_fn", None)  # the class default: a default model, attribute for attribute
        else:
            m.sign_fn = SIGN_GRADIENTS[name]
    return len(sites)


@contextmanager
def real_valued_stage(model: nn.Module):
    """Bi-Real's stage 1: 1-bit sites Clip(-1, x, 1), 1-bit layers' float weights (see the
    module docstring); restored on exit, however the block ends."""
    sites, layers = binary_act_sites(model), binary_layers(model)
    for m in sites:
        m.real_clip = True
    for m in layers:
        m.real_weights = True
    try:
        yield len(sites), len(layers)
    finally:
        for m in sites:
            m.__dict__.pop("real_clip", None)
        for m in layers:
            m.__dict__.pop("real_weights", None)


def fix_activation_clips(model: nn.Module, clip: float = DOREFA_CLIP) -> int:
    """DoReFa activations: every PACT clip set to `clip` and frozen; returns the count."""
    sites = [m for m in model.modules() if isinstance(m, ActQuant) and m.clip is not None]
    with torch.no_grad():
        for m in sites:
            m.clip.fill_(clip)
            m.clip.requires_grad_(False)
    return len(sites)


def _quantize_output(bits: int):
    def hook(module, inputs, output):
        if not torch.is_grad_enabled() or not output.requires_grad:
            return output
        return quantizer(GradQuantize, output, bits)

    return hook


def quantize_gradients(model: nn.Module, bits: int) -> list:
    """DoReFa gradient quantization at every quantized conv / linear output (1-bit layers
    included); returns the hook handles."""
    if isinstance(bits, bool) or bits not in GRAD_BITS:
        raise UsageError(f"gradient bits {bits!r}: expected a whole number from {GRAD_BITS[0]} to {GRAD_BITS[-1]}")
    return [m.register_forward_hook(_quantize_output(bits))
            for m in model.modules() if isinstance(m, _QuantMixin)]
