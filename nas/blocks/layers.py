"""The torch layers the block kinds (`nas.blocks.<kind>.build`) are made of.

Conventions this file fixes:

- convs have no bias, except squeeze-excite's two 1x1 convs; every conv has padding d * (k // 2)
  (dilation d, 1 unless the arch string's `d` says otherwise);
- every conv's input is quantized to its layer's `a_bits` and its weight to `w_bits` (the
  block's, or per layer: `BlockSpec.block_bits`), except the SE convs, whose weights take
  the depthwise conv's `w_bits` and whose inputs stay float;
- an input site is *unsigned* (PACT clip [0, α]) only when it directly follows a ReLU (in
  an ir block with SE: a ReLU output times the sigmoid gate); block inputs, concatenations
  and hard-swish outputs are signed ([-α, α]). Signedness changes no parameter count;
- the residual add (stride 1, channels unchanged) is used in ir, shift and grouped blocks;
  dense blocks have none (concatenation is their shortcut);
- 1-bit blocks (w_bits == 1) turn every conv into a `BiRealUnit` with its own real-valued
  shortcut and no activation function; they have no block-level residual add;
- 2x2 average pools (dense transition when s == 2, binary shortcuts) use ceil_mode=True so
  their output is ceil(H / 2), like a stride-2 conv with padding k // 2.
"""

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import get_act_layer
from torch import nn

from nas.blocks.common import shift_groups
from nas.quant import BinaryConv2d, BiRealUnit, QuantConv2d
from nas.space.spec import SHORTCUT_BITS

ACT_LAYERS = {"relu": "relu", "hswish": "hard_swish"}  # spec name -> timm name


def act_layer(act: str) -> type[nn.Module]:
    return nn.Identity if act == "none" else get_act_layer(ACT_LAYERS[act])


def act_output_signed(act: str) -> bool:
    """Is the output of this activation possibly negative (hard-swish dips to -3/8)?"""
    return act != "relu"


