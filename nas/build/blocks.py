"""One builder per block kind: a `BlockSpec` and its input channels -> modules.

The layer structure of every kind is the one in `nas/space/spec.py`'s docstring (the cost
model follows the same text). Conventions this file fixes:

- convs have no bias, except squeeze-excite's two 1x1 convs; every conv has padding k // 2;
- every conv's input is quantized to the block's `a_bits` and its weight to `w_bits`,
  except the SE convs, whose weights take `w_bits` and whose inputs stay float;
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
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import get_act_layer, make_divisible
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual, SqueezeExcite
from torch import nn

from nas.quant import BinaryConv2d, BiRealUnit, QuantConv2d
from nas.space.spec import DENSE_BOTTLENECK, SHORTCUT_BITS, BlockSpec

ACT_LAYERS = {"relu": "relu", "hswish": "hard_swish"}  # spec name -> timm name


def act_layer(act: str) -> type[nn.Module]:
    return nn.Identity if act == "none" else get_act_layer(ACT_LAYERS[act])


def act_output_signed(act: str) -> bool:
    """Is the output of this activation possibly negative (hard-swish dips to -3/8)?"""
    return act != "relu"


def quant_conv(in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1, *, w_bits: int,
               a_bits: int, signed: bool) -> QuantConv2d:
    """A bias-free conv with padding k // 2 at the given bits (BinaryConv2d at w_bits == 1)."""
    if w_bits == 1:
        return BinaryConv2d(in_chs, out_chs, kernel, stride, kernel // 2, groups, a_bits=a_bits, signed=signed)
    return QuantConv2d(in_chs, out_chs, kernel, stride, kernel // 2, groups=groups, bias=False, w_bits=w_bits,
                       a_bits=a_bits, signed=signed)


def conv_bn_act(in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1, *, w_bits: int,
                a_bits: int, signed: bool, act: str | None) -> list[tuple[str, nn.Module]]:
    """conv + BN (+ act): named layers to put into a `Block`."""
    layers = [("conv", quant_conv(in_chs, out_chs, kernel, stride, groups, w_bits=w_bits, a_bits=a_bits,
                                  signed=signed)),
              ("bn", nn.BatchNorm2d(out_chs))]
    if act is not None and act != "none":
        layers.append(("act", act_layer(act)(inplace=True)))
    return layers


def unit(b: BlockSpec, in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1) -> BiRealUnit:
    """The binary unit a conv of a 1-bit block becomes."""
    return BiRealUnit(in_chs, out_chs, kernel, stride, groups, a_bits=b.a_bits, shortcut_bits=SHORTCUT_BITS)


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
    """ShiftNet's grouped shift (Wu et al. 2018): no parameters, no multiplies.

    The channels are split into k*k contiguous groups (`torch.tensor_split` sizes: the first
    C mod k^2 groups get one channel more; groups may be empty when C < k^2). Group i moves
    by offset (dy, dx) = (i // k - k // 2, i % k - k // 2):  out[y, x] = in[y + dy, x + dx],
    zero outside the map; then every stride-th row and column is kept (output ceil(H / s)).
    """

    def __init__(self, kernel: int, stride: int = 1):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s, p = self.kernel, self.stride, self.kernel // 2
        c, n = x.shape[1], k * k
        sizes = [c // n + (1 if i < c % n else 0) for i in range(n)]  # torch.tensor_split's sizes
        outs = []
        for i, part in enumerate(torch.split(x, sizes, dim=1)):
            dy, dx = i // k - p, i % k - p
            # out[y, x] = in[y + dy, x + dx]: crop dx columns / dy rows on one side, zero-fill the other.
            # Splitting first and shifting each part keeps the backward pass part-sized.
            outs.append(F.pad(part, (-dx, dx, -dy, dy))[:, :, ::s, ::s])
        return torch.cat(outs, dim=1)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}"


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: (g, C/g) -> (C/g, g) interleave."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        # (N, g, C/g, H, W) -> (N, C/g, g, H, W) -> (N, C, H, W)
        return x.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


# ---- ir: inverted residual / depthwise-separable (timm's blocks) --------------------------

def _swap_conv(parent: nn.Module, name: str, w_bits: int, a_bits: int, signed: bool) -> None:
    setattr(parent, name, QuantConv2d.from_conv(getattr(parent, name), w_bits, a_bits, signed))


def ir_block(b: BlockSpec, in_chs: int, stride: int) -> nn.Module:
    """MBConv / depthwise-separable block; 1-bit: chain of binary units."""
    out_chs = b.out_chs
    if b.binary:
        if b.expand == 1:
            return Block([("dw", unit(b, in_chs, in_chs, b.kernel, stride, in_chs)),
                          ("pw", unit(b, in_chs, out_chs, 1))])
        mid = make_divisible(in_chs * b.expand)
        return Block([("pw", unit(b, in_chs, mid, 1)),
                      ("dw", unit(b, mid, mid, b.kernel, stride, mid)),
                      ("pwl", unit(b, mid, out_chs, 1))])
    act = act_layer(b.act)
    se_layer = None
    if b.se:  # squeezes to round(block input * se), ReLU inside, sigmoid gate (EfficientNet)
        se_layer = partial(SqueezeExcite, rd_channels=max(1, round(in_chs * b.se)), force_act_layer=nn.ReLU)
    post = act_output_signed(b.act)
    if b.expand == 1:
        blk = DepthwiseSeparableConv(in_chs, out_chs, b.kernel, stride, act_layer=act, se_layer=se_layer)
        convs = [("conv_dw", True), ("conv_pw", post)]
    else:
        blk = InvertedResidual(in_chs, out_chs, b.kernel, stride, exp_ratio=b.expand, act_layer=act,
                               se_layer=se_layer)
        convs = [("conv_pw", True), ("conv_dw", post), ("conv_pwl", post)]
    for name, signed in convs:
        _swap_conv(blk, name, b.w_bits, b.a_bits, signed)
    if b.se:
        for name in ("conv_reduce", "conv_expand"):
            _swap_conv(blk.se, name, b.w_bits, 32, True)
    return blk


# ---- shift: pointwise, shift, pointwise -----------------------------------------------------

def shift_block(b: BlockSpec, in_chs: int, stride: int) -> nn.Module:
    mid = make_divisible(in_chs * b.expand)
    if b.binary:
        return Block([("pw1", unit(b, in_chs, mid, 1)), ("shift", Shift(b.kernel, stride)),
                      ("pw2", unit(b, mid, b.out_chs, 1))])
    q = dict(w_bits=b.w_bits, a_bits=b.a_bits)
    pw1 = conv_bn_act(in_chs, mid, 1, signed=True, act=b.act, **q)
    pw2 = conv_bn_act(mid, b.out_chs, 1, signed=act_output_signed(b.act), act=None, **q)
    layers = [(f"{n}1", m) for n, m in pw1] + [("shift", Shift(b.kernel, stride))] + [(f"{n}2", m) for n, m in pw2]
    return Block(layers, has_skip=stride == 1 and in_chs == b.out_chs)


# ---- grouped: grouped k x k, channel shuffle, grouped 1x1 ----------------------------------

def grouped_block(b: BlockSpec, in_chs: int, stride: int) -> nn.Module:
    g, out_chs = b.groups, b.out_chs
    shuffle = [("shuffle", ChannelShuffle(g))] if g > 1 else []
    if b.binary:
        return Block([("gconv", unit(b, in_chs, out_chs, b.kernel, stride, g))] + shuffle
                     + [("gpw", unit(b, out_chs, out_chs, 1, 1, g))])
    q = dict(w_bits=b.w_bits, a_bits=b.a_bits)
    c1 = conv_bn_act(in_chs, out_chs, b.kernel, stride, g, signed=True, act=b.act, **q)
    c2 = conv_bn_act(out_chs, out_chs, 1, 1, g, signed=act_output_signed(b.act), act=None, **q)
    layers = [(f"{n}1", m) for n, m in c1] + shuffle + [(f"{n}2", m) for n, m in c2]
    return Block(layers, has_skip=stride == 1 and in_chs == out_chs)


# ---- dense: dense layers concatenated, transition ------------------------------------------

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


def dense_block(b: BlockSpec, in_chs: int, stride: int) -> nn.Module:
    """`b.repeats` dense layers (1x1 to 4*gr, k x k to gr), then a 1x1 transition to c."""
    gr, wide = b.growth, DENSE_BOTTLENECK * b.growth
    pool = [("pool", nn.AvgPool2d(2, ceil_mode=True))] if stride == 2 else []
    q = dict(w_bits=b.w_bits, a_bits=b.a_bits)
    layers, chs = [], in_chs
    for _ in range(b.repeats):
        if b.binary:
            layers.append(Block([("unit1", unit(b, chs, wide, 1)), ("unit2", unit(b, wide, gr, b.kernel))]))
        else:
            c1 = conv_bn_act(chs, wide, 1, signed=True, act=b.act, **q)
            c2 = conv_bn_act(wide, gr, b.kernel, signed=act_output_signed(b.act), act=b.act, **q)
            layers.append(Block([(f"{n}1", m) for n, m in c1] + [(f"{n}2", m) for n, m in c2]))
        chs += gr
    if b.binary:
        transition = Block([("unit", unit(b, chs, b.out_chs, 1))] + pool)
    else:
        transition = Block(conv_bn_act(chs, b.out_chs, 1, signed=True, act=None, **q) + pool)  # linear
    return DenseBlock(layers, transition)


BLOCK_BUILDERS = {"ir": ir_block, "shift": shift_block, "grouped": grouped_block, "dense": dense_block}


def build_stage(b: BlockSpec, in_chs: int) -> nn.Sequential:
    """A stage: `b.repeats` blocks (the first strided and changing channels); dense: one block."""
    build = BLOCK_BUILDERS[b.kind]
    if b.kind == "dense":
        return nn.Sequential(build(b, in_chs, b.stride))
    blocks = [build(b, in_chs if i == 0 else b.out_chs, b.stride if i == 0 else 1) for i in range(b.repeats)]
    return nn.Sequential(*blocks)
