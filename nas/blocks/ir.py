"""``ir``: inverted residual (MBConv) / depthwise-separable block, timm's blocks.

expand == 1: depthwise k x k (stride s) + BN + act [+ SE], pointwise 1x1 to c + BN.
expand > 1:  pointwise 1x1 to mid = make_divisible(in * e) + BN + act, depthwise k x k
(stride s) + BN + act [+ SE], pointwise-linear 1x1 to c + BN. Residual add when stride 1
and channels kept. `d`: the depthwise conv's dilation (timm pads d * (k - 1) / 2). SE squeezes to max(1, round(block input * se)), ReLU inside, sigmoid gate.
1-bit: the same convs as Bi-Real units, no SE, no block residual.
"""

from nas.blocks.common import has_residual, mid_chs

KEYS = ("r", "k", "s", "e", "c", "se", "d", "p", "cb", "w", "a")  # arch-string keys, in canonical order
# cost op role -> (module name when float, module name of the Bi-Real unit when 1-bit)
MODULE_NAMES = {"conv_dw": ("conv_dw", "dw"), "conv_pw": ("conv_pw", "pw"), "conv_pwl": ("conv_pwl", "pwl")}


def se_chs(in_chs: int, se: float) -> int:
    """Squeeze-excite width: a ratio of the block's input channels (EfficientNet)."""
    return max(1, round(in_chs * se))


def layer_roles(b) -> tuple[str, ...]:
    """The block's bit-carrying convs in execution order (`BlockSpec.block_bits` order)."""
    return ("conv_dw", "conv_pw") if b.expand == 1 else ("conv_pw", "conv_dw", "conv_pwl")


def expand(net, prefix: str, x: int, b, in_chs: int, stride: int, bits) -> int:
    """`bits`: (w_bits, a_bits) per conv, `layer_roles` order; SE takes the depthwise conv's w_bits."""
    act = None if b.binary else b.act
    elem = net.elementwise_bits(b)
    if b.expand == 1:  # timm's DepthwiseSeparableConv
        dw, pw = bits
        y = net.unit(f"{prefix}.conv_dw", x, in_chs, b.kernel, stride, in_chs, b, act, b.dilation, bits=dw)
        if b.se:
            y = net.squeeze_excite(f"{prefix}.se", y, net.se_channels(in_chs, in_chs, b.se), dw[0], elem)
        y = net.unit(f"{prefix}.conv_pw", y, b.out_chs, 1, 1, 1, b, None, bits=pw)
    else:  # timm's InvertedResidual
        pw, dw, pwl = bits
        mid = mid_chs(b, in_chs)
        y = net.unit(f"{prefix}.conv_pw", x, mid, 1, 1, 1, b, act, bits=pw)
        y = net.unit(f"{prefix}.conv_dw", y, mid, b.kernel, stride, mid, b, act, b.dilation, bits=dw)
        if b.se:
            y = net.squeeze_excite(f"{prefix}.se", y, net.se_channels(in_chs, mid, b.se), dw[0], elem)
        y = net.unit(f"{prefix}.conv_pwl", y, b.out_chs, 1, 1, 1, b, None, bits=pwl)
    if has_residual(b, in_chs, stride):
        y = net.add(f"{prefix}.add", x, y, elem)
    return y


def build(b, in_chs: int, stride: int, bits):
    """MBConv / depthwise-separable block (timm's modules, convs swapped for quantized ones);
    1-bit: a chain of binary units. `bits`: (w_bits, a_bits) per conv, `layer_roles` order."""
    from functools import partial

    from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual, SqueezeExcite
    from torch import nn

    from nas.blocks.layers import Block, act_layer, act_output_signed, swap_conv, unit

    out_chs = b.out_chs
    if b.binary:
        if b.expand == 1:
            dw, pw = (a for _, a in bits)
            return Block([("dw", unit(dw, in_chs, in_chs, b.kernel, stride, in_chs)),
                          ("pw", unit(pw, in_chs, out_chs, 1))])
        pw, dw, pwl = (a for _, a in bits)
        mid = mid_chs(b, in_chs)
        return Block([("pw", unit(pw, in_chs, mid, 1)),
                      ("dw", unit(dw, mid, mid, b.kernel, stride, mid)),
                      ("pwl", unit(pwl, mid, out_chs, 1))])
    act = act_layer(b.act)
    se_layer = None
    if b.se:
        se_layer = partial(SqueezeExcite, rd_channels=se_chs(in_chs, b.se), force_act_layer=nn.ReLU)
    post = act_output_signed(b.act)
    if b.expand == 1:
        blk = DepthwiseSeparableConv(in_chs, out_chs, b.kernel, stride, b.dilation, act_layer=act, se_layer=se_layer)
        signs = (True, post)
    else:
        blk = InvertedResidual(in_chs, out_chs, b.kernel, stride, b.dilation, exp_ratio=b.expand, act_layer=act,
                               se_layer=se_layer)
        signs = (True, post, post)
    for name, signed, (w_bits, a_bits) in zip(layer_roles(b), signs, bits):
        swap_conv(blk, name, w_bits, a_bits, signed)
    if b.se:
        dw_w_bits = bits[layer_roles(b).index("conv_dw")][0]
        for name in ("conv_reduce", "conv_expand"):
            swap_conv(blk.se, name, dw_w_bits, 32, True)
    return blk
