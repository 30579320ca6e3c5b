"""``ir``: inverted residual (MBConv) / depthwise-separable block, timm's blocks.

expand == 1: depthwise k x k (stride s) + BN + act [+ SE], pointwise 1x1 to c + BN.
expand > 1:  pointwise 1x1 to mid = make_divisible(in * e) + BN + act, depthwise k x k
(stride s) + BN + act [+ SE], pointwise-linear 1x1 to c + BN. Residual add when stride 1
and channels kept. `d`: the depthwise conv's dilation (timm pads d * (k - 1) / 2). SE squeezes to max(1, round(block input * se)), ReLU inside, sigmoid gate.
1-bit: the same convs as Bi-Real units, no SE, no block residual.
"""

from nas.blocks.common import has_residual, mid_chs

KEYS = ("r", "k", "s", "e", "c", "se", "d", "w", "a")  # arch-string keys, in canonical order
# cost op role -> (module name when float, module name of the Bi-Real unit when 1-bit)
MODULE_NAMES = {"conv_dw": ("conv_dw", "dw"), "conv_pw": ("conv_pw", "pw"), "conv_pwl": ("conv_pwl", "pwl")}


def se_chs(in_chs: int, se: float) -> int:
    """Squeeze-excite width: a ratio of the block's input channels (EfficientNet)."""
    return max(1, round(in_chs * se))


def expand(net, prefix: str, x: int, b, in_chs: int, stride: int) -> int:
    act = None if b.binary else b.act
    elem = net.elementwise_bits(b)
    if b.expand == 1:  # timm's DepthwiseSeparableConv
        y = net.unit(f"{prefix}.conv_dw", x, in_chs, b.kernel, stride, in_chs, b, act, b.dilation)
        if b.se:
            y = net.squeeze_excite(f"{prefix}.se", y, net.se_channels(in_chs, in_chs, b.se), b, elem)
        y = net.unit(f"{prefix}.conv_pw", y, b.out_chs, 1, 1, 1, b, None)
    else:  # timm's InvertedResidual
        mid = mid_chs(b, in_chs)
        y = net.unit(f"{prefix}.conv_pw", x, mid, 1, 1, 1, b, act)
        y = net.unit(f"{prefix}.conv_dw", y, mid, b.kernel, stride, mid, b, act, b.dilation)
        if b.se:
            y = net.squeeze_excite(f"{prefix}.se", y, net.se_channels(in_chs, mid, b.se), b, elem)
        y = net.unit(f"{prefix}.conv_pwl", y, b.out_chs, 1, 1, 1, b, None)
    if has_residual(b, in_chs, stride):
        y = net.add(f"{prefix}.add", x, y, elem)
    return y


def build(b, in_chs: int, stride: int):
    """MBConv / depthwise-separable block (timm's modules, convs swapped for quantized ones);
    1-bit: a chain of binary units."""
    from functools import partial

    from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual, SqueezeExcite
    from torch import nn

    from nas.blocks.layers import Block, act_layer, act_output_signed, swap_conv, unit

    out_chs = b.out_chs
    if b.binary:
        if b.expand == 1:
            return Block([("dw", unit(b, in_chs, in_chs, b.kernel, stride, in_chs)),
                          ("pw", unit(b, in_chs, out_chs, 1))])
        mid = mid_chs(b, in_chs)
        return Block([("pw", unit(b, in_chs, mid, 1)),
                      ("dw", unit(b, mid, mid, b.kernel, stride, mid)),
                      ("pwl", unit(b, mid, out_chs, 1))])
    act = act_layer(b.act)
    se_layer = None
    if b.se:
        se_layer = partial(SqueezeExcite, rd_channels=se_chs(in_chs, b.se), force_act_layer=nn.ReLU)
    post = act_output_signed(b.act)
    if b.expand == 1:
        blk = DepthwiseSeparableConv(in_chs, out_chs, b.kernel, stride, b.dilation, act_layer=act, se_layer=se_layer)
        convs = [("conv_dw", True), ("conv_pw", post)]
    else:
        blk = InvertedResidual(in_chs, out_chs, b.kernel, stride, b.dilation, exp_ratio=b.expand, act_layer=act,
                               se_layer=se_layer)
        convs = [("conv_pw", True), ("conv_dw", post), ("conv_pwl", post)]
    for name, signed in convs:
        swap_conv(blk, name, b.w_bits, b.a_bits, signed)
    if b.se:
        for name in ("conv_reduce", "conv_expand"):
            swap_conv(blk.se, name, b.w_bits, 32, True)
    return blk
