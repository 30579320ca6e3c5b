"""Fused packed-binary (XNOR-popcount) CPU kernels for 1-bit (Bi-Real style) layers.

The C extension `nas.kernels._binary` is compiled by `pip install` (sources beside this
file); this module is a thin torch-facing wrapper. Importing it never fails: `available()`
says whether the extension is there, and the kernels raise a RuntimeError if it is not.

Semantics (the fake-quant path in PyTorch gives the same numbers; see `reference.py`):
    sign(x) = +1 if x >= 0 else -1             (so sign(0) = sign(-0.0) = +1)
    acc     = conv2d(pad(sign(x), value=+1), sign(W), stride)   exact integer
    y       = acc * scale[c] + bias[c]           float32, two roundings (no FMA)
    y       = y + residual                       optional, float32 NHWC
    packed  = bits of (y >= 0)                   optional, for the next binary layer

Packed layout (activations, and the 1-bit conv weight payload `nas export` writes):
    uint64 words, stored as int64 tensors (same bits). Channel c of a pixel is bit c % 64
    (LSB first) of word c // 64; bit 1 = +1, bit 0 = -1; unused bits of the last word are 0;
    words are little-endian.
    activations  (N, H, W, ceil(C / 64))          NHWC
    conv weights (Cout, kh, kw, ceil(Cin / 64))   OHWI, sign(W) packed along Cin
    linear       input (N, ceil(C / 64)), weights (Cout, ceil(Cin / 64))  (= 1x1 conv)
    Padding positions count as +1 in every valid channel ("one-padding").

Kernel levels: 'avx512' (AVX-512 VPOPCNTDQ), 'avx2', 'portable'; the best the CPU runs is
used unless NAS_KERNEL_ISA=avx512|avx2|portable forces one (a level the CPU lacks makes
every kernel call raise) or `set_isa()` forces one at run time. `isa()` names the level.
Threads: OpenMP, `threads=None` means torch.get_num_threads().
"""

from __future__ import annotations

import weakref

import numpy as np
import torch

try:
    from nas.kernels import _binary as _ext
except ImportError as e:  # not built (e.g. a source tree without `pip install`)
    _ext = None
    _IMPORT_ERROR = e
else:
    _IMPORT_ERROR = None

__all__ = ["available", "isa", "supported_isas", "set_isa", "words", "pack_activations", "pack_weights",
           "BinaryConv2d", "binary_conv2d", "binary_linear"]


def available() -> bool:
    """True if the compiled kernels can be imported."""
    return _ext is not None


def _need():
    if _ext is None:
        raise RuntimeError(f"nas.kernels._binary is not built ({_IMPORT_ERROR}); "
                           "install the package with `pip install -e .`")
    return _ext


def isa() -> str:
    """The kernel level in use: 'avx512', 'avx2' or 'portable'."""
    return _need().isa()


def supported_isas() -> list[str]:
    """Kernel levels this CPU runs, best first."""
    return list(_need().supported())


def set_isa(name: str | None) -> None:
    """Force a kernel level for this process; None goes back to NAS_KERNEL_ISA / the best."""
    _need().set_isa(name)


def words(channels: int) -> int:
    """uint64 words holding `channels` packed bits."""
    return (channels + 63) // 64


def _threads(threads: int | None) -> int:
    return torch.get_num_threads() if threads is None else int(threads)


def _pair(v, fn: str, arg: str) -> tuple[int, int]:
    if type(v) is int:
        return v, v
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return int(v[0]), int(v[1])
    raise ValueError(f"{fn}: {arg}: expected an int or a pair of ints, got {v!r}")


_WORD_DTYPES = (torch.int64, torch.uint64)
_F32 = (torch.float32,)


