"""Integer (2..8-bit) conv / linear kernels: torch-facing wrapper of `nas.kernels._int`.

Semantics (codes, accumulation, the float32 epilogue): `nas.quant.integer`; the numpy int64
reference is `nas.kernels.int_reference`, equal at atol=0 on every kernel level.

    x      (N, H, W, Cin) uint8 (unsigned PACT codes) or int8 (signed codes), NHWC
    w_int  (Cout, Cin / groups, kh, kw) int16 weight codes (`nas.quant.integer.weight_codes`),
           |w_int| <= 2^w_bits - 1, re-laid out once when an `IntegerConv` is built
    out    float32 (N, Ho, Wo, Cout), or the next layer's codes: uint8 when the requantization
           clip starts at 0, int8 when it is signed

Kernel levels as the binary kernels: 'avx512' (AVX-512 VNNI), 'avx2', 'portable'; the best
the CPU runs unless NAS_KERNEL_ISA forces one (a level the CPU lacks makes every call raise)
or `set_isa()` does at run time. Threads: OpenMP, `threads=None` = torch.get_num_threads().
Depthwise layers (groups = Cin = Cout) have their own channels-in-lanes loop. On a level
with a byte path (AVX-512 VNNI), codes run as u8 x s8 dot products (vpdpbusd; signed codes
offset by 128 with a per-channel correction) with the weights as int8 codes: directly where
|w_int| <= 127, split exactly as w_int = 2 s + 1 for 8-bit DoReFa codes (see int.h); the
results are the same integers either way.
"""

from __future__ import annotations

import numpy as np
import torch

from nas.cost.kernel_path import ACTIVATIONS, MAX_K, check_int_bits

try:
    from nas.kernels import _int as _ext
except ImportError as e:  # not built
    _ext = None
    _IMPORT_ERROR = e
else:
    _IMPORT_ERROR = None

__all__ = ["available", "isa", "supported_isas", "set_isa", "byte_path", "IntegerConv", "int_conv2d", "int_linear",
           "shift_codes", "shuffle_codes", "global_pool", "quantize_codes"]

_ACT_ID = {name: i for i, name in enumerate(ACTIVATIONS)}  # = NAS_ACT_* in int.h
_LANES = 16  # = NAS_INT_LANES


def available() -> bool:
    """True if the compiled integer kernels can be imported."""
    return _ext is not None


def _need():
    if _ext is None:
        raise RuntimeError(f"nas.kernels._int is not built ({_IMPORT_ERROR}); install the package with `pip install -e .`")
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


def byte_path() -> bool:
    """Whether the level in use runs unsigned codes on its u8 x s8 byte path."""
    return bool(_need().byte_path())


def byte_codes(w_int: np.ndarray) -> tuple[np.ndarray, bool] | None:
    """The int8 form of integer weight codes for u8 x s8 dot products (`nas.quant.integer`
    states the rule): the codes themselves where |w_int| <= 127 (2/4-bit, ternary), else, for
    odd codes (8-bit DoReFa, -255..255), s = (w_int - 1) / 2 with w_int = 2 s + 1 exactly
    (split = True). None when neither form is exact. Returns (codes as int32, split)."""
    w = np.asarray(w_int).astype(np.int32)
    if int(np.abs(w).max(initial=0)) <= 127:
        return w, False
    if bool(np.all(w % 2 == 1)):
        return (w - 1) // 2, True  # -255..255 odd -> -128..127
    return None


