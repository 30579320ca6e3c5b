"""The deployable weight payload as bytes: write and read it per `nas.cost.layout`.

`nas.cost.layout` defines the layout (and `nas.cost` counts it as `weight_bytes`); this
file turns per-layer arrays into those bytes and back, with no torch model involved.
Records follow each other in execution order, each one::

    weight   32: '<f4' (C_out, C_in_g, k_h, k_w) · 16: '<f2' same shape · 2..8: packed
             codes, one byte-padded row per output channel · 1: '<u8' words
             (C_out, k_h, k_w, ceil(C_in_g / 64)) in the kernels' layout
    scale    '<f4' (C_out,)            2..8 and 1 bits only
    bias     '<f4' (C_out,)
    clip     '<f4' scalar              only when the layer's input has 2 <= a_bits <= 8

A searched sparse / codebook layer (a w32 a32 conv of a stage with ``p`` / ``cb`` in the
arch string: `LayerGeometry.searched`) is instead the record of `layout.searched_layer_bytes`::

    header   uint8 encoding (0 dense, 1 bitmap: `layout.searched_encoding`), '<u4' count
    codebook '<f4' (2^b,) and scale '<f4' (C_out,)   codebook layers only
    weights  dense: n values; bitmap: ceil(n / 8) survivor bits, then the nnz values; a value
             is a '<f4' folded weight, or a b-bit codebook index (one LSB-first bit stream)
    bias     '<f4' (C_out,)

Sizes come from `layout` (never restated here), and every record is checked against them
as it is written and read. Codes of a b-bit layer are unsigned integers 0 .. 2^b - 1;
what they mean (DoReFa levels) is `nas.export.fold`'s business, not the payload's.
"""

from dataclasses import dataclass

import numpy as np

from nas.cost import layout
from nas.errors import UsageError


