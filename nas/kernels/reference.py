"""Pure-PyTorch reference for the packed-binary kernels: the fake-quant formulas, in float.

Everything here is what the kernels must reproduce bit for bit (see nas/kernels/__init__.py
for the contract). Activations are NHWC like the kernels'; conversions to PyTorch's NCHW
happen inside. Packing is written with torch integer ops only, independent of the C code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_BITS = torch.arange(64, dtype=torch.int64)


def sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where x >= 0 (including -0.0), else -1; same dtype as x."""
    return torch.where(x >= 0, torch.ones((), dtype=x.dtype), -torch.ones((), dtype=x.dtype))


def pack(x: torch.Tensor) -> torch.Tensor:
    """Sign-pack (..., C) along the last dim: int64 words (..., ceil(C / 64)), bit = x >= 0."""
    C = x.shape[-1]
    nw = (C + 63) // 64
    bits = (x >= 0).to(torch.int64)                                  # (..., C)
    bits = F.pad(bits, (0, nw * 64 - C))                             # (..., nw * 64), zero tail
    bits = bits.reshape(*x.shape[:-1], nw, 64)                       # (..., nw, 64)
    return torch.bitwise_left_shift(bits, _BITS).sum(-1)             # distinct bits: sum == or


def unpack(packed: torch.Tensor, channels: int) -> torch.Tensor:
    """Inverse of `pack`: (..., words) int64 -> (..., channels) float32 of +-1."""
    bits = torch.bitwise_and(torch.bitwise_right_shift(packed.unsqueeze(-1), _BITS), 1)  # (..., words, 64)
    bits = bits.reshape(*packed.shape[:-1], -1)[..., :channels]     # (..., channels)
    return bits.to(torch.float32) * 2 - 1


def pack_weights(w: torch.Tensor) -> torch.Tensor:
    """(Cout, Cin, kh, kw) -> (Cout, kh, kw, ceil(Cin / 64)); (Cout, Cin) -> (Cout, ceil(Cin / 64))."""
    return pack(w.permute(0, 2, 3, 1) if w.dim() == 4 else w)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def accumulator(x_nhwc: torch.Tensor, w_oihw: torch.Tensor, stride=1, padding=0) -> torch.Tensor:
    """Exact integer accumulator of the binary conv, as float32 NHWC (N, Ho, Wo, Cout).

    conv2d(pad(sign(x), value=+1), sign(W)) computed in float64 (exact for any realistic
    size) and converted to float32 (exact while |acc| < 2^24)."""
    ph, pw = _pair(padding)
    xs = sign(x_nhwc.permute(0, 3, 1, 2).to(torch.float64))          # (N, C, H, W)
    xs = F.pad(xs, (pw, pw, ph, ph), value=1.0)                      # one-padding
    acc = F.conv2d(xs, sign(w_oihw.to(torch.float64)), stride=_pair(stride))  # (N, Cout, Ho, Wo)
    return acc.to(torch.float32).permute(0, 2, 3, 1).contiguous()    # (N, Ho, Wo, Cout)


def epilogue(acc: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
             residual: torch.Tensor | None = None) -> torch.Tensor:
    """y = acc * scale + bias (+ residual), float32, one rounding per op; channels last."""
    y = acc * scale.to(torch.float32)
    y = y + (torch.zeros_like(scale) if bias is None else bias).to(torch.float32)  # None = +0.0, as the kernels
    if residual is not None:
        y = y + residual
    return y


def binary_conv2d(x_nhwc: torch.Tensor, w_oihw: torch.Tensor, stride, padding, scale: torch.Tensor,
                  bias: torch.Tensor | None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """Float NHWC output of the fused binary conv layer (before any output packing)."""
    return epilogue(accumulator(x_nhwc, w_oihw, stride, padding), scale, bias, residual)


def binary_linear(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                  residual: torch.Tensor | None = None) -> torch.Tensor:
    """(N, Cin) x (Cout, Cin) -> (N, Cout): sign(x) @ sign(w).T * scale + bias (+ residual)."""
    acc = (sign(x.to(torch.float64)) @ sign(w.to(torch.float64)).T).to(torch.float32)  # (N, Cout)
    return epilogue(acc, scale, bias, residual)