def byte_weights(w_int: np.ndarray, groups: int) -> tuple[np.ndarray, bool, np.ndarray] | None:
    """The byte path's weights (int.h): int8 codes in lane layout (G, nb, kh, nseg, segq, 16, 4)
    (groups 1: one segment of ceil(kw Cin / 4) quads per kernel row, the row's (kx, c) bytes in
    order; else a segment per kx of Cin/g rounded up to 4), whether they are split
    (w_int = 2 s + 1, s stored), and each output channel's sum of the stored codes (int32, the
    signed-input correction); None when neither form is exact (codes beyond ±127 that are not
    all odd)."""
    cout, cin_g, kh, kw = w_int.shape
    form = byte_codes(w_int)
    if form is None:
        return None
    codes, split = form
    cout_g, nb = cout // groups, -(-(cout // groups) // _LANES)
    if groups == 1:
        row = kw * cin_g
        rq = -(-row // 4)
        padded = np.zeros((nb * _LANES, kh, rq * 4), np.int8)
        padded[:cout, :, :row] = codes.transpose(0, 2, 3, 1).reshape(cout, kh, row)  # (co, ky, (kx, c))
        lay = padded.reshape(1, nb, _LANES, kh, 1, rq, 4).transpose(0, 1, 3, 4, 5, 2, 6)
    else:
        cq = -(-cin_g // 4) * 4
        padded = np.zeros((groups, nb * _LANES, cq, kh, kw), np.int8)
        padded[:, :cout_g, :cin_g] = codes.reshape(groups, cout_g, cin_g, kh, kw)
        lay = padded.reshape(groups, nb, _LANES, cq // 4, 4, kh, kw).transpose(0, 1, 5, 6, 3, 2, 4)
    return np.ascontiguousarray(lay).reshape(-1), split, codes.reshape(cout, -1).sum(1).astype(np.int32)


def _pair(v, fn: str, arg: str) -> tuple[int, int]:
    if type(v) is int:
        return v, v
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(type(i) is int for i in v):
        return v[0], v[1]
    raise ValueError(f"{fn}: {arg}: expected an int or a pair of ints, got {v!r}")


def _np(t, dtype: torch.dtype, shape, fn: str, arg: str) -> np.ndarray:
    if not (isinstance(t, torch.Tensor) and t.dtype == dtype and t.is_cpu):
        raise TypeError(f"{fn}: {arg}: expected a CPU tensor of {dtype}, got {getattr(t, 'dtype', type(t).__name__)}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{fn}: {arg}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
    return t.detach().contiguous().numpy()


class IntegerConv:
    """An integer conv layer prepared once: weights in the kernels' layout, scale, bias and
    activation fixed. Calling it runs the fused kernel on NHWC activation codes.

    w_int (Cout, Cin / groups, kh, kw) int16 with |w_int| <= 2^w_bits - 1; scale, bias
    (Cout,) float32 (bias None = +0.0); activation 'none' | 'relu' | 'hswish'.
    """

    def __init__(self, w_int: torch.Tensor, w_bits: int, stride=1, padding=0, groups: int = 1,
                 scale: torch.Tensor | None = None, bias: torch.Tensor | None = None, activation: str = "none",
                 *, _fn: str = "IntegerConv"):
        ext = _need()
        check_int_bits(_fn, "w_bits", w_bits)
        if not (isinstance(w_int, torch.Tensor) and w_int.dtype == torch.int16 and w_int.dim() == 4):
            raise TypeError(f"{_fn}: w_int must be an int16 (Cout, Cin/groups, kh, kw) tensor, "
                            f"got {getattr(w_int, 'dtype', type(w_int).__name__)} {tuple(getattr(w_int, 'shape', ()))}")
        if activation not in _ACT_ID:
            raise ValueError(f"{_fn}: activation={activation!r}; expected one of {list(ACTIVATIONS)}")
        cout, cin_g, kh, kw = w_int.shape
        if not (type(groups) is int and groups >= 1 and cout % groups == 0):
            raise ValueError(f"{_fn}: groups={groups!r} must be an int >= 1 dividing Cout={cout}")
        limit = 2**w_bits - 1
        if int(w_int.abs().max()) > limit:
            raise ValueError(f"{_fn}: weight codes reach {int(w_int.abs().max())}, beyond ±{limit} for w_bits={w_bits}")
        if kh * kw * cin_g > MAX_K:
            raise ValueError(f"{_fn}: kh*kw*Cin/groups = {kh * kw * cin_g} exceeds {MAX_K} (int32 accumulators)")
        self.stride, self.padding = _pair(stride, _fn, "stride"), _pair(padding, _fn, "padding")
        if min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"{_fn}: bad stride {stride!r} / padding {padding!r}")
        self.w_bits, self.groups, self.kernel = w_bits, groups, (kh, kw)
        self.in_chs, self.out_chs, self.activation = cin_g * groups, cout, activation
        self.depthwise = cin_g == 1 and groups == cout
        wn = w_int.detach().contiguous().numpy()
        if self.depthwise:
            # (kh, kw, C) int32 slots: the int16 code in the low half, 0 above (see int.h)
            self._wl, self._wd = None, np.ascontiguousarray(wn[:, 0].transpose(1, 2, 0)).view(np.uint16).astype(np.int32)
        else:
            cout_g, pairs = cout // groups, (cin_g + 1) // 2
            self._wl = np.empty(groups * -(-cout_g // _LANES) * kh * kw * pairs * _LANES * 2, np.int16)
            ext.repack(wn, self._wl, cout, cin_g, kh, kw, groups)
            self._wd = None
        bw = None if self.depthwise else byte_weights(wn, groups)
        self._wq, self._split, self._wsum = (None, False, None) if bw is None else bw
        # the largest |stored byte code|: a level's byte path is exact only up to its own bound (int.h)
        self._wqmax = 128 if bw is None else int(np.abs(self._wq.astype(np.int16)).max(initial=0))
        self._scale = (np.ones(cout, np.float32) if scale is None
                       else _np(scale, torch.float32, (cout,), _fn, "scale").copy())
        self._bias = (np.zeros(cout, np.float32) if bias is None
                      else _np(bias, torch.float32, (cout,), _fn, "bias").copy())
        self._fn = _fn
        self._plan = None  # (key, checked call constants) of the last call (see __call__)

    def output_size(self, H: int, W: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        return (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None, requant: tuple | None = None,
                 threads: int | None = None) -> torch.Tensor:
        """x (N, H, W, Cin) uint8 / int8 codes; residual (N, Ho, Wo, Cout) float32 or None;
        requant (lo, alpha, s_next) gives codes rint(min(max(y, lo), alpha) / s_next) (uint8 if
        lo >= 0, else int8) instead of float32."""
        key = (getattr(x, "shape", None), getattr(x, "dtype", None), requant)
        plan = self._plan if self._plan is not None and self._plan[0] == key else None
        if plan is None:  # checked once per input shape / dtype / requantization, then reused
            plan = self._plan = (key,) + self._check(x, requant)
        _, shape_out, q, code_dtype = plan
        rn = None if residual is None else _np(residual, torch.float32, shape_out, self._fn, "residual")
        yf = np.empty(shape_out, np.float32) if code_dtype is None else None
        yc = None if code_dtype is None else np.empty(shape_out, code_dtype)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        N, H, W, C = x.shape
        _ext.conv2d(x.contiguous().numpy(), x.dtype == torch.int8, self._wl, self._wd, N, H, W, C, self.out_chs,
                    kh, kw, sh, sw, ph, pw, self.groups, self._scale, self._bias, rn, _ACT_ID[self.activation], yf,
                    yc, q[0], q[1], q[2], torch.get_num_threads() if threads is None else int(threads), self._wq,
                    self._split, self._wsum, self._wqmax)
        return torch.from_numpy(yf if yc is None else yc)

    def _check(self, x, requant) -> tuple:
        """(output shape (the residual's too), requant constants, code dtype or None) for this
        call's input and requantization, or the one-line error."""
        fn = self._fn
        if not (isinstance(x, torch.Tensor) and x.dtype in (torch.uint8, torch.int8) and x.is_cpu and x.dim() == 4):
            raise TypeError(f"{fn}: x must be a CPU uint8 / int8 (N, H, W, C) tensor of codes, "
                            f"got {getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
        N, H, W, C = x.shape
        if C != self.in_chs:
            raise ValueError(f"{fn}: x has {C} channels, the layer expects {self.in_chs}")
        Ho, Wo = self.output_size(H, W)
        if Ho < 1 or Wo < 1:
            raise ValueError(f"{fn}: empty output for input {H}x{W}, kernel {self.kernel}, padding {self.padding}")
        shape_out = (N, Ho, Wo, self.out_chs)
        if requant is None:
            return shape_out, (0.0, 0.0, 1.0), None
        if not (isinstance(requant, tuple) and len(requant) == 3):
            raise ValueError(f"{fn}: requant must be (lo, alpha, s_next), got {requant!r}")
        q = tuple(float(np.float32(v)) for v in requant)
        if not (q[2] > 0 and q[1] > q[0]):
            raise ValueError(f"{fn}: requant {requant!r}: expected s_next > 0 and alpha > lo")
        return shape_out, q, (np.uint8 if q[0] >= 0 else np.int8)


def int_conv2d(x, w_int, w_bits, stride=1, padding=0, groups=1, scale=None, bias=None, residual=None,
               activation="none", requant=None, threads=None) -> torch.Tensor:
    """One-shot integer conv (builds an `IntegerConv`; for repeated calls build it once)."""
    layer = IntegerConv(w_int, w_bits, stride, padding, groups, scale, bias, activation, _fn="int_conv2d")
    return layer(x, residual, requant, threads)


def int_linear(x, w_int, w_bits, scale=None, bias=None, residual=None, activation="none", requant=None,
               threads=None) -> torch.Tensor:
    """Integer linear = 1x1 conv on (N, 1, 1, C): x (N, Cin) codes, w_int (Cout, Cin) int16,
    residual (N, Cout); returns (N, Cout)."""
    if not (isinstance(x, torch.Tensor) and x.dim() == 2 and isinstance(w_int, torch.Tensor) and w_int.dim() == 2):
        raise ValueError(f"int_linear: expected x (N, Cin) and w_int (Cout, Cin), got "
                         f"{tuple(getattr(x, 'shape', ()))} and {tuple(getattr(w_int, 'shape', ()))}")
    N, cout = x.shape[0], w_int.shape[0]
    r = None if residual is None else residual.reshape(N, 1, 1, -1)
    layer = IntegerConv(w_int[:, :, None, None], w_bits, 1, 0, 1, scale, bias, activation, _fn="int_linear")
    return layer(x.reshape(N, 1, 1, -1), r, requant, threads).reshape(N, cout)


def _nhwc_codes(x: torch.Tensor, fn: str) -> torch.Tensor:
    """The NHWC tensor behind `x`, an NCHW-shaped view of channels-last byte codes (what the
    integer layers pass on), or a TypeError."""
    if not (isinstance(x, torch.Tensor) and x.dtype in (torch.uint8, torch.int8) and x.dim() == 4 and x.is_cpu):
        raise TypeError(f"{fn}: expected a CPU uint8 / int8 (N, C, H, W) tensor of codes, "
                        f"got {getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
    return x.permute(0, 2, 3, 1).contiguous()  # free when x is channels-last


def shift_codes(x: torch.Tensor, groups: list[tuple[int, int, int]], stride: int) -> torch.Tensor:
    """`nas.blocks.layers.Shift` on activation codes: groups (dy, dx, channels) in channel order
    (`nas.blocks.common.shift_groups`), out[y, x] = in[y + dy, x + dx] (code 0 outside: the
    value 0 for every PACT quantizer), every stride-th row and column kept. x and the result
    are NCHW-shaped views of NHWC memory."""
    xn = _nhwc_codes(x, "shift_codes")
    N, H, W, C = xn.shape
    y = torch.empty((N, -(-H // stride), -(-W // stride), C), dtype=xn.dtype)
    off = np.array(groups, np.int32).reshape(-1, 3)
    _need().shift(xn.numpy(), y.numpy(), N, H, W, C, off, int(stride))
    return y.permute(0, 3, 1, 2)


def shuffle_codes(x: torch.Tensor, groups: int) -> torch.Tensor:
    """`nas.blocks.layers.ChannelShuffle` ((g, C/g) -> (C/g, g)) on activation codes (NCHW-shaped
    views of NHWC memory, in and out)."""
    xn = _nhwc_codes(x, "shuffle_codes")
    N, H, W, C = xn.shape
    index = np.arange(C, dtype=np.int32).reshape(groups, C // groups).T.reshape(-1).copy()
    y = torch.empty_like(xn)
    _need().gather(xn.numpy(), y.numpy(), N * H * W, C, index)
    return y.permute(0, 3, 1, 2)


def global_pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pool of a float32 (N, C, H, W) tensor in a stated order: per channel
    s = x[p=0]; s = s + x[p] for p = 1 .. H·W - 1 (row-major pixels); s / (H·W), each step one
    float32 operation (`nas.export.packed.FixedOrderAvgPool`, the C export's order). (N, C, 1, 1)."""
    if not (isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.dim() == 4 and x.is_cpu):
        raise TypeError(f"global_pool: expected a CPU float32 (N, C, H, W) tensor, "
                        f"got {getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
    N, C, H, W = x.shape
    xn = x.permute(0, 2, 3, 1).contiguous()  # free when x is channels-last (an integer layer's output)
    y = torch.empty((N, C), dtype=torch.float32)
    _need().global_pool(xn.numpy(), y.numpy(), N, H * W, C)
    return y[:, :, None, None]


def quantize_codes(x_nhwc: torch.Tensor, lo: float, alpha: float, step: float, dtype: torch.dtype):
    """Activation codes rint(min(max(x, lo), alpha) / step) of a contiguous float32 tensor, as
    `dtype` (uint8 / int8), on the level's vector code (the requantization's arithmetic, bit for
    bit); None where the level has none (the caller quantizes with torch ops)."""
    codes = torch.empty(x_nhwc.shape, dtype=dtype)
    ok = _need().quantize(x_nhwc.numpy(), codes.numpy(), x_nhwc.numel(), float(lo), float(alpha), float(step))
    return codes if ok else None