@dataclass(frozen=True)
class LayerGeometry:
    """Shape and bits of one conv / linear record (linear: k_h = k_w = 1)."""

    name: str
    kind: str  # "conv" or "linear"
    bits: int  # weight bits
    a_bits: int  # bits the layer reads its input at (decides the clip)
    c_out: int
    c_in_g: int  # input channels per group
    k_h: int = 1
    k_w: int = 1
    sparsity: float = 0.0  # searched: fraction of the weights pruned (w32 a32 stage convs only)
    codebook: int = 0  # searched: codebook bits (0 = none)

    @property
    def searched(self) -> bool:
        """A searched sparse / codebook record (`layout.searched_layer_bytes`)."""
        return bool(self.sparsity or self.codebook)

    @property
    def n(self) -> int:
        return self.c_out * self.row

    @property
    def row(self) -> int:
        """Weights per output channel: C_in_g * k_h * k_w."""
        return self.c_in_g * self.k_h * self.k_w

    @property
    def words_per_tap(self) -> int:
        return -(-self.c_in_g // layout.WORD_BITS)

    @property
    def has_clip(self) -> bool:
        return layout.has_clip(self.a_bits)

    def part_bytes(self) -> dict[str, int]:
        """Bytes of each part of the record, in record order (absent parts omitted)."""
        if self.searched:
            parts = {"header": layout.RECORD_HEADER_BYTES}
            if self.codebook:
                parts["codebook"] = layout.codebook_bytes(self.codebook)
                parts["scale"] = layout.searched_scale_bytes(self.c_out, self.codebook)
            parts["weight"] = layout.searched_encoding(self.n, self.sparsity, self.codebook)[1]
            parts["bias"] = layout.bias_bytes(self.c_out)
            return parts
        parts = {"weight": layout.weight_payload_bytes(self.bits, self.c_out, self.c_in_g, self.k_h, self.k_w)}
        if layout.scale_bytes(self.bits, self.c_out):
            parts["scale"] = layout.scale_bytes(self.bits, self.c_out)
        parts["bias"] = layout.bias_bytes(self.c_out)
        if self.has_clip:
            parts["clip"] = layout.clip_bytes(self.a_bits)
        return parts

    @property
    def nbytes(self) -> int:
        return sum(self.part_bytes().values())

    def weight_shape(self) -> tuple[int, ...]:
        """Shape of `LayerRecord.weight` at these bits."""
        if self.bits == 1:
            return (self.c_out, self.k_h, self.k_w, self.words_per_tap)
        if self.bits <= 8:
            return (self.c_out, self.row)
        return (self.c_out, self.c_in_g, self.k_h, self.k_w)

    def to_dict(self) -> dict:
        d = {"name": self.name, "kind": self.kind, "bits": self.bits, "a_bits": self.a_bits,
             "shape": [self.c_out, self.c_in_g, self.k_h, self.k_w]}
        if self.searched:
            enc = layout.searched_encoding(self.n, self.sparsity, self.codebook)[0]
            d.update(sparsity=self.sparsity, codebook=self.codebook, encoding=layout.ENCODING_NAMES[enc],
                     nonzero=layout.searched_nnz(self.n, self.sparsity))
        return d


WEIGHT_DTYPES = {32: np.dtype("<f4"), 16: np.dtype("<f2"), 1: np.dtype("<u8")}  # 2..8: uint8 codes
F32 = np.dtype("<f4")


@dataclass
class LayerRecord:
    """One layer's payload in array form.

    weight: 32 -> float32 (C_out, C_in_g, k_h, k_w); 16 -> float16, same shape;
            2..8 -> uint8 codes (C_out, C_in_g * k_h * k_w) in (C_in_g, k_h, k_w) order;
            1 -> uint64 words (C_out, k_h, k_w, ceil(C_in_g / 64)).
    scale:  float32 (C_out,) for 1..8 bits, else None.  bias: float32 (C_out,).
    clip:   float32 scalar when the input is a PACT site (2 <= a_bits <= 8), else None.
    Searched records: without a codebook, weight is the folded float32 weight (zeros where
    pruned) and scale None; with one, weight = codebook[index] (unfolded, float32), scale the
    folded BatchNorm's factor (the layer's weight is weight * scale), `codebook` (2^b,) and
    `index` (int64, the weight's shape; 0 where pruned).
    """

    geom: LayerGeometry
    weight: np.ndarray
    scale: np.ndarray | None
    bias: np.ndarray
    clip: np.float32 | None = None
    codebook: np.ndarray | None = None
    index: np.ndarray | None = None


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """(C_out, R) codes < 2^bits -> rows of R*bits bits, LSB first, each padded to a byte."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or (codes.size and (codes.min() < 0 or codes.max() >= 1 << bits)):
        raise ValueError(f"pack_codes: expected a (C_out, R) array of {bits}-bit codes")
    c_out, r = codes.shape
    shifts = np.arange(bits, dtype=np.uint8)
    bitstream = (codes.astype(np.uint8)[..., None] >> shifts) & 1  # (C_out, R, bits): bit j of code i
    bitstream = bitstream.reshape(c_out, r * bits)  # code i occupies bits [i*b, (i+1)*b) of its row
    pad = layout.packed_row_bytes(bits, r) * 8 - r * bits
    bitstream = np.pad(bitstream, ((0, 0), (0, pad)))  # zero bits up to a whole byte per row
    return np.packbits(bitstream, axis=1, bitorder="little").tobytes()


def unpack_codes(buf: bytes, bits: int, c_out: int, r: int) -> np.ndarray:
    """Inverse of `pack_codes`: (C_out, R) uint8 codes."""
    row_bytes = layout.packed_row_bytes(bits, r)
    rows = np.frombuffer(buf, dtype=np.uint8).reshape(c_out, row_bytes)
    bitstream = np.unpackbits(rows, axis=1, bitorder="little")[:, :r * bits]  # (C_out, R*bits)
    weights = (1 << np.arange(bits, dtype=np.uint16)).astype(np.uint16)
    return (bitstream.reshape(c_out, r, bits).astype(np.uint16) * weights).sum(-1).astype(np.uint8)


def _check(rec: LayerRecord) -> None:
    g = rec.geom
    if tuple(rec.weight.shape) != g.weight_shape():
        raise ValueError(f"{g.name}: weight of shape {tuple(rec.weight.shape)}; expected {g.weight_shape()} "
                         f"at {g.bits} bits")
    if (rec.scale is None) == ("scale" in g.part_bytes()):
        raise ValueError(f"{g.name}: a {g.bits}-bit layer {'needs' if rec.scale is None else 'has no'} scale")
    if (rec.clip is None) == g.has_clip:
        raise ValueError(f"{g.name}: an input at a_bits={g.a_bits} {'needs' if g.has_clip else 'has no'} clip")


def _survivors(rec: LayerRecord) -> tuple[np.ndarray, np.ndarray, int]:
    """(flat values to pack, survivor mask, value bits) of a searched record, checked against the arch."""
    g = rec.geom
    if g.codebook:
        index = np.asarray(rec.index).reshape(-1)
        book = np.asarray(rec.codebook, dtype=F32)
        if len(book) != 2 ** g.codebook or index.min() < 0 or index.max() >= len(book):
            raise ValueError(f"{g.name}: a codebook of {len(book)} values / indices up to {index.max()}; "
                             f"expected {2 ** g.codebook} values (cb{g.codebook})")
        if not np.array_equal(book[index], np.asarray(rec.weight, dtype=F32).reshape(-1)):
            raise ValueError(f"{g.name}: codebook[index] is not the record's weight")
        values, bits = index.astype(np.uint64), g.codebook
        alive = index != 0 if g.sparsity else np.ones(g.n, dtype=bool)
    else:
        flat = np.ascontiguousarray(rec.weight, dtype=F32).reshape(-1)
        values, bits = flat.view(np.uint32).astype(np.uint64), 32
        alive = flat != 0 if g.sparsity else np.ones(g.n, dtype=bool)
    nnz = layout.searched_nnz(g.n, g.sparsity)
    if int(alive.sum()) != nnz:
        raise UsageError(f"layer {g.name}: {int(alive.sum())} of {g.n} weights survive; the arch's sparsity "
                         f"{g.sparsity:g} keeps exactly {nnz}: expected weights trained with this arch (nas train / "
                         f"the search)")
    return values, alive, bits


def _encode_searched(rec: LayerRecord) -> list[bytes]:
    from nas.compress.payload import pack_bits  # the compressed payload's bit streams (one writer)

    g = rec.geom
    values, alive, bits = _survivors(rec)
    enc, _ = layout.searched_encoding(g.n, g.sparsity, g.codebook)
    if enc == layout.DENSE:
        count, body = g.n, pack_bits(values, bits)
    else:
        count = int(alive.sum())
        body = np.packbits(alive.astype(np.uint8), bitorder="little").tobytes() + pack_bits(values[alive], bits)
    parts = [np.array([enc], dtype=np.uint8).tobytes() + np.array([count], dtype="<u4").tobytes()]
    if g.codebook:
        parts += [np.asarray(rec.codebook, dtype=F32).tobytes(), np.ascontiguousarray(rec.scale, dtype=F32).tobytes()]
    return parts + [body, np.ascontiguousarray(rec.bias, dtype=F32).tobytes()]


def _decode_searched(arrays: dict, g: LayerGeometry) -> LayerRecord:
    from nas.compress.payload import unpack_bits

    enc = arrays["header"][0]
    count = int(np.frombuffer(arrays["header"][1:5], dtype="<u4")[0])
    want, _ = layout.searched_encoding(g.n, g.sparsity, g.codebook)
    nnz = layout.searched_nnz(g.n, g.sparsity)
    if enc != want or count != (g.n if enc == layout.DENSE else nnz):
        raise ValueError(f"{g.name}: record header (encoding {enc}, count {count}); the arch prices encoding "
                         f"{want}, count {g.n if want == layout.DENSE else nnz}")
    bits, body = g.codebook or 32, arrays["weight"]
    if enc == layout.DENSE:
        alive, values = np.ones(g.n, dtype=bool), unpack_bits(body, bits, g.n)
    else:
        head = layout.bits_bytes(g.n)
        alive = np.unpackbits(np.frombuffer(body[:head], dtype=np.uint8), bitorder="little")[:g.n].astype(bool)
        values = unpack_bits(body[head:], bits, count)
    shape = (g.c_out, g.c_in_g, g.k_h, g.k_w)
    bias = np.frombuffer(arrays["bias"], dtype=F32).copy()
    if g.codebook:
        book = np.frombuffer(arrays["codebook"], dtype=F32).copy()
        index = np.zeros(g.n, dtype=np.int64)
        index[alive] = values.astype(np.int64)
        return LayerRecord(g, book[index].reshape(shape), np.frombuffer(arrays["scale"], dtype=F32).copy(), bias,
                           None, book, index.reshape(shape))
    weight = np.zeros(g.n, dtype=F32)
    weight[alive] = values.astype(np.uint32).view(F32)
    return LayerRecord(g, weight.reshape(shape), None, bias)


def encode_layer(rec: LayerRecord) -> bytes:
    """One record's bytes, exactly `rec.geom.nbytes` of them."""
    _check(rec)
    g = rec.geom
    if g.searched:
        parts = _encode_searched(rec)
        sizes = [len(p) for p in parts]
        if sum(sizes) != g.nbytes or sizes[-2] != g.part_bytes()["weight"]:
            raise AssertionError(f"{g.name}: record parts of {sizes} bytes; layout says {g.part_bytes()}")
        return b"".join(parts)
    if g.bits in WEIGHT_DTYPES:
        parts = [np.ascontiguousarray(rec.weight, dtype=WEIGHT_DTYPES[g.bits]).tobytes()]
    else:
        parts = [pack_codes(rec.weight, g.bits)]
    if rec.scale is not None:
        parts.append(np.ascontiguousarray(rec.scale, dtype=F32).tobytes())
    parts.append(np.ascontiguousarray(rec.bias, dtype=F32).tobytes())
    if rec.clip is not None:
        parts.append(np.asarray(rec.clip, dtype=F32).tobytes())
    sizes = [len(p) for p in parts]
    if sizes != list(g.part_bytes().values()):
        raise AssertionError(f"{g.name}: record parts of {sizes} bytes; layout says {g.part_bytes()}")
    return b"".join(parts)


def decode_layer(buf: bytes, geom: LayerGeometry) -> LayerRecord:
    """Read one record of `geom` from exactly `geom.nbytes` bytes."""
    if len(buf) != geom.nbytes:
        raise ValueError(f"{geom.name}: record of {len(buf)} bytes; expected {geom.nbytes}")
    offset, arrays = 0, {}
    for part, n in geom.part_bytes().items():
        arrays[part] = buf[offset:offset + n]
        offset += n
    if geom.searched:
        return _decode_searched(arrays, geom)
    if geom.bits in WEIGHT_DTYPES:
        weight = np.frombuffer(arrays["weight"], dtype=WEIGHT_DTYPES[geom.bits]).reshape(geom.weight_shape())
    else:
        weight = unpack_codes(arrays["weight"], geom.bits, geom.c_out, geom.row)
    scale = np.frombuffer(arrays["scale"], dtype=F32) if "scale" in arrays else None
    clip = np.frombuffer(arrays["clip"], dtype=F32)[0] if "clip" in arrays else None
    return LayerRecord(geom, weight.copy(), None if scale is None else scale.copy(),
                       np.frombuffer(arrays["bias"], dtype=F32).copy(), clip)


def encode_payload(records: list[LayerRecord]) -> tuple[bytes, list[dict]]:
    """(payload bytes, index): the index has one entry per layer with its name, offset,
    bytes, bits, a_bits, shape [C_out, C_in_g, k_h, k_w] and each part's offset."""
    chunks, index, offset = [], [], 0
    for rec in records:
        data = encode_layer(rec)
        parts, at = {}, offset
        for part, n in rec.geom.part_bytes().items():
            parts[part] = {"offset": at, "bytes": n}
            at += n
        index.append({**rec.geom.to_dict(), "offset": offset, "bytes": len(data), "parts": parts})
        chunks.append(data)
        offset += len(data)
    return b"".join(chunks), index


def decode_payload(data: bytes, geoms: list[LayerGeometry]) -> list[LayerRecord]:
    """Split `data` into records of `geoms` (the rebuilt network's layers, in order)."""
    expected = sum(g.nbytes for g in geoms)
    if len(data) != expected:
        raise ValueError(f"payload of {len(data)} bytes; the architecture's layers need exactly {expected}")
    records, offset = [], 0
    for g in geoms:
        records.append(decode_layer(data[offset:offset + g.nbytes], g))
        offset += g.nbytes
    return records