def _np(t: torch.Tensor, dtypes: tuple, shape: tuple | None, fn: str, arg: str):
    """numpy view (no copy when already contiguous) of a CPU tensor, checked cheaply;
    messages are only built on failure (this runs on every kernel call)."""
    if not (isinstance(t, torch.Tensor) and t.dtype in dtypes and t.is_cpu):
        raise TypeError(f"{fn}: {arg}: expected a CPU tensor of {'/'.join(str(d) for d in dtypes)}, "
                        f"got {getattr(t, 'dtype', type(t).__name__)}")
    if shape is not None and t.shape != shape:
        raise ValueError(f"{fn}: {arg}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.requires_grad:
        t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    return t.numpy()


def pack_activations(x: torch.Tensor, threads: int | None = None) -> torch.Tensor:
    """Sign-pack float32 (..., C), channels last, into int64 words (..., ceil(C / 64))."""
    ext = _ext or _need()
    xn = _np(x, _F32, None, "pack_activations", "x")
    if xn.ndim < 1 or xn.shape[-1] < 1:
        raise ValueError(f"pack_activations: expected (..., C) with C >= 1, got {tuple(xn.shape)}")
    C = xn.shape[-1]
    out = np.empty(xn.shape[:-1] + (words(C),), dtype=np.int64)      # (..., words)
    ext.pack(xn, out, xn.size // C, C, _threads(threads))
    return torch.from_numpy(out)


def pack_weights(w: torch.Tensor) -> torch.Tensor:
    """Sign-pack conv weights (Cout, Cin, kh, kw) float32 into (Cout, kh, kw, ceil(Cin / 64));
    linear weights (Cout, Cin) into (Cout, ceil(Cin / 64)). Same bits as `nas export` writes."""
    if not isinstance(w, torch.Tensor) or w.dim() not in (2, 4):
        raise ValueError(f"pack_weights: expected (Cout, Cin, kh, kw) or (Cout, Cin), got {getattr(w, 'shape', w)!r}")
    w = w.detach()
    return pack_activations(w if w.dim() == 2 else w.permute(0, 2, 3, 1), threads=1)  # (Cout, kh, kw, Cin) first


# id(weight tensor) -> (weakref to it, (version, data_ptr, shape), lane layout). Entries
# leave with their tensor (weakref.finalize); nothing is stored on the tensor itself, so
# torch.save / state_dict of the caller's tensors are unaffected.
_LANES: dict = {}


def _lanes(w_packed: torch.Tensor) -> np.ndarray:
    """Lane layout (gpad, kh, kw, words, 8) of packed weights (Cout, kh, kw, words) or
    (Cout, words), cached per weight tensor and rebuilt when the tensor changes."""
    # Inference tensors have no version counter to notice in-place changes: no cache for
    # them (a BinaryConv2d holds its lane layout itself).
    cache = not w_packed.is_inference()
    key = (w_packed._version, w_packed.data_ptr(), w_packed.shape) if cache else None
    hit = _LANES.get(id(w_packed)) if cache else None
    if hit is not None and hit[0]() is w_packed and hit[1] == key:
        return hit[2]
    ext = _ext or _need()
    wn = _np(w_packed, _WORD_DTYPES, None, "binary kernels", "w_packed")
    cout, wi = wn.shape[0], wn.shape[-1]
    kh, kw = (wn.shape[1], wn.shape[2]) if wn.ndim == 4 else (1, 1)
    lanes = np.empty(ext.lane_groups(cout) * kh * kw * wi * 8, dtype=np.int64)
    ext.repack_weights(wn, lanes, cout, kh, kw, wi)
    if cache:
        if hit is None or hit[0]() is not w_packed:
            weakref.finalize(w_packed, _LANES.pop, id(w_packed), None)
        _LANES[id(w_packed)] = (weakref.ref(w_packed), key, lanes)
    return lanes


class BinaryConv2d:
    """A binary conv layer (groups=1) prepared once for inference: weights in the kernels'
    lane layout, scale and bias (read here, once) padded, the threshold form of the packed
    output derived on first use. Calling it runs the fused kernel on packed NHWC input.

    w_packed: (Cout, kh, kw, ceil(in_chs/64)) int64 from `pack_weights`, or (Cout, words)
    for a binary linear layer (1x1). scale, bias: (Cout,) float32; bias None = +0.0.
    """

    def __init__(self, w_packed: torch.Tensor, in_chs: int, kernel, stride, padding, scale: torch.Tensor,
                 bias: torch.Tensor | None = None, *, _fn: str = "BinaryConv2d"):
        ext = _ext or _need()
        if not (isinstance(w_packed, torch.Tensor) and w_packed.dim() in (2, 4)):
            raise ValueError(f"{_fn}: w_packed must be (Cout, kh, kw, words) from pack_weights, "
                             f"got {getattr(w_packed, 'shape', w_packed)!r}")
        cout, wi = w_packed.shape[0], w_packed.shape[-1]
        kh, kw = (w_packed.shape[1], w_packed.shape[2]) if w_packed.dim() == 4 else (1, 1)
        if _pair(kernel, _fn, "kernel") != (kh, kw):
            raise ValueError(f"{_fn}: kernel {kernel!r} does not match packed weights {kh}x{kw}")
        if not (type(in_chs) is int and in_chs >= 1 and (in_chs + 63) // 64 == wi):
            raise ValueError(f"{_fn}: {in_chs!r} input channels do not fit weights of {wi} words per tap")
        self.in_chs, self.out_chs, self.kernel = in_chs, cout, (kh, kw)
        self.stride, self.padding = _pair(stride, _fn, "stride"), _pair(padding, _fn, "padding")
        if min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"{_fn}: bad stride {stride!r} / padding {padding!r}")
        self.K = kh * kw * in_chs  # valid bits per output value
        if self.K >= 1 << 24:
            raise ValueError(f"{_fn}: kh*kw*in_chs = {self.K} must be < 2^24 for exact float results")
        self._fn = _fn
        self._lanes = _lanes(w_packed)
        self._sn = _np(scale, _F32, (cout,), _fn, "scale").copy()
        self._bn = (np.zeros(cout, np.float32) if bias is None
                    else _np(bias, _F32, (cout,), _fn, "bias").copy())
        self._ep = np.empty(64 * ext.lane_groups(cout), dtype=np.float32)  # scale, bias, windows: binary.h
        self._thr = None  # threshold form: not derived yet
        ext.epilogue(self._sn, self._bn, cout, self.K, self._ep, False)

    def output_size(self, H: int, W: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        return (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1

    def __call__(self, x_packed: torch.Tensor, residual: torch.Tensor | None = None, out_float: bool = True,
                 out_packed: bool = False, threads: int | None = None):
        """x_packed (N, H, W, words) int64; residual (N, Ho, Wo, Cout) float32 or None.
        Returns (y_float (N, Ho, Wo, Cout) float32 or None, y_packed (N, Ho, Wo,
        ceil(Cout/64)) int64 or None)."""
        ext, fn, cout = _ext, self._fn, self.out_chs
        xn = _np(x_packed, _WORD_DTYPES, None, fn, "x_packed")
        if xn.ndim != 4 or xn.shape[3] != (self.in_chs + 63) // 64:
            raise ValueError(f"{fn}: x_packed must be (N, H, W, {(self.in_chs + 63) // 64}), got {tuple(xn.shape)}")
        N, H, W, _ = xn.shape
        Ho, Wo = self.output_size(H, W)
        if Ho < 1 or Wo < 1:
            raise ValueError(f"{fn}: empty output for input {H}x{W}, kernel {self.kernel}, padding {self.padding}")
        if not (out_float or out_packed):
            raise ValueError(f"{fn}: ask for out_float, out_packed or both")
        rn = None if residual is None else _np(residual, _F32, (N, Ho, Wo, cout), fn, "residual")
        use_thr = out_packed and not out_float and rn is None
        if use_thr and self._thr is None:
            self._thr = ext.epilogue(self._sn, self._bn, cout, self.K, self._ep, True)
        yf = np.empty((N, Ho, Wo, cout), dtype=np.float32) if out_float else None               # NHWC
        yp = np.empty((N, Ho, Wo, (cout + 63) // 64), dtype=np.int64) if out_packed else None  # packed NHWC
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        ext.conv2d(xn, self._lanes, self._ep, use_thr and self._thr, N, H, W, self.in_chs, cout, kh, kw, sh, sw,
                   ph, pw, rn, yf, yp, _threads(threads))
        return (None if yf is None else torch.from_numpy(yf)), (None if yp is None else torch.from_numpy(yp))


def binary_conv2d(x_packed: torch.Tensor, w_packed: torch.Tensor, in_chs: int, kernel, stride, padding,
                  scale: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None = None,
                  out_float: bool = True, out_packed: bool = False, threads: int | None = None):
    """Binary conv2d (groups=1) with the fused epilogue, on packed NHWC activations.

    x_packed (N, H, W, ceil(in_chs/64)) int64; w_packed (Cout, kh, kw, ceil(in_chs/64)) int64
    (from `pack_weights`; its lane layout is cached on the tensor); scale, bias (Cout,)
    float32 (bias None = +0.0); residual (N, Ho, Wo, Cout) float32 or None.
    Returns (y_float (N, Ho, Wo, Cout) float32 or None, y_packed (N, Ho, Wo, ceil(Cout/64))
    int64 or None). With only the packed output and no residual, the epilogue runs in its
    threshold form (a popcount window per channel, derived exactly from scale and bias).
    For repeated calls with the same weights, build a `BinaryConv2d` once instead.
    """
    if not (isinstance(w_packed, torch.Tensor) and w_packed.dim() == 4):
        raise ValueError(f"binary_conv2d: w_packed must be (Cout, kh, kw, words), "
                         f"got {getattr(w_packed, 'shape', w_packed)!r}")
    layer = BinaryConv2d(w_packed, in_chs, kernel, stride, padding, scale, bias, _fn="binary_conv2d")
    return layer(x_packed, residual, out_float, out_packed, threads)


def binary_linear(x_packed: torch.Tensor, w_packed: torch.Tensor, in_features: int, scale: torch.Tensor,
                  bias: torch.Tensor | None, residual: torch.Tensor | None = None, out_float: bool = True,
                  out_packed: bool = False, threads: int | None = None):
    """Binary linear = 1x1 binary conv on (N, 1, 1, C). Takes x_packed (N, words) or
    (N, 1, 1, words), w_packed (Cout, words) or (Cout, 1, 1, words), residual (N, Cout);
    returns (y_float (N, Cout) or None, y_packed (N, ceil(Cout/64)) or None)."""
    if not (isinstance(x_packed, torch.Tensor) and x_packed.dim() in (2, 4)):
        raise ValueError(f"binary_linear: x_packed must be (N, words) or (N, 1, 1, words), "
                         f"got {getattr(x_packed, 'shape', x_packed)!r}")
    if not (isinstance(w_packed, torch.Tensor) and (w_packed.dim() == 2 or (w_packed.dim() == 4
                                                                             and w_packed.shape[1:3] == (1, 1)))):
        raise ValueError(f"binary_linear: w_packed must be (Cout, words) or (Cout, 1, 1, words), "
                         f"got {getattr(w_packed, 'shape', w_packed)!r}")
    N, cout = x_packed.shape[0], w_packed.shape[0]
    x4 = x_packed.reshape(N, 1, 1, x_packed.shape[-1])                      # (N, 1, 1, words)
    if residual is not None:
        if not (isinstance(residual, torch.Tensor) and residual.shape == (N, cout)):
            raise ValueError(f"binary_linear: residual must be ({N}, {cout}), got {getattr(residual, 'shape', residual)!r}")
        residual = residual.reshape(N, 1, 1, cout)
    layer = BinaryConv2d(w_packed, in_features, 1, 1, 0, scale, bias, _fn="binary_linear")
    yf, yp = layer(x4, residual, out_float, out_packed, threads)
    return (None if yf is None else yf.view(N, cout)), (None if yp is None else yp.view(N, -1))
