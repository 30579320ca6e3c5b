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


# ---- Compressed layers (`nas compress`: pruning, weight sharing, product quantization) ----
#
# One record per conv / linear layer, in execution order. ``n = C_out * C_in_g * k_h * k_w``
# weights, ``nnz`` of them non-zero after pruning. A weight's *value* is either a float32
# (no sharing) or a ``b``-bit index into the layer's codebook (sharing)::
#
#     uint8    encoding      0 dense, 1 bitmap, 2 relative indices, 3 product-quantized
#     uint32   count         dense: n; bitmap: nnz; relative: entries (nnz + fillers);
#                            pq: sub-vectors
#     float32  codebook[2^b] (shared layers only; a pruned layer's index 0 is 0.0, the
#                            value of the pruned weights and of the fillers)
#     dense     n values packed at value_bits
#     bitmap    ceil(n / 8) bytes, bit i (LSB first) = weight i is non-zero,
#               then the nnz values packed at value_bits
#     relative  entries of (index_bits gap, value_bits value) interleaved as one packed bit
#               stream: gap = zeros skipped since the previous entry; a run of zeros longer
#               than 2^index_bits - 1 inserts a filler entry (gap 2^index_bits - 1, value 0),
#               Deep Compression's scheme (Han et al. 2016, sec. 2: 8 bits conv, 5 bits fc)
#     pq        float32 codebook[k, d] (in place of the scalar codebook), then one
#               ceil(log2 k)-bit index per sub-vector, packed
#     float32  bias[C_out]
#
# Packing: values are packed little-endian LSB-first into one bit stream per section,
# padded with zero bits to a whole byte at the end of the section. The encoding of a
# layer is whichever of dense, bitmap and relative is smallest (ties in that order).

DENSE, BITMAP, RELATIVE, PQ = 0, 1, 2, 3
ENCODING_NAMES = {DENSE: "dense", BITMAP: "bitmap", RELATIVE: "relative", PQ: "pq"}
RECORD_HEADER_BYTES = 1 + 4  # uint8 encoding + uint32 count
RELATIVE_INDEX_BITS = {"conv": 8, "linear": 5}  # Deep Compression's choice


def bits_bytes(bits: int) -> int:
    """A packed bit section padded to a whole byte."""
    return math.ceil(bits / 8)


def codebook_bytes(share_bits: int | None) -> int:
    """float32 codebook of 2^b shared values; none without sharing."""
    return 0 if not share_bits else (2 ** share_bits) * FLOAT32_BYTES


def value_bits(share_bits: int | None) -> int:
    return share_bits if share_bits else 32