def quant_conv(in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1, *, w_bits: int,
               a_bits: int, signed: bool, dilation: int = 1) -> QuantConv2d:
    """A bias-free conv with padding d * (k // 2) at the given bits (BinaryConv2d at w_bits == 1,
    never dilated: `BlockSpec` refuses dilation in 1-bit blocks)."""
    if w_bits == 1:
        if dilation != 1:
            raise ValueError(f"quant_conv: dilation={dilation} with w_bits=1; expected 1 (binary convs have no dilation)")
        return BinaryConv2d(in_chs, out_chs, kernel, stride, kernel // 2, groups, a_bits=a_bits, signed=signed)
    return QuantConv2d(in_chs, out_chs, kernel, stride, dilation * (kernel // 2), dilation, groups=groups, bias=False,
                       w_bits=w_bits, a_bits=a_bits, signed=signed)


def conv_bn_act(in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1, *, w_bits: int,
                a_bits: int, signed: bool, act: str | None, dilation: int = 1) -> list[tuple[str, nn.Module]]:
    """conv + BN (+ act): named layers to put into a `Block`."""
    layers = [("conv", quant_conv(in_chs, out_chs, kernel, stride, groups, w_bits=w_bits, a_bits=a_bits,
                                  signed=signed, dilation=dilation)),
              ("bn", nn.BatchNorm2d(out_chs))]
    if act is not None and act != "none":
        layers.append(("act", act_layer(act)(inplace=True)))
    return layers


def unit(a_bits: int, in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1) -> BiRealUnit:
    """The binary unit a conv of a 1-bit block becomes, its input at `a_bits` (this layer's)."""
    return BiRealUnit(in_chs, out_chs, kernel, stride, groups, a_bits=a_bits, shortcut_bits=SHORTCUT_BITS)


class Block(nn.Sequential):
    """A block's layers in execution order, plus its input when `has_skip`."""

    def __init__(self, layers, has_skip: bool = False):
        super().__init__(OrderedDict(layers))
        self.has_skip = has_skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y + x if self.has_skip else y

    def extra_repr(self) -> str:
        return "has_skip=True" if self.has_skip else ""


class Shift(nn.Module):
    """ShiftNet's grouped shift (Wu et al. 2018), or a sparse shift (`shift_frac` < 1: most
    channels stay in place): no parameters, no multiplies.

    The channel groups and their offsets are `nas.blocks.common.shift_groups` (the cost
    model reads the same list): out[y, x] = in[y + dy, x + dx], zero outside the map; then
    every stride-th row and column is kept (output ceil(H / s)).
    """

    def __init__(self, kernel: int, stride: int = 1, shift_frac: float = 1.0):
        super().__init__()
        self.kernel, self.stride, self.shift_frac = kernel, stride, shift_frac

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        C = int(x.shape[1])
        groups = shift_groups(C, self.kernel, self.shift_frac)
        if torch.onnx.is_in_onnx_export() and self.kernel % 2 == 1:
            # ONNX: one depthwise conv with a one-hot kernel per channel (exact: each output is one
            # input times 1.0), not a Pad and a Slice per group, which onnxruntime ran as dozens of
            # small ops (docs/deploy-onnx.md)
            return F.conv2d(x, self.one_hot(groups, C, x.dtype), stride=s, padding=self.kernel // 2, groups=C)
        if x.dtype in (torch.uint8, torch.int8):  # codes between two integer layers (nas.export.convert)
            from nas.kernels.integer import shift_codes
            return shift_codes(x, groups, s)
        outs = []
        for (dy, dx, _), part in zip(groups, torch.split(x, [n for _, _, n in groups], dim=1)):
            # out[y, x] = in[y + dy, x + dx]: crop dx columns / dy rows on one side, zero-fill the other.
            # Splitting first and shifting each part keeps the backward pass part-sized.
            outs.append(F.pad(part, (-dx, dx, -dy, dy))[:, :, ::s, ::s])
        return torch.cat(outs, dim=1)

    def one_hot(self, groups: list, C: int, dtype: torch.dtype) -> torch.Tensor:
        """(C, 1, k, k) depthwise weights: 1 at (k // 2 + dy, k // 2 + dx) for each channel's group
        (`shift_groups`), 0 elsewhere; built in numpy so that a trace holds it as a constant."""
        k = self.kernel
        w = np.zeros((C, 1, k, k), np.float32)
        c = 0
        for dy, dx, n in groups:
            w[c:c + n, 0, k // 2 + dy, k // 2 + dx] = 1
            c += n
        return torch.from_numpy(w).to(dtype)

    def extra_repr(self) -> str:
        sparse = f", shift_frac={self.shift_frac:g}" if self.shift_frac != 1.0 else ""
        return f"kernel={self.kernel}, stride={self.stride}{sparse}"


class ActiveShift(nn.Module):
    """Active shift (Jeon & Kim 2018; survey 000 ch. 3 sec. 2-7): each channel c moves by its
    own learned, fractional offset (dy_c, dx_c), out[y, x] = in[y + dy, x + dx] read by
    bilinear interpolation (zero outside the map), then every stride-th row and column is
    kept. `offset` (C, 2) float32 starts at the grouped shift's integer offsets
    (`shift_groups(C, kernel)`), where it equals `Shift(kernel)`.

    `F.grid_sample` does the bilinear read and its gradient with respect to the offsets;
    each channel is its own image (N*C, 1, H, W) so that each gets its own sampling grid."""

    def __init__(self, chs: int, kernel: int, stride: int = 1):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        init = [(float(dy), float(dx)) for dy, dx, n in shift_groups(chs, kernel) for _ in range(n)]
        self.offset = nn.Parameter(torch.tensor(init, dtype=torch.float32))  # (C, 2): dy, dx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        ys = torch.arange(h, dtype=x.dtype, device=x.device).view(1, h, 1)
        xs = torch.arange(w, dtype=x.dtype, device=x.device).view(1, 1, w)
        dy, dx = self.offset[:, 0].view(c, 1, 1).to(x.dtype), self.offset[:, 1].view(c, 1, 1).to(x.dtype)
        # pixel centres in grid_sample's [-1, 1] coordinates (align_corners=False): (2 * i + 1) / size - 1
        gx = ((2 * (xs + dx) + 1) / w - 1).expand(c, h, w)
        gy = ((2 * (ys + dy) + 1) / h - 1).expand(c, h, w)
        grid = torch.stack([gx, gy], dim=-1).repeat(n, 1, 1, 1)  # (N*C, H, W, 2), channel-major per image
        y = F.grid_sample(x.reshape(n * c, 1, h, w), grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)
        s = self.stride
        return y.reshape(n, c, h, w)[:, :, ::s, ::s]

    def extra_repr(self) -> str:
        return f"chs={self.offset.shape[0]}, kernel={self.kernel}, stride={self.stride}"


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: (g, C/g) -> (C/g, g) interleave."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.uint8, torch.int8):  # codes between two integer layers (nas.export.convert)
            from nas.kernels.integer import shuffle_codes
            return shuffle_codes(x, self.groups)
        n, c, h, w = x.shape
        # (N, g, C/g, H, W) -> (N, C/g, g, H, W) -> (N, C, H, W)
        return x.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


def swap_conv(parent: nn.Module, name: str, w_bits: int, a_bits: int, signed: bool) -> None:
    """Replace a float conv child with its quantized twin (timm blocks build float convs)."""
    setattr(parent, name, QuantConv2d.from_conv(getattr(parent, name), w_bits, a_bits, signed))


class DenseBlock(nn.Module):
    """x -> cat(x, layer(x)) for each dense layer -> transition."""

    def __init__(self, layers: list[nn.Module], transition: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.transition = transition

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)  # (N, C + growth, H, W)
        return self.transition(x)
