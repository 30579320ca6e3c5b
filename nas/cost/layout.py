"""The deployable weight payload: its byte layout, as pure functions of shape and bits.

`nas.cost` counts these bytes as `weight_bytes`; `nas export` writes exactly these bytes,
so both import the functions below and cannot disagree. No torch here.

One record per conv / linear layer, in execution order (`nas.cost.graph` order). For a
layer with weight bits ``b``, ``C_out`` output channels, ``C_in_g = C_in / groups`` input
channels per group and a ``k_h x k_w`` kernel (linear: k_h = k_w = 1)::

    b = 32       float32 weight[C_out, C_in_g, k_h, k_w]      (BatchNorm folded in)
                 float32 bias[C_out]
    b = 16       float16 weight[C_out, C_in_g, k_h, k_w]      (the fake-quant weight, unfolded:
                 float32 scale[C_out]                          folding BatchNorm into fp16 would
                 float32 bias[C_out]                           round twice and flip predictions)
    2 <= b <= 8  integer codes, one row per output channel: the row's C_in_g*k_h*k_w codes
                 in (C_in_g, k_h, k_w) order, packed little-endian (code j occupies bits
                 [j*b, (j+1)*b) of the row's bit stream, least significant bit first),
                 the row padded with zero bits to a whole byte
                 float32 scale[C_out]                          (per output channel)
                 float32 bias[C_out]                           (BatchNorm folded in)
    b = 1        the packed-binary kernels' layout (`nas.kernels`): uint64 words
                 (C_out, k_h, k_w, ceil(C_in_g / 64)), channel c of a kernel position is
                 bit c % 64 (LSB first) of word c // 64, bit 1 = +1, unused tail bits 0,
                 little-endian words
                 float32 scale[C_out]       (magnitude-aware scale x folded BatchNorm)
                 float32 bias[C_out]

Every layer stores a float32 bias: BatchNorm folds into one, and the layers without
BatchNorm (squeeze-excite convs, the classifier) have one of their own.

Plus, for each quantized activation site (the input of a conv / linear read at
2 <= a_bits <= 8, see `nas.cost.graph`), one float32 clip value (PACT's alpha).
1-bit inputs are signs and 16/32-bit inputs are floats: neither stores a clip.
"""

import math

from nas.space.spec import BITS

FLOAT32_BYTES = 4
FLOAT16_BYTES = 2
WORD_BITS = 64  # packed-binary word
WORD_BYTES = 8
CLIP_BYTES = FLOAT32_BYTES  # PACT clip of one quantized activation site
WEIGHT_BITS = BITS


def _check(b: int, c_out: int, c_in_g: int, k_h: int, k_w: int) -> None:
    if b not in WEIGHT_BITS and not (isinstance(b, int) and 2 <= b <= 8):
        raise ValueError(f"weight bits {b!r} have no payload layout; expected one of 1, 2..8, 16, 32")
    for name, v in (("c_out", c_out), ("c_in_g", c_in_g), ("k_h", k_h), ("k_w", k_w)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} is not a layer dimension; expected an integer >= 1")


def packed_row_bytes(b: int, codes: int) -> int:
    """Bytes of one output channel's row of `codes` b-bit codes, padded to a whole byte."""
    return math.ceil(codes * b / 8)


def binary_words(c_out: int, c_in_g: int, k_h: int, k_w: int) -> int:
    """uint64 words of a 1-bit weight: (C_out, k_h, k_w, ceil(C_in_g / 64))."""
    return c_out * k_h * k_w * math.ceil(c_in_g / WORD_BITS)


def weight_payload_bytes(b: int, c_out: int, c_in_g: int, k_h: int = 1, k_w: int = 1) -> int:
    """Bytes of the weight tensor alone (no scale, no bias) at `b` bits."""
    _check(b, c_out, c_in_g, k_h, k_w)
    row = c_in_g * k_h * k_w
    if b == 32:
        return c_out * row * FLOAT32_BYTES
    if b == 16:
        return c_out * row * FLOAT16_BYTES
    if b == 1:
        return binary_words(c_out, c_in_g, k_h, k_w) * WORD_BYTES
    return c_out * packed_row_bytes(b, row)


def scale_bytes(b: int, c_out: int) -> int:
    """float32 per-output-channel scale: stored for integer (2..8-bit) and binary weights."""
    return 0 if b == 32 else c_out * FLOAT32_BYTES


def bias_bytes(c_out: int) -> int:
    """float32 bias[C_out]: every layer stores one (folded BatchNorm or its own bias)."""
    return c_out * FLOAT32_BYTES


def layer_bytes(b: int, c_out: int, c_in_g: int, k_h: int = 1, k_w: int = 1) -> int:
    """One conv / linear record: weights + scale (k-bit, binary) + bias."""
    return weight_payload_bytes(b, c_out, c_in_g, k_h, k_w) + scale_bytes(b, c_out) + bias_bytes(c_out)


def has_clip(a_bits: int) -> bool:
    """A quantized activation site stores (and learns) one clip value: 2 <= a_bits <= 8."""
    return 2 <= a_bits <= 8


def clip_bytes(a_bits: int) -> int:
    return CLIP_BYTES if has_clip(a_bits) else 0
