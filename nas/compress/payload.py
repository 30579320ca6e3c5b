"""The compressed payload: writes exactly the records `nas.cost.layout` prices, and reads them back.

`layer_plan` measures a layer (n, nnz, relative entries) and asks `nas.cost.layout` for
the encoding and its bytes; `encode_layer` writes that encoding; `decode_layer` inverts
it, so tests check predicted == written (to the byte) and decoded == model (atol=0).
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nas.compress.pq import pq_of
from nas.compress.prune import layers_of
from nas.compress.share import shared_of
from nas.cost import layout


@dataclass(frozen=True)
class LayerPlan:
    name: str
    kind: str  # conv | linear
    shape: tuple[int, ...]
    n: int
    nnz: int
    entries: int  # relative encoding's entries (non-zeros + fillers)
    share_bits: int | None
    encoding: int
    pq: tuple[int, int] | None
    weight_bytes: int  # the weight section alone
    record_bytes: int  # header + codebook + weights + bias

    def to_dict(self) -> dict:
        return {"layer": self.name, "kind": self.kind, "shape": list(self.shape), "params": self.n,
                "nonzero": self.nnz, "sparsity": 1 - self.nnz / self.n,
                "codebook": (f"{self.pq[1]}x{self.pq[0]}" if self.pq else
                             2 ** self.share_bits if self.share_bits else None),
                "encoding": layout.ENCODING_NAMES[self.encoding], "bytes": self.record_bytes}


def _gaps(flat_nonzero: np.ndarray) -> np.ndarray:
    """Zeros skipped before each non-zero weight (flat positions, ascending)."""
    return np.diff(flat_nonzero, prepend=-1) - 1


def _values(m: nn.Module) -> tuple[np.ndarray, int | None, np.ndarray | None]:
    """(flat integer values to pack, share bits, codebook): indices if shared, float32 bits otherwise."""
    shared = shared_of(m)
    if shared is not None:
        book = shared.codebook().detach().numpy().astype(np.float32)
        bits = int(np.log2(len(book)))
        return shared.index.flatten().numpy().astype(np.uint64), bits, book
    w = m.weight.detach().flatten().numpy().astype(np.float32)
    return w.view(np.uint32).astype(np.uint64), None, None


def layer_plan(name: str, m: nn.Module) -> LayerPlan:
    w = m.weight.detach()
    pqw = pq_of(m)
    if pqw is not None:
        k, d = pqw.codebook.shape
        s = len(pqw.index)
        wb = layout.pq_bytes(s, k, d)
        return LayerPlan(name, "conv" if isinstance(m, nn.Conv2d) else "linear", tuple(w.shape), w.numel(),
                         int((w != 0).sum()), s, None, layout.PQ, (d, k), wb,
                         layout.compressed_layer_bytes(layout.PQ, w.shape[0], wb))
    flat = w.flatten().numpy()
    kind = "conv" if isinstance(m, nn.Conv2d) else "linear"
    nz = np.flatnonzero(flat)
    _, share_bits, _ = _values(m)
    index_bits = layout.RELATIVE_INDEX_BITS[kind]
    entries = layout.relative_entries(_gaps(nz), index_bits)
    enc, wb = layout.weight_encoding(flat.size, len(nz), entries, index_bits, share_bits)
    return LayerPlan(name, kind, tuple(w.shape), flat.size, len(nz), entries, share_bits, enc, None, wb,
                     layout.compressed_layer_bytes(enc, w.shape[0], wb, share_bits))


def model_plan(model: nn.Module) -> list[LayerPlan]:
    return [layer_plan(n, m) for n, m in layers_of(model)]


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Unsigned integers < 2^bits as one LSB-first bit stream, padded to a whole byte."""
    v = np.asarray(values, dtype=np.uint64)
    stream = ((v[:, None] >> np.arange(bits, dtype=np.uint64)) & 1).astype(np.uint8).reshape(-1)  # (len*bits,)
    return np.packbits(stream, bitorder="little").tobytes()