def relative_entries(gaps, index_bits: int) -> int:
    """Entries of the relative encoding: each non-zero weight plus the fillers its gap needs.

    gaps: for each non-zero weight in flat order, the zeros skipped since the previous one.
    """
    span = 2 ** index_bits
    return sum(1 + int(g) // span for g in gaps)


def dense_bytes(n: int, share_bits: int | None) -> int:
    return bits_bytes(n * value_bits(share_bits))


def bitmap_bytes(n: int, nnz: int, share_bits: int | None) -> int:
    return bits_bytes(n) + bits_bytes(nnz * value_bits(share_bits))


def relative_bytes(entries: int, index_bits: int, share_bits: int | None) -> int:
    return bits_bytes(entries * (index_bits + value_bits(share_bits)))


def weight_encoding(n: int, nnz: int, entries: int, index_bits: int, share_bits: int | None) -> tuple[int, int]:
    """(encoding, weight bytes): the smallest of dense, bitmap and relative (ties in that order).

    A pruned layer almost always picks bitmap or relative; dense wins only when few weights
    were pruned (e.g. a layer left whole by structured pruning).
    """
    options = [(dense_bytes(n, share_bits), DENSE), (bitmap_bytes(n, nnz, share_bits), BITMAP),
               (relative_bytes(entries, index_bits, share_bits), RELATIVE)]
    size, enc = min(options, key=lambda o: (o[0], o[1]))
    return enc, size


def pq_index_bits(k: int) -> int:
    return max(1, math.ceil(math.log2(k)))


def pq_bytes(subvectors: int, k: int, d: int) -> int:
    """Codebook float32[k, d] + one ceil(log2 k)-bit index per sub-vector, packed."""
    return k * d * FLOAT32_BYTES + bits_bytes(subvectors * pq_index_bits(k))


def compressed_layer_bytes(encoding: int, c_out: int, weight_bytes: int, share_bits: int | None = None) -> int:
    """A whole compressed record: header + codebook + weights (as `*_bytes` above) + bias."""
    book = 0 if encoding == PQ else codebook_bytes(share_bits)
    return RECORD_HEADER_BYTES + book + weight_bytes + bias_bytes(c_out)


# Post-training affine quantization (seed 001): per activation site a float32 scale and an
# int32 zero point (static); weights use the 8-bit record above with a symmetric per-channel
# scale (zero point 0), so they need nothing new.
AFFINE_ACT_BYTES = FLOAT32_BYTES + 4


def affine_act_bytes(static: bool) -> int:
    """Static PTQ stores each activation site's (scale, zero point); dynamic computes them at run time."""
    return AFFINE_ACT_BYTES if static else 0


def pruned_layer_bytes_bound(n: int, c_out: int, sparsity: float, share_bits: int | None) -> int:
    """Priced before training: a pruned (and shared) layer's record is at most this.

    The non-zero count round((1 - sparsity) n) is known from the sparsity alone, so the
    dense and bitmap sizes are exact in advance; the relative encoding depends on where the
    survivors fall and is used only when smaller, so the chosen record never exceeds this.
    """
    nnz = n - round(sparsity * n)
    weights = min(dense_bytes(n, share_bits), bitmap_bytes(n, nnz, share_bits))
    return compressed_layer_bytes(BITMAP, c_out, weights, share_bits)


# ---- Searched sparsity / codebook (issue 22 item 5: `p` / `cb` in an arch string) ----------
#
# A full-precision (w32 a32) conv of a stage whose `BlockSpec.sparsity` or `.codebook` is
# set is written as a compressed record whose size follows from the arch alone, so the
# search prices it exactly before training. Only pattern-independent encodings are used
# (dense or bitmap; relative indices depend on where the survivors fall): with
# ``n = C_out * C_in_g * k_h * k_w`` weights, training prunes exactly ``round(s * n)`` of them
# by magnitude (`searched_nnz`), and the record is::
#
#     uint8    encoding      0 dense, 1 bitmap: whichever is smaller for that nnz (ties: dense)
#     uint32   count         dense: n; bitmap: nnz
#     float32  codebook[2^b] codebook layers only; in a pruned layer index 0 is 0.0
#     float32  scale[C_out]  codebook layers only: the folded BatchNorm's per-channel factor
#                            (folding scales each output channel, which would break a shared
#                            codebook; the weight is codebook[index] * scale[c])
#     dense    n values packed at value_bits (a float32, or a b-bit codebook index)
#     bitmap   ceil(n / 8) bytes, bit i (LSB first) = weight i survives, then the nnz values
#     float32  bias[C_out]
#
# Without a codebook the values are the folded float32 weights (BatchNorm folded in keeps
# the zeros). The bitmap marks the survivors, so the count is the arch's, never the data's.

def searched_nnz(n: int, sparsity: float) -> int:
    """Weights a searched layer keeps: n - round(s * n) (the count magnitude pruning prunes is
    round(s * n), as `torch.nn.utils.prune` rounds a fractional amount)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity={sparsity!r}; expected 0 <= sparsity < 1")
    return n - round(sparsity * n)


def searched_encoding(n: int, sparsity: float, codebook: int) -> tuple[int, int]:
    """(encoding, weight-section bytes) of a searched layer: dense or bitmap, the smaller (ties: dense)."""
    bits = codebook or None
    nnz = searched_nnz(n, sparsity)
    dense, bitmap = dense_bytes(n, bits), bitmap_bytes(n, nnz, bits)
    return (DENSE, dense) if dense <= bitmap else (BITMAP, bitmap)


def searched_scale_bytes(c_out: int, codebook: int) -> int:
    return c_out * FLOAT32_BYTES if codebook else 0


def searched_layer_bytes(c_out: int, c_in_g: int, k_h: int, k_w: int, sparsity: float, codebook: int) -> int:
    """One searched record: header + [codebook + scale] + weights + bias (layout above)."""
    _check(32, c_out, c_in_g, k_h, k_w)
    n = c_out * c_in_g * k_h * k_w
    _, weights = searched_encoding(n, sparsity, codebook)
    return (RECORD_HEADER_BYTES + codebook_bytes(codebook or None) + searched_scale_bytes(c_out, codebook)
            + weights + bias_bytes(c_out))
