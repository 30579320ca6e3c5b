"""A trained fake-quant `QuantNet` -> payload records: BatchNorm folded, weights as codes.

Per quantized conv / linear (``model.quant_layers()``, execution order = payload order),
with g_c = γ_c / sqrt(var_c + eps) and t_c = β_c - mean_c · g_c of the BatchNorm that
reads its output (g = 1, t = 0 without one; an own bias b adds b · g)::

    32 bit   W · g                                 float32
    16 bit   half(half(W) · g)                     the fake-quant weight, folded, rounded to fp16
             again (relative error up to 2^-11 per weight: see nas.export.deploy); if the
             layout gives 16-bit layers a scale, half(W) unchanged and scale g instead
    2..8     codes q = round((2^k - 1) · (tanh W / (2 m_c) + 1/2))   (DoReFa, `nas.quant`),
             scale s_c = m_c · g_c; the weight is  s_c · (2 q / (2^k - 1) - 1)
    1 bit    sign(W) packed (kernels' layout), scale s_c = mean|W|_c · g_c
    bias     t_c (+ b_c · g_c);  clip: the input's PACT clip α
    searched (a w32 a32 conv of a stage with arch keys p / cb; `searched_record`):
             no codebook: W · g, 0.0 where pruned; codebook: codebook[index] = W, scale g

The 1-bit scale and bias are computed with the very expressions `BiRealUnit` uses on its
kernel path, so a deployed binary unit gets bit-identical scale / bias floats. The codes
are checked against the layer's own `quant_weight()`: `m_c · (2 q / L - 1)` must equal it
exactly, so the payload holds the trained model's quantized weights, not an approximation.
"""

import numpy as np
import torch
from torch import nn

from nas.cost import layout
from nas.errors import UsageError
from nas.export.payload import LayerGeometry, LayerRecord
from nas.kernels import reference
from nas.quant import BinaryConv2d, QuantConv2d, QuantLinear, binary_scale, dorefa_scale, packed_kernels
from nas.quant.bn_fold import bn_affine, bn_partners  # noqa: F401 (re-exported: deploy, payload records)
from nas.quant.functions import HALF_MAX


def geometry(name: str, m: nn.Module) -> LayerGeometry:
    """The payload geometry of one quantized conv / linear module."""
    if isinstance(m, QuantConv2d):  # a searched conv carries its stage's sparsity / codebook (mark_compressed)
        return LayerGeometry(name, "conv", m.w_bits, m.a_bits, m.out_channels, m.in_channels // m.groups,
                             *m.kernel_size, vars(m).get("sparsity", 0.0), vars(m).get("codebook", 0))
    if isinstance(m, QuantLinear):
        return LayerGeometry(name, "linear", m.w_bits, m.a_bits, m.out_features, m.in_features)
    raise TypeError(f"{name}: {type(m).__name__} is not a quantized conv / linear")


def geometries(model) -> list[LayerGeometry]:
    return [geometry(layer.name, layer.module) for layer in model.quant_layers()]