def unpack_bits(buf: bytes, bits: int, count: int) -> np.ndarray:
    stream = np.unpackbits(np.frombuffer(buf, dtype=np.uint8), bitorder="little")[:count * bits]
    return (stream.reshape(count, bits).astype(np.uint64) << np.arange(bits, dtype=np.uint64)).sum(1)


def _bias(plan: LayerPlan, m: nn.Module) -> bytes:
    return (m.bias.detach() if m.bias is not None else torch.zeros(plan.shape[0])).numpy().astype("<f4").tobytes()


def _header(encoding: int, count: int) -> bytes:
    return np.array([encoding], dtype=np.uint8).tobytes() + np.array([count], dtype="<u4").tobytes()


def encode_layer(plan: LayerPlan, m: nn.Module) -> bytes:
    if plan.encoding == layout.PQ:
        pqw = pq_of(m)
        k, _ = pqw.codebook.shape
        return (_header(layout.PQ, len(pqw.index)) + pqw.codebook.detach().numpy().astype("<f4").tobytes()
                + pack_bits(pqw.index.numpy(), layout.pq_index_bits(k)) + _bias(plan, m))
    values, share_bits, book = _values(m)
    vb = layout.value_bits(share_bits)
    flat = m.weight.detach().flatten().numpy()
    nz = np.flatnonzero(flat)
    if plan.encoding == layout.DENSE:
        count, body = plan.n, pack_bits(values, vb)
    elif plan.encoding == layout.BITMAP:
        count = plan.nnz
        body = np.packbits((flat != 0).astype(np.uint8), bitorder="little").tobytes() + pack_bits(values[nz], vb)
    else:
        span = 2 ** layout.RELATIVE_INDEX_BITS[plan.kind]
        gaps = _gaps(nz)
        fillers = gaps // span
        # each non-zero becomes [filler] * f + (gap % span, value); a filler is (span - 1, 0)
        reps = fillers + 1
        gap_col = np.full(int(reps.sum()), span - 1, dtype=np.uint64)
        val_col = np.zeros(int(reps.sum()), dtype=np.uint64)
        last = np.cumsum(reps) - 1  # the real entry closes each group
        gap_col[last] = (gaps % span).astype(np.uint64)
        val_col[last] = values[nz]
        count = len(gap_col)
        ib = layout.RELATIVE_INDEX_BITS[plan.kind]
        packed = gap_col | (val_col << np.uint64(ib))  # index_bits + value_bits <= 40 < 64
        body = pack_bits(packed, ib + vb)  # gap in the low index_bits, value above: one interleaved stream
    codebook = b"" if book is None else book.astype("<f4").tobytes()
    return _header(plan.encoding, count) + codebook + body + _bias(plan, m)


def encode_model(model: nn.Module) -> tuple[bytes, list[LayerPlan]]:
    plans, parts = [], []
    for name, m in layers_of(model):
        plan = layer_plan(name, m)
        rec = encode_layer(plan, m)
        if len(rec) != plan.record_bytes:
            raise AssertionError(f"{name}: wrote {len(rec)} bytes, layout predicts {plan.record_bytes}")
        plans.append(plan)
        parts.append(rec)
    return b"".join(parts), plans


