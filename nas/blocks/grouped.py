"""``grouped``: ShuffleNet-style grouped block: grouped k x k conv to c (stride s) + BN + act,
channel shuffle (only when groups > 1: with one group it is the identity), grouped 1x1 conv
+ BN. `d`: the k x k conv's dilation. Residual add when stride 1 and channels kept. 1-bit: both convs as Bi-Real units.
"""

from nas.blocks.common import has_residual

KEYS = ("r", "k", "s", "g", "c", "d", "p", "cb", "w", "a")  # arch-string keys, in canonical order
# cost op role -> (module name when float, module name of the Bi-Real unit when 1-bit)
MODULE_NAMES = {"conv_g": ("conv1", "gconv"), "conv_g1": ("conv2", "gpw")}


def layer_roles(b) -> tuple[str, ...]:
    """The block's bit-carrying convs in execution order (`BlockSpec.block_bits` order)."""
    return ("conv_g", "conv_g1")


def expand(net, prefix: str, x: int, b, in_chs: int, stride: int, bits) -> int:
    """`bits`: (w_bits, a_bits) per conv, `layer_roles` order."""
    act = None if b.binary else b.act
    elem = net.elementwise_bits(b)
    g, g1 = bits
    y = net.unit(f"{prefix}.conv_g", x, b.out_chs, b.kernel, stride, b.groups, b, act, b.dilation, bits=g)
    if b.groups > 1:
        y = net.elementwise(f"{prefix}.shuffle", "shuffle", [y], elem, groups=b.groups)
    y = net.unit(f"{prefix}.conv_g1", y, b.out_chs, 1, 1, b.groups, b, None, bits=g1)
    if has_residual(b, in_chs, stride):
        y = net.add(f"{prefix}.add", x, y, elem)
    return y


def build(b, in_chs: int, stride: int, bits):
    from nas.blocks.layers import Block, ChannelShuffle, act_output_signed, conv_bn_act, unit

    g, out_chs = b.groups, b.out_chs
    (w1, a1), (w2, a2) = bits
    shuffle = [("shuffle", ChannelShuffle(g))] if g > 1 else []
    if b.binary:
        return Block([("gconv", unit(a1, in_chs, out_chs, b.kernel, stride, g))] + shuffle
                     + [("gpw", unit(a2, out_chs, out_chs, 1, 1, g))])
    c1 = conv_bn_act(in_chs, out_chs, b.kernel, stride, g, signed=True, act=b.act, dilation=b.dilation,
                     w_bits=w1, a_bits=a1)
    c2 = conv_bn_act(out_chs, out_chs, 1, 1, g, signed=act_output_signed(b.act), act=None, w_bits=w2, a_bits=a2)
    layers = [(f"{n}1", m) for n, m in c1] + shuffle + [(f"{n}2", m) for n, m in c2]
    return Block(layers, has_skip=has_residual(b, in_chs, stride))