def _per_channel(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return v.reshape((-1,) + (1,) * (w.dim() - 1))  # (C_out, 1, ...) against the weight


def pack_binary(w: torch.Tensor) -> torch.Tensor:
    """sign(W) in the kernels' word layout: (C_out, k_h, k_w, words) int64 (linear: k = 1).
    The compiled packer when built, else the pure-torch reference (tests hold them equal)."""
    w4 = w.detach().float().contiguous()
    if w4.dim() == 2:
        w4 = w4[:, :, None, None]  # (C_out, C_in, 1, 1)
    kernels = packed_kernels()
    return kernels.pack_weights(w4) if kernels is not None else reference.pack_weights(w4)


def dorefa_codes(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes (C_out, ...) integer-valued float, m_c (C_out,)) of a 2..8-bit layer, checked
    to reproduce the layer's own fake-quant weight exactly."""
    if m.ternary:
        raise ValueError(f"{m}: ternary weights have no arch-string form; expected plain DoReFa 2-bit")
    w, levels = m.weight.detach(), 2 ** m.w_bits - 1
    scale = _per_channel(dorefa_scale(w), w)
    codes = torch.round(levels * (torch.tanh(w) / (2 * scale) + 0.5))  # = nas.quant.functions.dorefa_weight
    if not torch.equal(scale * (2 * codes / levels - 1), m.quant_weight().detach()):
        raise AssertionError(f"{m}: DoReFa codes do not reproduce quant_weight(); nas.quant changed?")
    return codes, scale.reshape(-1)


def layer_record(name: str, m: nn.Module, bn: nn.BatchNorm2d | None) -> LayerRecord:
    """One layer's payload record (see the module docstring for the formulas)."""
    geom = geometry(name, m)
    with torch.no_grad():
        g, t = bn_affine(bn, geom.c_out)
        bias = t if m.bias is None else t + m.bias.detach() * g
        w = m.weight.detach()
        scale = None
        if geom.searched:
            return searched_record(geom, w.float(), g.float(), bias.float())
        if geom.bits == 32:
            weight = (w * _per_channel(g, w)).float().numpy()
        elif geom.bits == 16 and layout.scale_bytes(16, geom.c_out):  # a layout with a 16-bit scale:
            scale = g  # the fp16 weights stay the fake-quant weights exactly, BatchNorm in the scale
            weight = m.quant_weight().detach().half().numpy()
        elif geom.bits == 16:  # BatchNorm folded into fp16 weights: a second fp16 rounding
            folded = m.quant_weight().detach() * _per_channel(g, w)
            weight = folded.clamp(-HALF_MAX, HALF_MAX).half().numpy()
        elif geom.bits == 1:
            scale = binary_scale(w) * g
            weight = pack_binary(w).numpy().view(np.uint64)
        else:
            codes, m_c = dorefa_codes(m)
            scale = m_c * g
            weight = codes.reshape(geom.c_out, -1).to(torch.uint8).numpy()
        clip = m.act_quant.clip
        return LayerRecord(
            geom, weight.reshape(geom.weight_shape()),
            None if scale is None else scale.float().numpy(), bias.float().numpy(),
            None if clip is None else np.float32(clip.detach().item()))


def searched_record(geom: LayerGeometry, w: torch.Tensor, g: torch.Tensor, bias: torch.Tensor) -> LayerRecord:
    """A searched sparse / codebook record from the trained weight (`nas.train.sparsify` left it
    with exactly round(s n) zeros and at most 2^b distinct values; the codebook and indices are
    read back from those values). Without a codebook: the folded weight W · g, +0.0 where pruned.
    With one: codebook[index] = W exactly, and scale g (the layer's weight is W · g, the same
    float32 product the dense record would hold)."""
    w = torch.where(w == 0, torch.zeros_like(w), w)  # -0.0 (a masked negative weight) is stored as 0.0
    if not geom.codebook:
        folded = torch.where(w == 0, torch.zeros_like(w), w * _per_channel(g, w))
        return LayerRecord(geom, folded.numpy().reshape(geom.weight_shape()), None, bias.numpy())
    flat = w.flatten().numpy()
    k = 2 ** geom.codebook
    alive = flat != 0 if geom.sparsity else np.ones(flat.shape, dtype=bool)
    values = np.unique(flat[alive])  # ascending
    room = k - 1 if geom.sparsity else k
    if len(values) > room:
        raise UsageError(f"layer {geom.name}: {len(values)} distinct weights; its {geom.codebook}-bit codebook (cb"
                         f"{geom.codebook}) holds {room}: expected weights trained with this arch (nas train / the search)")
    head = [np.float32(0.0)] if geom.sparsity else []
    book = np.zeros(k, dtype=np.float32)
    book[:len(head) + len(values)] = np.concatenate([np.asarray(head, dtype=np.float32), values])
    index = np.zeros(flat.shape, dtype=np.int64)
    index[alive] = np.searchsorted(values, flat[alive]) + len(head)
    return LayerRecord(geom, flat.reshape(geom.weight_shape()), g.numpy(), bias.numpy(), None, book,
                       index.reshape(geom.weight_shape()))


def model_records(model) -> list[LayerRecord]:
    """Every quantized layer's record, in execution order (the payload's order)."""
    pairs = bn_partners(model)
    return [layer_record(layer.name, layer.module, pairs.get(layer.name, (None, None))[1])
            for layer in model.quant_layers()]
