"""The integer form of every 2..8-bit quantizer, in one place.

The models train with fake quantization (`nas.quant.functions`): DoReFa weights, PACT
activations. This module states the integers those float values stand for, exactly, and the
integer layer semantics the kernels (`nas.kernels.integer`, reference
`nas.kernels.int_reference`) compute. Nothing here changes training.

Weights, DoReFa k bits (k = 2, 4, 8), per output channel c, L = 2^k - 1:
    q   = round(L · (tanh W / (2 m_c) + 1/2))        in 0..L        (the code the trainer rounds)
    ŵ   = m_c · (2q / L - 1) = (m_c / L) · w_int,    w_int = 2q - L   odd, in -L..L
So the exact integer weight is w_int = 2q - L with the per-channel scale m_c / L. At 8 bits
w_int spans -255..255 (odd): it is NOT an int8. We keep it exact rather than move to the
affine scheme of seed 001 (that would change what the trained models compute):
  - the kernels store w_int as int16 (every 2/4/8-bit code fits) and multiply int16 pairs
    (AVX2 vpmaddwd, AVX-512 VNNI vpdpwssd): no correction term at all;
  - for u8 x s8 hardware (vpdpbusd) the same value splits exactly as
    w_int = 2 s + 1 with s = q - 2^(k-1) in -2^(k-1)..2^(k-1)-1 (an int8 at 8 bits), so
    Σ x · w_int = 2 Σ x · s + Σ x  (Σ x: the per-pixel sum of input codes over the
    receptive field, the "correction term"). `split_weight_codes` gives (s, and the
    identity); the int64 reference checks it.
Ternary (2-bit option): levels m_c · {-1, 0, +1}: w_int = t in {-1, 0, 1}, scale m_c.

Activations, PACT (clip α, `steps` = 2^k - 1 unsigned, 2^(k-1) - 1 signed):
    x_int = round(clip(x, lo, α) / s_x),  s_x = α / steps (float32),  x̂ = x_int · s_x
    unsigned: x_int in 0..2^k - 1 (uint8); signed: -(2^(k-1) - 1)..2^(k-1) - 1 (int8).
Zero padding pads code 0 (x̂ = 0), exactly as the float conv zero-pads.

Integer layer (conv: any kernel, stride, padding, groups; linear = 1x1 conv on 1x1 input):
    acc[c]  = Σ x_int · w_int                        exact integer (int32 in the kernels;
                                                       bounded: 255 · 255 · K < 2^31 for K < 33025)
    y       = float32(acc) * scale[c]                 scale[c] = s_x · m_c / L  (· BN factor)
    y       = y + bias[c]                             folded BN bias (float32)
    y       = y + residual                            optional, float32
    y       = activation(y)                           none | relu: y > 0 ? y : +0.0
                                                      | hswish: y * min(max(y + 3, 0), 6) / 6
    out     = y (float32), or the next layer's codes  rint(min(max(y, lo), α) / s_next)
Every float step is one float32 operation in this order (no FMA: the C is compiled with
-ffp-contract=off), so the C kernels and the numpy reference agree bit for bit. Against
the fake-quant PyTorch layer the codes (x_int, w_int) are identical, and acc · s_x · m_c / L
is the fake-quant conv up to float32 rounding: PyTorch sums float products of ŵ and x̂
(each already rounded), so the outputs agree to a relative error of about K · 2^-24
(the tests state the tolerance they use).
"""

from __future__ import annotations

import torch

from nas.cost.kernel_path import ACTIVATIONS, INT_BITS, MAX_K, check_int_bits  # noqa: F401 (their home)
from nas.errors import UsageError
from nas.quant.functions import TERNARY_THRESHOLD, act_steps, channel_dims, dorefa_scale


def weight_codes(w: torch.Tensor, bits: int, ternary: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_int int16 of w's shape, per-channel scale (C_out,) float32) with ŵ = scale · w_int
    for the DoReFa / ternary fake-quant weight `quantize_weight(w, bits, ternary)`.
    The code q is computed with the same torch ops as `dorefa_weight`, so it is that
    rounding's result exactly."""
    check_int_bits("weight_codes", "bits", bits)
    w = w.detach().float()
    t = torch.tanh(w)
    m = dorefa_scale(w)                                    # (C_out,)
    mb = m.reshape((-1,) + (1,) * (w.dim() - 1))
    if ternary:
        n = t / mb
        delta = TERNARY_THRESHOLD * n.abs().mean(dim=channel_dims(w), keepdim=True)
        code = (n > delta).to(torch.int16) - (n < -delta).to(torch.int16)
        return code, m
    levels = 2**bits - 1
    q = torch.round(levels * (t / (2 * mb) + 0.5))       # same ops as dorefa_weight
    return (2 * q - levels).to(torch.int16), m / levels


def split_weight_codes(w_int: torch.Tensor, bits: int) -> torch.Tensor:
    """The int8 form for u8 x s8 dot products: s = (w_int - 1) / 2 (so w_int = 2 s + 1),
    in -2^(bits-1)..2^(bits-1) - 1. Only for DoReFa codes (odd); ternary codes are int8 already.
    (The AVX-512 byte path takes its weights through the same rule, `nas.kernels.integer.byte_codes`.)"""
    if bool(((w_int.to(torch.int32) & 1) == 0).any()):
        raise UsageError("split_weight_codes: even weight codes (ternary?) have no 2s+1 form; use them as int8")
    return torch.div(w_int.to(torch.int32) - 1, 2, rounding_mode="floor").to(torch.int8)


def act_scale(alpha: float | torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """s_x = α / steps as float32, computed as PACT computes it (float32 division)."""
    a = torch.as_tensor(alpha, dtype=torch.float32).reshape(())
    return a / act_steps(bits, signed)


def act_codes(x: torch.Tensor, alpha: float | torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """PACT codes of x: int16 (uint8-range unsigned, int8-range signed), x̂ = codes · act_scale."""
    check_int_bits("act_codes", "bits", bits)
    a = torch.as_tensor(alpha, dtype=torch.float32).reshape(())
    lo = -a if signed else torch.zeros_like(a)
    s = act_scale(a, bits, signed)
    return torch.round(torch.minimum(torch.maximum(x.float(), lo), a) / s).to(torch.int16)


def act_code_dtype(signed: bool) -> torch.dtype:
    """Storage type of activation codes between integer layers."""
    return torch.int8 if signed else torch.uint8
