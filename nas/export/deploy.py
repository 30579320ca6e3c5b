"""Payload records -> a runnable network: the packed model `nas infer` runs.

`packed_model(arch, payload)` builds the network with `build_model` (the one builder) and
then swaps, layer by layer, in what the payload holds, per the conversion table
(`nas.export.convert`; the modules: `nas.export.packed`):

- a 2/4/8-bit conv / linear whose input is 2/4/8-bit PACT runs on the integer kernels
  (`PackedIntegerConv2d`: w_int = 2 q - L, scale s_x · m_c · g_c / L, folded bias, the
  following ReLU / h-swish fused), integer from layer to layer where consecutive layers are;
- any other 2..32-bit conv / linear becomes a `QuantConv2d` / `QuantLinear` at w_bits = 32
  holding the dequantized, BatchNorm-folded weight (32: as stored; 16: fp16 -> fp32; 2..8:
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
- Integer layers: the codes (x_int, w_int) are the fake-quant model's own; the accumulator is
  exact and the epilogue is float32 acc · scale + bias, where the fake-quant model sums
  float products of x̂ and ŵ then applies BatchNorm: the same value up to float32 rounding,
  which the next quantizer absorbs unless a value lands on one of its boundaries. Chained
  layers requantize with the consumer's own rounding, so chaining changes no number.
- A folded BatchNorm (float 2..8 and 32 bits, grouped binary convs, binary shortcuts' 1x1 convs)
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

from torch import nn

from nas.blocks.model import build_model
from nas.export.convert import convert
from nas.export.fold import geometries
from nas.export.payload import decode_payload
from nas.space import ArchSpec


def packed_model(arch: ArchSpec, payload: bytes, integer: bool = True) -> nn.Module:
    """The deployable network of `arch` with every weight read from `payload` (eval mode).
    `model.layer_paths`: per payload record, the path it runs on (`nas.export.convert`).
    `integer=False` keeps every 2..32-bit layer on the float path (dequantized weights): the
    form `nas.export.onnx_int8` traces, its quantized nodes then written in place.

    The payload is not self-describing: the layer geometries come from the rebuilt network
    (`nas.export.fold.geometries`), so the arch string is the payload's schema."""
    model = build_model(arch).eval()
    records = decode_payload(payload, geometries(model))
    model.layer_paths = convert(model, records, integer)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
