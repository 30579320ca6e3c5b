"""Bi-Real style binary layers (Liu et al. 2018; seed 003) and their packed-kernel path.

`BinaryConv2d` is a `QuantConv2d` with w_bits = 1: y = α_c · conv(sign(x), sign(W)),
α_c = mean |W| per output channel, ApproxSign gradient for the input, one-padding.

`BiRealUnit` is the unit every conv of a 1-bit block becomes (spec.py)::

    y = BN(binconv(sign(x))) + shortcut(x)

    shortcut: identity
              -> AvgPool2d(2, ceil_mode=True)          when stride == 2
              -> 1x1 QuantConv2d (w_bits = shortcut_bits, input unquantized, no bias) + BN
                                                       when in_chs != out_chs
    (pool first, then conv, as in Bi-Real's downsampling shortcut). ceil_mode makes the pool's
    output ceil(H / 2), the same as the strided binary conv's, for odd sizes too; the last
    window then averages only the pixels inside the map.

Packed kernels (`nas.kernels`): in eval mode, without autograd, on CPU float32, with ±1
inputs (a_bits == 1), groups == 1 and square geometry, the forward runs the fused
XNOR-popcount conv and folds α_c and BN into one per-channel scale / bias:

    y = acc · (α_c · γ_c / sqrt(var_c + eps)) + (β_c - mean_c · γ_c / sqrt(var_c + eps)) + shortcut(x)

Anywhere else (training, gradients needed, groups > 1, CUDA, kernels not built) it runs the
fake-quant path, which computes the same function. ``use_kernels = False`` turns the
kernel path off for one layer.
"""

from collections import OrderedDict

import torch
from torch import nn

from nas.cost.kernel_path import on_packed_kernels
from nas.quant.functions import binary_scale
from nas.quant.modules import QuantConv2d


def kernel_runtime_ready(module: nn.Module, x: torch.Tensor, needs_grad: bool) -> bool:
    """The runtime half of the kernel path (the structural half: `nas.cost.kernel_path`):
    eval mode, no gradient wanted, CPU float32, not tracing, kernels built."""
    return (not module.training and not needs_grad and x.device.type == "cpu" and x.dtype == torch.float32
            and not torch.jit.is_tracing() and packed_kernels() is not None)


def packed_kernels():
    """`nas.kernels` when it is importable and says it is available, else None."""
    try:
        from nas import kernels
    except ImportError:
        return None
    available = getattr(kernels, "available", None)
    return kernels if available is not None and available() else None


class BinaryConv2d(QuantConv2d):
    """1-bit weights (α_c · sign W), inputs at `a_bits` (1: sign with one-padding)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, groups: int = 1, bias: bool = False, *, a_bits: int = 1,
                 signed: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, 1, groups, bias,
                         w_bits=1, a_bits=a_bits, signed=signed)
        self.use_kernels = True
        self._packed = None  # (weight version key, packed weights), filled on the kernel path

    def kernel_ready(self, x: torch.Tensor) -> bool:
        """Whether this call may run the packed kernel (see the module docstring)."""
        square = len(set(self.kernel_size)) == 1 and len(set(self.stride)) == 1 and len(set(self.padding)) == 1
        dilation = self.dilation[0] if len(set(self.dilation)) == 1 else 0
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        if self.real_weights or self.act_quant.real_clip:  # Bi-Real's real-valued stage: no ±1 anywhere
            return False
        return (self.use_kernels and on_packed_kernels(1, self.a_bits, self.groups, square, dilation)
                and kernel_runtime_ready(self, x, needs_grad))

    def _packed_weight(self, kernels):
        key = (self.weight._version, self.weight.data_ptr())
        if self._packed is None or self._packed[0] != key:
            with torch.inference_mode(False):  # a normal tensor: the kernels cache on it by version
                self._packed = (key, kernels.pack_weights(self.weight.detach().contiguous()))
        return self._packed[1]

    def forward_kernel(self, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                       residual: torch.Tensor | None = None) -> torch.Tensor:
        """y = acc · scale_c + bias_c (+ residual) through the packed kernel; NCHW in, NCHW out."""
        kernels = packed_kernels()
        x_packed = kernels.pack_activations(x.permute(0, 2, 3, 1).contiguous())  # (N, H, W, C) -> packed words
        if residual is not None:
            residual = residual.permute(0, 2, 3, 1).contiguous()  # (N, H_out, W_out, C_out)
        y, _ = kernels.binary_conv2d(
            x_packed, self._packed_weight(kernels), self.in_channels, self.kernel_size[0], self.stride[0],
            self.padding[0], scale.detach().float().contiguous(), bias.detach().float().contiguous(),
            residual=residual, out_float=True, out_packed=False)
        return y.permute(0, 3, 1, 2)  # (N, H_out, W_out, C_out) -> NCHW view, channels_last in memory

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_ready(x):
            bias = self.bias if self.bias is not None else torch.zeros(self.out_channels)
            return self.forward_kernel(x, binary_scale(self.weight), bias)
        return super().forward(x)


def bireal_shortcut(in_chs: int, out_chs: int, stride: int, shortcut_bits: int) -> nn.Sequential:
    """Real-valued shortcut of a binary unit; an empty Sequential is the identity."""
    layers = OrderedDict()
    if stride == 2:
        layers["pool"] = nn.AvgPool2d(2, ceil_mode=True)
    if in_chs != out_chs:
        layers["conv"] = QuantConv2d(in_chs, out_chs, 1, bias=False, w_bits=shortcut_bits, a_bits=32)
        layers["bn"] = nn.BatchNorm2d(out_chs)
    return nn.Sequential(layers)


class BiRealUnit(nn.Module):
    """y = BN(binconv(sign(x))) + shortcut(x); no activation function."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 *, a_bits: int = 1, shortcut_bits: int):
        super().__init__()
        # registered first: the shortcut runs first (its output is the kernel's residual input)
        self.shortcut = bireal_shortcut(in_chs, out_chs, stride, shortcut_bits)
        self.conv = BinaryConv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups, a_bits=a_bits)
        self.bn = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.shortcut(x)  # first, in both paths (execution order = registration order)
        if self.conv.kernel_ready(x) and self.bn.track_running_stats and not self.bn.training:
            bn = self.bn
            inv = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
            scale = binary_scale(self.conv.weight) * inv
            bias = bn.bias - bn.running_mean * inv
            return self.conv.forward_kernel(x, scale, bias, residual=residual)
        return self.bn(self.conv(x)) + residual
