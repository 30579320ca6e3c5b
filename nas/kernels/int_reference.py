"""numpy int64 reference of the integer kernels (semantics: `nas.quant.integer`).

Accumulates in int64 (so an int32 overflow in a kernel would show), then runs the float32
epilogue as the same float32 operations in the same order as the C code. NHWC throughout.
"""

from __future__ import annotations

import numpy as np


def conv_acc(x: np.ndarray, w: np.ndarray, stride=(1, 1), padding=(0, 0), groups: int = 1) -> np.ndarray:
    """acc (N, Ho, Wo, Cout) int64 = Σ x · w over each receptive field, zero padded.
    x (N, H, W, Cin) integer codes, w (Cout, Cin / groups, kh, kw) integer codes."""
    N, H, W, cin = x.shape
    cout, cin_g, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    assert cin == cin_g * groups and cout % groups == 0
    cout_g = cout // groups
    xp = np.zeros((N, H + 2 * ph, W + 2 * pw, cin), np.int64)
    xp[:, ph:ph + H, pw:pw + W] = x
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    acc = np.zeros((N, Ho, Wo, cout), np.int64)
    w64 = w.astype(np.int64)
    for ky in range(kh):
        for kx in range(kw):
            patch = xp[:, ky:ky + sh * (Ho - 1) + 1:sh, kx:kx + sw * (Wo - 1) + 1:sw]  # (N, Ho, Wo, Cin)
            for g in range(groups):
                xs = patch[..., g * cin_g:(g + 1) * cin_g]                              # (N, Ho, Wo, cin_g)
                ws = w64[g * cout_g:(g + 1) * cout_g, :, ky, kx]                         # (cout_g, cin_g)
                acc[..., g * cout_g:(g + 1) * cout_g] += np.einsum("nhwi,oi->nhwo", xs, ws)
    return acc


def epilogue(acc: np.ndarray, scale: np.ndarray, bias: np.ndarray, residual: np.ndarray | None = None,
             activation: str = "none", requant: tuple | None = None) -> np.ndarray:
    """float32 epilogue of `nas.quant.integer`; requant = (lo, alpha, s_next) float32 gives
    int32 codes rint(min(max(y, lo), alpha) / s_next), else float32 y."""
    f = np.float32
    y = acc.astype(f) * scale.astype(f)
    y = y + bias.astype(f)
    if residual is not None:
        y = y + residual.astype(f)
    if activation == "relu":
        y = np.where(y > 0, y, f(0))
    elif activation == "hswish":
        t = np.minimum(np.maximum(y + f(3), f(0)), f(6))
        y = (y * t) / f(6)
    elif activation != "none":
        raise ValueError(f"epilogue: activation={activation!r}; expected none, relu or hswish")
    if requant is None:
        return y.astype(f)
    lo, alpha, s = (f(v) for v in requant)
    return np.rint(np.minimum(np.maximum(y, lo), alpha) / s).astype(np.int32)


def conv2d(x, w, stride=(1, 1), padding=(0, 0), groups=1, scale=None, bias=None, residual=None,
           activation="none", requant=None):
    """Integer conv + epilogue: what `nas.kernels.integer.int_conv2d` must return exactly."""
    acc = conv_acc(x, w, stride, padding, groups)
    cout = w.shape[0]
    scale = np.ones(cout, np.float32) if scale is None else scale
    bias = np.zeros(cout, np.float32) if bias is None else bias
    return epilogue(acc, scale, bias, residual, activation, requant)
