"""Fake-quant modules: an activation quantizer and conv / linear layers with weight bits.

`QuantConv2d` / `QuantLinear` subclass `nn.Conv2d` / `nn.Linear`, so anything that walks a
model for convs and linears (the module counter, ONNX export) still sees them; they add

- ``w_bits``: weight bits, quantized on the fly by `quantize_weight` (the float weight is
  the trained parameter);
- ``a_bits``: bits of the layer's *input*, quantized by the layer's `ActQuant` first;
- ``signed``: whether the input may be negative (the PACT clip is [-α, α], else [0, α]).

Parameter contract (the cost model counts exactly these): an input site with
2 <= a_bits <= 8 owns one learnable scalar (the PACT clip, ``act_quant.clip``); a_bits of
1, 16 and 32 own none. Weight scales (mean |W| at 1 bit, max |tanh W| at 2..8 bits) are
computed from the weight, never parameters.

A layer with w_bits == 1 computes  y = α_c · conv(x_q, sign(W))  (the accumulator of ±1
weights times the per-channel scale, as the packed kernels do). Inputs binarized to ±1
(a_bits == 1) are padded with +1 (one-padding), so the packed kernels, which have no
zero, compute the same thing; every other input is zero-padded.

Training-method switches (class attributes, so a default model's state and arithmetic are
unchanged; set per instance by `nas.quant.methods`):

- ``ActQuant.sign_fn``: the 1-bit activation binarizer, `ApproxSign` (Bi-Real, default) or
  `HardTanhSign` (BNN);
- ``ActQuant.real_clip`` / ``_QuantMixin.real_weights``: Bi-Real's first training stage, a
  1-bit input site computes Clip(-1, x, 1) (`F.hardtanh`: gradient 1 on the open interval
  (-1, 1), 0 elsewhere) and a 1-bit layer uses its float weight
  (`nas.quant.methods.real_valued_stage`). One-padding stays: the padded value is +1 in
  both stages.

Convert both ways: ``QuantConv2d.from_conv(conv, w_bits, a_bits)`` keeps the conv's weight
and bias; ``to_conv()`` gives a plain conv holding the fake-quantized weight.
"""

import torch
import torch.nn.functional as F
from torch import nn

from nas.cost.layout import has_clip
from nas.errors import UsageError
from nas.quant.functions import (PACT, ApproxSign, HalfSTE, SignSTE, act_steps, binary_scale, dorefa_scale,
                                 pact_reference, quantize_weight, quantizer)
from nas.space.spec import BITS  # the one list of bit widths

PACT_BITS = tuple(b for b in BITS if has_clip(b))  # activation widths that own a learnable clip
# Initial PACT clips. ReLU outputs get 6 (ReLU6's range) at 8 bits; fewer levels start
# with a tighter clip so BN-scaled inputs (~N(0, 1)) do not all round to zero. Signed
# sites see BN outputs and residual sums directly.
CLIP_INIT = {(8, False): 6.0, (4, False): 4.0, (2, False): 2.0,
             (8, True): 4.0, (4, True): 3.0, (2, True): 1.5}
MIN_CLIP = 1e-3  # a clip driven to or below zero is held here (its gradient stops)


def check_bits(where: str, w_bits: int, a_bits: int) -> None:
    """UsageError unless both widths are allowed and 1-bit inputs meet 1-bit weights."""
    for name, value in (("w_bits", w_bits), ("a_bits", a_bits)):
        if value not in BITS:
            raise UsageError(f"{where}: {name}={value!r} is not allowed; expected one of {list(BITS)}")
    if a_bits == 1 and w_bits != 1:
        raise UsageError(f"{where}: a_bits=1 with w_bits={w_bits} is not allowed; 1-bit inputs need "
                         f"w_bits=1 (XNOR-popcount)")


class ActQuant(nn.Module):
    """Quantizer of one activation site: sign (1), PACT (2/4/8), half (16) or identity (32)."""

    sign_fn = ApproxSign  # the 1-bit binarizer's autograd Function (module docstring)
    real_clip = False  # 1 bit: Clip(-1, x, 1) instead of sign (Bi-Real's first stage)

    def __init__(self, bits: int = 32, signed: bool = True, clip_init: float | None = None):
        super().__init__()
        if bits not in BITS:
            raise UsageError(f"activation quantizer: bits={bits!r} is not allowed; expected one of {list(BITS)}")
        self.bits, self.signed = bits, signed
        if bits in PACT_BITS:
            self.clip = nn.Parameter(torch.tensor(float(clip_init or CLIP_INIT[bits, signed])))
        else:
            self.register_parameter("clip", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits == 32:
            return x
        if self.bits == 16:
            return quantizer(HalfSTE, x)
        if self.bits == 1:
            return F.hardtanh(x) if self.real_clip else quantizer(self.sign_fn, x)  # Clip(-1, x, 1)
        alpha, steps = self.clip.clamp_min(MIN_CLIP), act_steps(self.bits, self.signed)
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return pact_reference(x, alpha, steps, self.signed)  # traceable ops (pact.c is opaque to a trace)
        return quantizer(PACT, x, alpha, steps, self.signed)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}"


