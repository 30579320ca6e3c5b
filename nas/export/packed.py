"""The deployable modules a packed model is made of (what `nas infer` runs).

Which fake-quant module becomes which of these is `nas.export.convert` (the conversion
table); this file only says how each one computes.

- `PackedBinaryConv2d` / `PackedBinaryUnit`: 1-bit weights on the packed XNOR-popcount
  kernels (`nas.kernels`), torch fallback with the same numbers;
- `PackedIntegerConv2d`: 2/4/8-bit weights with a 2/4/8-bit PACT input on the integer
  kernels (`nas.kernels.integer.IntegerConv`; integer semantics: `nas.quant.integer`);
- `float_layer`: everything else (16/32-bit weights, or an input the integer kernels do not
  take) as a w_bits = 32 `QuantConv2d` / `QuantLinear` holding the dequantized weight.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nas.cost.kernel_path import on_packed_kernels
from nas.export.payload import LayerRecord
from nas.kernels import integer, reference
from nas.quant import ActQuant, QuantConv2d, QuantLinear, packed_kernels
from nas.quant.binary import kernel_runtime_ready
from nas.quant.integer import act_code_dtype, act_codes, act_scale
from nas.quant.modules import MIN_CLIP

CODE_DTYPES = (torch.uint8, torch.int8)  # a tensor of these between layers holds activation codes


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


def integer_weight(rec: LayerRecord) -> torch.Tensor:
    """w_int = 2 q - L (int16, (C_out, C_in_g, k_h, k_w); linear k = 1) of a 2..8-bit record:
    the exact integer the DoReFa code q stands for (`nas.quant.integer`)."""
    g = rec.geom
    levels = 2**g.bits - 1
    w_int = 2 * torch.from_numpy(rec.weight.astype(np.int16)) - levels  # (C_out, row)
    return w_int.reshape(g.c_out, g.c_in_g, g.k_h, g.k_w)


def input_clip(rec: LayerRecord) -> torch.Tensor:
    """The PACT clip α the layer's input quantizer uses: the payload's clip, held at MIN_CLIP
    from below exactly as `ActQuant` holds it (float32 scalar)."""
    return torch.tensor(float(rec.clip), dtype=torch.float32).clamp_min(MIN_CLIP)


class PackedIntegerConv2d(nn.Module):
    """A 2/4/8-bit conv (or linear, as a 1x1 conv) with a 2/4/8-bit PACT input, from the payload.

    y = activation(acc · scale_c + bias_c),  acc = Σ x_int · w_int  (exact int32, C kernel)
        x_int = PACT codes of the input (clip α from the payload), w_int = 2 q - L,
        scale_c = s_x · (m_c · g_c) / L  (s_x = α / steps; m_c · g_c the record's scale, BN folded),
        bias_c  = the record's folded bias;  activation: the ReLU / h-swish that followed the
        BatchNorm in the fake-quant model, fused (`nas.export.convert` decides).
    Input: float NCHW (quantized here), or codes (uint8 / int8, NCHW-shaped view of NHWC memory)
    written by the previous integer layer. Output: float32, or, when `requant` is set
    (lo, α, s of the consumer's quantizer), the consumer's codes straight from the epilogue;
    either way an NCHW-shaped view of NHWC memory ((N, C) for a linear).
    """

    def __init__(self, rec: LayerRecord, src: nn.Module, activation: str = "none"):
        super().__init__()

        g = rec.geom
        self.name, self.linear = g.name, g.kind == "linear"
        self.a_bits, self.signed, self.activation = g.a_bits, src.act_quant.signed, activation
        self.alpha = input_clip(rec)
        s_x = act_scale(self.alpha, g.a_bits, self.signed)
        # the quantizer's constants as Python floats (each an exact float32 value; see input_codes)
        self._lo, self._hi, self._step = (-float(self.alpha) if self.signed else 0.0), float(self.alpha), float(s_x)
        self._code_dtype = act_code_dtype(self.signed)
        scale = (s_x * torch.from_numpy(rec.scale.copy()) / (2**g.bits - 1)).float()
        stride, padding, groups = ((1, 1), (0, 0), 1) if self.linear else (src.stride, src.padding, src.groups)
        self.register_buffer("w_int", integer_weight(rec))  # (C_out, C_in_g, k_h, k_w) int16
        self.register_buffer("scale", scale)  # (C_out,) float32
        self.register_buffer("bias", torch.from_numpy(rec.bias.copy()))  # (C_out,) float32
        self.kernel = integer.IntegerConv(self.w_int, g.bits, stride, padding, groups, scale, self.bias, activation)
        self.out_chs = g.c_out
        self.requant: tuple[float, float, float] | None = None  # set by convert.chain_integer_layers
        self.requant_bits = 0  # the codes' width when requant is set (the C package packs them at it)

    def input_codes(self, x: torch.Tensor) -> torch.Tensor:
        """(N, H, W, C) codes of a float NCHW (or (N, C)) input, equal to
        `nas.quant.integer.act_codes` (tests/test_integer_deploy.py holds them equal at atol=0):
        the same clamp, float32 division and round-half-even, in one C pass where the kernel
        level has one (`nas.kernels.integer.quantize_codes`), else as four torch ops on
        Python-float constants instead of act_codes' tensor constants (at batch 1 the ops'
        overhead, not their arithmetic, is the cost)."""
        if self.linear:
            x = x[:, None, None, :]  # (N, C) -> (N, 1, 1, C)
        else:
            x = x.permute(0, 2, 3, 1)  # NCHW -> NHWC (free when the input is channels_last)
        if x.dtype == torch.float32 and not x.requires_grad:
            codes = integer.quantize_codes(x.contiguous(), self._lo, self._hi, self._step, self._code_dtype)
            if codes is not None:
                return codes
        return torch.clamp(x, self._lo, self._hi).div_(self._step).round_().to(self._code_dtype)

    def reference_codes(self, x: torch.Tensor) -> torch.Tensor:
        """`input_codes` by `nas.quant.integer.act_codes` itself (the stated semantics)."""
        x = x[:, None, None, :] if self.linear else x.permute(0, 2, 3, 1)
        return act_codes(x, self.alpha, self.a_bits, self.signed).to(self._code_dtype)

    def requant_to(self, consumer: "PackedIntegerConv2d") -> None:
        """Write `consumer`'s input codes instead of floats (same rounding as its own quantizer)."""
        lo = -consumer.alpha if consumer.signed else torch.zeros(())
        self.requant = (float(lo), float(consumer.alpha), float(act_scale(consumer.alpha, consumer.a_bits,
                                                                          consumer.signed)))
        self.requant_bits = consumer.a_bits

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """x as the class docstring says; residual: float NCHW (N, C_out, H_out, W_out), added
        in the epilogue before the activation (`ResidualBlock`)."""
        if x.dtype in CODE_DTYPES:  # codes from the previous integer layer (NCHW view of NHWC)
            codes = x[:, None, None, :] if self.linear else x.permute(0, 2, 3, 1)
        else:
            codes = self.input_codes(x)
        if residual is not None:
            residual = residual.permute(0, 2, 3, 1).contiguous()  # NHWC (free when channels_last)
        y = self.kernel(codes, residual, self.requant)  # (N, H_out, W_out, C_out)
        return y.reshape(y.shape[0], self.out_chs) if self.linear else y.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        k = self.kernel
        return (f"{k.in_chs}, {k.out_chs}, kernel={k.kernel}, stride={k.stride}, padding={k.padding}, "
                f"groups={k.groups}, w_bits={k.w_bits}, a_bits={self.a_bits}, activation={self.activation}, "
                f"linear={self.linear}, codes_out={self.requant is not None}")


class ResidualBlock(nn.Module):
    """A residual block (ir / shift / grouped: stride 1, channels kept) whose last layer runs on
    the integer kernels: the block's layers in execution order, with the shortcut add moved
    into that layer's epilogue, y = (acc · scale + bias) + x in float32 - the same float32
    operations, in the same order, as the block's own `bn(conv(.)) + shortcut` on the packed
    layers (tests hold the two equal bit for bit). Children keep the block's names."""

    def __init__(self, layers: list[tuple[str, nn.Module]], last: str):
        super().__init__()
        for name, m in layers:
            self.add_module(name, m)
        self.last = last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for name, m in self.named_children():
            y = m(y, residual=x) if name == self.last else m(y)
        return y

    def extra_repr(self) -> str:
        return f"residual add in {self.last}"


def dequantized(rec: LayerRecord) -> torch.Tensor:
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


def float_layer(rec: LayerRecord, src: nn.Module) -> nn.Module:
    """A w_bits = 32 copy of `src` holding the dequantized folded weight and bias."""
    signed = src.act_quant.signed
    if isinstance(src, QuantLinear):
        m = QuantLinear(src.in_features, src.out_features, bias=True, w_bits=32, a_bits=src.a_bits, signed=signed)
    else:
        m = QuantConv2d(src.in_channels, src.out_channels, src.kernel_size, src.stride, src.padding, src.dilation,
                        src.groups, bias=True, w_bits=32, a_bits=src.a_bits, signed=signed)
    with torch.no_grad():
        m.weight.copy_(dequantized(rec))
        m.bias.copy_(torch.from_numpy(rec.bias.copy()))
    _load_clip(m.act_quant, rec.clip)
    return m


class FixedOrderAvgPool(nn.Module):
    """Global average pool with a stated float32 order (so the C export reproduces it bit for
    bit): s = x[p=0]; s = s + x[p] for p = 1 .. H·W - 1 (row-major pixels); y = s / (H·W).
    Replaces `nn.AdaptiveAvgPool2d(1)` in the packed model; output (N, C, 1, 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if integer.available() and x.dtype == torch.float32 and x.device.type == "cpu" and not x.requires_grad:
            return integer.global_pool(x)  # the same order in C (tests/test_int_kernels.py holds them equal)
        flat = x.reshape(x.shape[0], x.shape[1], -1)  # (N, C, H·W)
        s = flat[:, :, 0].clone()
        for p in range(1, flat.shape[2]):
            s = s + flat[:, :, p]
        return (s / flat.shape[2])[:, :, None, None]