def decode_layer(buf: bytes, kind: str, shape: tuple[int, ...], share_bits: int | None,
                 pq: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(weight float32 of `shape`, bias, bytes consumed) from one record; pq = (d, k)."""
    n, c_out = int(np.prod(shape)), shape[0]
    enc = buf[0]
    count = int(np.frombuffer(buf[1:5], dtype="<u4")[0])
    pos = layout.RECORD_HEADER_BYTES
    if enc == layout.PQ:
        d, k = pq
        book = np.frombuffer(buf[pos:pos + k * d * 4], dtype="<f4").reshape(k, d)
        pos += k * d * 4
        size = layout.bits_bytes(count * layout.pq_index_bits(k))
        index = unpack_bits(buf[pos:pos + size], layout.pq_index_bits(k), count).astype(np.int64)
        pos += size
        v = book[index]  # (S, d)
        w = v.reshape(shape[0], shape[2], shape[3], shape[1]).transpose(0, 3, 1, 2) if len(shape) == 4 \
            else v.reshape(shape)
        bias = np.frombuffer(buf[pos:pos + c_out * 4], dtype="<f4").copy()
        return np.ascontiguousarray(w), bias, pos + c_out * 4
    book = None
    if share_bits:
        book = np.frombuffer(buf[pos:pos + layout.codebook_bytes(share_bits)], dtype="<f4")
        pos += layout.codebook_bytes(share_bits)
    vb = layout.value_bits(share_bits)

    def as_weights(v):
        return book[v.astype(np.int64)] if book is not None else v.astype(np.uint32).view(np.float32)

    w = np.zeros(n, dtype=np.float32)
    if enc == layout.DENSE:
        size = layout.dense_bytes(n, share_bits)
        w[:] = as_weights(unpack_bits(buf[pos:pos + size], vb, n))
    elif enc == layout.BITMAP:
        size = layout.bitmap_bytes(n, count, share_bits)
        mask = np.unpackbits(np.frombuffer(buf[pos:pos + layout.bits_bytes(n)], dtype=np.uint8),
                             bitorder="little")[:n].astype(bool)
        w[mask] = as_weights(unpack_bits(buf[pos + layout.bits_bytes(n):pos + size], vb, count))
    else:
        ib = layout.RELATIVE_INDEX_BITS[kind]
        size = layout.relative_bytes(count, ib, share_bits)
        e = unpack_bits(buf[pos:pos + size], ib + vb, count)
        gaps, vals = e & np.uint64(2 ** ib - 1), e >> np.uint64(ib)
        positions = np.cumsum(gaps.astype(np.int64) + 1) - 1
        w[positions] = as_weights(vals)  # fillers write 0.0 at their own position
    pos += size
    bias = np.frombuffer(buf[pos:pos + c_out * 4], dtype="<f4").copy()
    return w.reshape(shape), bias, pos + c_out * 4


# ---- post-training int8 (`nas.compress.ptq`) ----------------------------------------------
# Per layer the 8-bit record of `nas.cost.layout` (codes, float32 scale[C_out], float32 bias)
# with the codes as two's-complement int8 (symmetric, zero point 0), then for a static
# site float32 scale + int32 zero point of its input (`layout.AFFINE_ACT_BYTES`).

def encode_ptq(model: nn.Module) -> bytes:
    parts = []
    for _, m in layers_of(model):
        w, s = m.weight.detach(), m.ptq_weight_scale
        shape = (-1,) + (1,) * (w.dim() - 1)
        codes = torch.round(w / s.reshape(shape)).to(torch.int8)  # exact: w = q * s
        parts += [codes.numpy().tobytes(), s.numpy().astype("<f4").tobytes(),
                  (m.bias.detach() if m.bias is not None else torch.zeros(w.shape[0])).numpy().astype("<f4").tobytes()]
        if m.ptq_act is not None:
            a_s, a_z = m.ptq_act
            parts += [np.array([float(a_s)], dtype="<f4").tobytes(), np.array([int(a_z)], dtype="<i4").tobytes()]
    return b"".join(parts)


def decode_ptq_layer(buf: bytes, shape: tuple[int, ...], static: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """(dequantized weight, bias, bytes consumed) of one int8 record."""
    n, c_out = int(np.prod(shape)), shape[0]
    codes = np.frombuffer(buf[:n], dtype=np.int8).reshape(shape)
    scale = np.frombuffer(buf[n:n + 4 * c_out], dtype="<f4")
    bias = np.frombuffer(buf[n + 4 * c_out:n + 8 * c_out], dtype="<f4")
    w = codes.astype(np.float32) * scale.reshape((-1,) + (1,) * (len(shape) - 1))
    return w, bias.copy(), n + 8 * c_out + layout.affine_act_bytes(static)
