"""Payload records -> a runnable network: the packed model `nas infer` runs.

`packed_model(arch, payload)` builds the network with `build_model` (the one builder) and
then swaps, layer by layer, in what the payload holds:

- a 2..32-bit conv / linear becomes a `QuantConv2d` / `QuantLinear` at w_bits = 32 holding
  the dequantized, BatchNorm-folded weight (32: as stored; 16: fp16 -> fp32; 2..8:
  s_c · (2 q / (2^k - 1) - 1)) and the folded bias; its input quantizer (PACT clip from
  the payload) is unchanged;
- a 1-bit conv / linear becomes a `PackedBinaryConv2d` holding the packed words, scale and
  bias; a Bi-Real unit becomes a `PackedBinaryUnit` (shortcut first, then the fused
  kernel with the shortcut as its residual);
- the folded BatchNorm disappears (timm's BatchNormAct2d leaves its activation behind).

Numerics against the fake-quant model (`weights.safetensors`), same input:
- The weights are exact: codes are the layer's own DoReFa codes (`fold` checks
  m_c · (2 q / L - 1) == quant_weight()), binary words are sign(W) packed, and scales,
  biases and clips are float32 written and read bit for bit.
- 1-bit, groups == 1, ±1 inputs (Bi-Real units): given the same input and shortcut output,
  bit-identical to the fake-quant model's kernel path (same kernel, same words, scale and
  bias from the same expressions). The torch fallback here (no compiled kernels; grouped /
  depthwise binary convs) has an exact integer accumulator and the kernels' three float32
  roundings (acc · scale, + bias, + residual): identical to the kernels.
- A folded BatchNorm (2..8 and 32 bits, grouped binary convs, binary shortcuts' 1x1 convs)
  rounds differently from conv-then-BN in the last float32 bits. The next quantizer (PACT,
  sign) absorbs that unless a value lands on the other side of one of its boundaries. On
  the test model of tests/test_export.py (1/2/4/8/32 bits, 500 Fashion-MNIST test images)
  the logits are bit-identical on every image; the claim held is argmax equality.
- 16 bits, BatchNorm folded into fp16 weights as the layout says: the folded weight is
  rounded to fp16 again (relative error up to 2^-11 per weight), which moves downstream
  quantization boundaries often, so predictions may disagree on some images (a measured
  figure is in docs/architecture.md, "Lab figures").
`nas export` measures the agreement on the whole test split, records it in the manifest
(`prediction_agreement`) and warns when it is below 1.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nas.blocks.model import build_model
from nas.cost.kernel_path import on_packed_kernels
from nas.export.fold import bn_partners, geometries
from nas.export.payload import LayerRecord, decode_payload
from nas.kernels import reference
from nas.quant import ActQuant, BiRealUnit, QuantConv2d, QuantLinear, packed_kernels
from nas.quant.binary import kernel_runtime_ready
from nas.space import ArchSpec


def _load_clip(act_quant: ActQuant, clip) -> None:
    if act_quant.clip is not None:
        with torch.no_grad():
            act_quant.clip.copy_(torch.tensor(float(clip)))


class PackedBinaryConv2d(nn.Module):
    """A 1-bit conv (or linear, as 1x1) from the payload: y = acc · scale + bias (+ residual).

    acc = conv(x_q, sign W) from the packed words; x_q = sign(x) with one-padding when
    a_bits == 1 (else the input quantizer's output, zero-padded). Runs the fused packed
    kernel when it can (eval, CPU float32, a_bits == 1, groups == 1, kernels built), else
    unpacks the words to ±1 and convolves in torch (same numbers for ±1 inputs).
    """

    def __init__(self, rec: LayerRecord, src: nn.Module):
        super().__init__()
        g = rec.geom
        self.linear = g.kind == "linear"
        self.in_chs, self.out_chs, self.a_bits = g.c_in_g, g.c_out, g.a_bits
        self.groups = 1 if self.linear else src.groups
        self.in_chs *= self.groups
        self.kernel = g.k_h
        self.stride, self.padding = (1, 0) if self.linear else (src.stride[0], src.padding[0])
        if not self.linear and (len(set(src.kernel_size)) > 1 or len(set(src.stride)) > 1
                                or len(set(src.padding)) > 1 or src.dilation != (1, 1)):
            raise ValueError(f"{g.name}: packed binary layers need square kernels, strides, paddings, no dilation")
        self.act_quant = src.act_quant
        _load_clip(self.act_quant, rec.clip)
        self.register_buffer("words", torch.from_numpy(rec.weight.view(np.int64).copy()))  # (C_out, kh, kw, words)
        self.register_buffer("scale", torch.from_numpy(rec.scale.copy()))
        self.register_buffer("bias", torch.from_numpy(rec.bias.copy()))
        self._layer = None  # nas.kernels.BinaryConv2d, prepared on first kernel call

    def kernel_ready(self, x: torch.Tensor) -> bool:
        return on_packed_kernels(1, self.a_bits, self.groups) and kernel_runtime_ready(
            self, x, torch.is_grad_enabled() and x.requires_grad)

    def _kernel(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        kernels = packed_kernels()
        if self._layer is None:
            self._layer = kernels.BinaryConv2d(self.words, self.in_chs, self.kernel, self.stride, self.padding,
                                               self.scale, self.bias)
        x_packed = kernels.pack_activations(x.permute(0, 2, 3, 1).contiguous())  # (N, H, W, words)
        if residual is not None:
            residual = residual.permute(0, 2, 3, 1).contiguous()  # (N, H_out, W_out, C_out)
        y, _ = self._layer(x_packed, residual, out_float=True, out_packed=False)
        return y.permute(0, 3, 1, 2)  # (N, H_out, W_out, C_out) -> NCHW view

    def signs(self) -> torch.Tensor:
        """sign(W) as ±1 float32 (C_out, C_in_g, k_h, k_w), unpacked from the words."""
        c_in_g = self.in_chs // self.groups
        return reference.unpack(self.words, c_in_g).permute(0, 3, 1, 2)  # (C_out, kh, kw, C_in_g) -> OIHW

    def _torch(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        x = self.act_quant(x)
        p = self.padding
        if self.a_bits == 1 and p:
            x = F.pad(x, (p, p, p, p), value=1.0)  # one-padding, as the kernels
            p = 0
        acc = F.conv2d(x, self.signs(), None, self.stride, p, 1, self.groups)  # exact for ±1 inputs
        y = acc * self.scale.reshape(1, -1, 1, 1)
        y = y + self.bias.reshape(1, -1, 1, 1)
        return y if residual is None else y + residual

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.linear:
            x = x[:, :, None, None]  # (N, C) -> (N, C, 1, 1)
            residual = None if residual is None else residual[:, :, None, None]
        y = self._kernel(x, residual) if self.kernel_ready(x) else self._torch(x, residual)
        return y.flatten(1) if self.linear else y

    def extra_repr(self) -> str:
        return (f"{self.in_chs}, {self.out_chs}, kernel={self.kernel}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, a_bits={self.a_bits}, linear={self.linear}")


class PackedBinaryUnit(nn.Module):
    """A Bi-Real unit from the payload: y = binconv(x) · scale + bias + shortcut(x)."""

    def __init__(self, shortcut: nn.Module, conv: PackedBinaryConv2d):
        super().__init__()
        self.shortcut = shortcut  # registered first: it runs first
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x, residual=self.shortcut(x))


def _dequantized(rec: LayerRecord) -> torch.Tensor:
    """Float32 weight of a 2..32-bit record, in the module's weight shape."""
    g = rec.geom
    if g.bits in (16, 32):
        w = torch.from_numpy(rec.weight.astype(np.float32))
        if rec.scale is not None:  # a layout that keeps a 16-bit layer's BatchNorm scale apart
            w = w * torch.from_numpy(rec.scale.copy()).reshape((-1,) + (1,) * (w.dim() - 1))
    else:
        levels = 2 ** g.bits - 1
        codes = torch.from_numpy(rec.weight.astype(np.float32))  # (C_out, row)
        w = torch.from_numpy(rec.scale.copy()).reshape(-1, 1) * (2 * codes / levels - 1)
    return w.reshape(g.c_out, g.c_in_g) if g.kind == "linear" else w.reshape(g.c_out, g.c_in_g, g.k_h, g.k_w)


def _float_layer(rec: LayerRecord, src: nn.Module) -> nn.Module:
    """A w_bits = 32 copy of `src` holding the dequantized folded weight and bias."""
    signed = src.act_quant.signed
    if isinstance(src, QuantLinear):
        m = QuantLinear(src.in_features, src.out_features, bias=True, w_bits=32, a_bits=src.a_bits, signed=signed)
    else:
        m = QuantConv2d(src.in_channels, src.out_channels, src.kernel_size, src.stride, src.padding, src.dilation,
                        src.groups, bias=True, w_bits=32, a_bits=src.a_bits, signed=signed)
    with torch.no_grad():
        m.weight.copy_(_dequantized(rec))
        m.bias.copy_(torch.from_numpy(rec.bias.copy()))
    _load_clip(m.act_quant, rec.clip)
    return m


def _bn_remainder(bn: nn.BatchNorm2d) -> nn.Module:
    """What is left of a BatchNorm once folded: nothing, or timm BatchNormAct2d's drop + act."""
    if hasattr(bn, "act"):
        return nn.Sequential(bn.drop, bn.act)
    return nn.Identity()


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def packed_model(arch: ArchSpec, payload: bytes) -> nn.Module:
    """The deployable network of `arch` with every weight read from `payload` (eval mode).

    The payload is not self-describing: the layer geometries come from the rebuilt network
    (`nas.export.fold.geometries`), so the arch string is the payload's schema."""
    model = build_model(arch).eval()
    records = decode_payload(payload, geometries(model))
    pairs = bn_partners(model)
    layers = {layer.name: layer.module for layer in model.quant_layers()}
    units = {f"{name}.conv": name for name, m in model.named_modules() if isinstance(m, BiRealUnit)}
    for rec in records:  # 2..32 bits first: the binary units then take their converted shortcuts
        name = rec.geom.name
        if name in pairs:
            _replace(model, pairs[name][0], _bn_remainder(pairs[name][1]))
        if rec.geom.bits != 1:
            _replace(model, name, _float_layer(rec, layers[name]))
    for rec in records:
        name = rec.geom.name
        if rec.geom.bits == 1:
            conv = PackedBinaryConv2d(rec, layers[name])
            if name in units:
                unit = model.get_submodule(units[name])
                _replace(model, units[name], PackedBinaryUnit(unit.shortcut, conv))
            else:
                _replace(model, name, conv)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