class _QuantMixin:
    """What QuantConv2d and QuantLinear share: bits, the input quantizer, the weight."""

    w_bits: int
    a_bits: int
    ternary: bool
    real_weights = False  # 1 bit: the float weight, unbinarized (Bi-Real's first stage)

    def _init_quant(self, w_bits: int, a_bits: int, signed: bool, ternary: bool) -> None:
        check_bits(type(self).__name__, w_bits, a_bits)
        if ternary and w_bits != 2:
            raise UsageError(f"{type(self).__name__}: ternary=True with w_bits={w_bits} is not allowed; "
                             f"ternary is a 2-bit option, expected w_bits=2")
        self.w_bits, self.a_bits, self.ternary = w_bits, a_bits, ternary
        self.act_quant = ActQuant(a_bits, signed)

    def quant_weight(self) -> torch.Tensor:
        """The weight the forward pass uses (1 bit: α_c · sign(W); W itself while `real_weights`)."""
        if self.real_weights and self.w_bits == 1:
            return self.weight
        return quantize_weight(self.weight, self.w_bits, self.ternary)

    def weight_scale(self) -> torch.Tensor | None:
        """The per-output-channel scale (C_out,) stored with the weights: mean |W| at 1 bit,
        max |tanh W| at 2..8 bits; None at 16 and 32 bits."""
        if self.w_bits == 1:
            return binary_scale(self.weight)
        return dorefa_scale(self.weight) if self.w_bits <= 8 else None

    def extra_repr(self) -> str:
        tern = ", ternary" if self.ternary else ""
        return f"{super().extra_repr()}, w_bits={self.w_bits}, a_bits={self.a_bits}{tern}"


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """nn.Conv2d whose input and weight are fake-quantized (see the module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, *, w_bits: int = 32, a_bits: int = 32,
                 signed: bool = True, ternary: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        if not isinstance(self.padding, tuple):
            raise UsageError(f"QuantConv2d: padding={padding!r} is not allowed; expected an int or a pair")
        self._init_quant(w_bits, a_bits, signed, ternary)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, w_bits: int, a_bits: int, signed: bool = True,
                  ternary: bool = False) -> "QuantConv2d":
        """A QuantConv2d with `conv`'s geometry, sharing its weight and bias tensors."""
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.dilation, conv.groups, conv.bias is not None, w_bits=w_bits, a_bits=a_bits,
                signed=signed, ternary=ternary)
        q.weight = conv.weight
        q.bias = conv.bias
        return q

    def to_conv(self) -> nn.Conv2d:
        """A plain conv holding the fake-quantized weight (activations are no longer quantized)."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, self.groups, self.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(self.quant_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def one_padded(self) -> bool:
        """Inputs are ±1 and padded with +1 (not 0)."""
        return self.a_bits == 1

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        padding = self.padding
        if self.one_padded() and any(padding):
            ph, pw = padding
            x = F.pad(x, (pw, pw, ph, ph), value=1.0)
            padding = 0
        return F.conv2d(x, weight, bias, self.stride, padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_quant(x)
        if self.w_bits == 1 and not self.real_weights:
            # accumulate ±1 weights exactly, then scale per channel: (N, C_out, H, W)
            y = self._conv(x, quantizer(SignSTE, self.weight)) * binary_scale(self.weight).reshape(1, -1, 1, 1)
            return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)
        # the bias inside the conv, as nn.Conv2d adds it: at 32 bits this is nn.Conv2d exactly
        # (a separate `+ bias` rounds differently on some oneDNN kernels, e.g. AVX2-only CPUs)
        return self._conv(x, self.quant_weight(), self.bias)


class QuantLinear(_QuantMixin, nn.Linear):
    """nn.Linear whose input and weight are fake-quantized (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, w_bits: int = 32,
                 a_bits: int = 32, signed: bool = True, ternary: bool = False):
        super().__init__(in_features, out_features, bias)
        self._init_quant(w_bits, a_bits, signed, ternary)

    @classmethod
    def from_linear(cls, linear: nn.Linear, w_bits: int, a_bits: int, signed: bool = True,
                    ternary: bool = False) -> "QuantLinear":
        """A QuantLinear with `linear`'s shape, sharing its weight and bias tensors."""
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, w_bits=w_bits,
                a_bits=a_bits, signed=signed, ternary=ternary)
        q.weight = linear.weight
        q.bias = linear.bias
        return q

    def to_linear(self) -> nn.Linear:
        """A plain linear holding the fake-quantized weight."""
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(self.quant_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_quant(x)
        if self.w_bits == 1 and not self.real_weights:
            y = F.linear(x, quantizer(SignSTE, self.weight)) * binary_scale(self.weight)  # (N, out)
        else:
            y = F.linear(x, self.quant_weight())
        return y if self.bias is None else y + self.bias
