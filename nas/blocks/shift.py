"""``shift``: ShiftNet's shift block: pointwise 1x1 to mid = make_divisible(in * e) + BN + act,
grouped shift (k x k offsets, stride s, no parameters; `sf` < 1: a sparse shift,
only that fraction of the channels moved, `nas.blocks.common.shift_groups`; `as1`: an active
shift, learned fractional per-channel offsets, bilinear), pointwise 1x1 to c + BN. Residual add
when stride 1 and channels kept. 1-bit: the two 1x1 convs as Bi-Real units, no block residual.
"""

from nas.blocks.common import has_residual, mid_chs

KEYS = ("r", "k", "s", "e", "c", "sf", "as", "p", "cb", "w", "a")  # arch-string keys, in canonical order
# cost op role -> (module name when float, module name of the Bi-Real unit when 1-bit)
MODULE_NAMES = {"conv_pw": ("conv1", "pw1"), "conv_pwl": ("conv2", "pw2")}


def layer_roles(b) -> tuple[str, ...]:
    """The block's bit-carrying convs in execution order (`BlockSpec.block_bits` order)."""
    return ("conv_pw", "conv_pwl")


def expand(net, prefix: str, x: int, b, in_chs: int, stride: int, bits) -> int:
    """`bits`: (w_bits, a_bits) per conv, `layer_roles` order."""
    act = None if b.binary else b.act
    elem = net.elementwise_bits(b)
    pw, pwl = bits
    y = net.unit(f"{prefix}.conv_pw", x, mid_chs(b, in_chs), 1, 1, 1, b, act, bits=pw)
    y = net.shift(f"{prefix}.shift", y, b.kernel, stride, elem, b.shift_frac, bool(b.active_shift))
    y = net.unit(f"{prefix}.conv_pwl", y, b.out_chs, 1, 1, 1, b, None, bits=pwl)
    if has_residual(b, in_chs, stride):
        y = net.add(f"{prefix}.add", x, y, elem)
    return y


def shift_layer(b, chs: int, stride: int):
    """The block's shift: grouped / sparse (`Shift`) or active (`ActiveShift`, learned offsets)."""
    from nas.blocks.layers import ActiveShift, Shift

    if b.active_shift:
        return ActiveShift(chs, b.kernel, stride)
    return Shift(b.kernel, stride, b.shift_frac)


def build(b, in_chs: int, stride: int, bits):
    from nas.blocks.layers import Block, act_output_signed, conv_bn_act, unit

    mid = mid_chs(b, in_chs)
    (w1, a1), (w2, a2) = bits
    if b.binary:
        return Block([("pw1", unit(a1, in_chs, mid, 1)), ("shift", shift_layer(b, mid, stride)),
                      ("pw2", unit(a2, mid, b.out_chs, 1))])
    pw1 = conv_bn_act(in_chs, mid, 1, signed=True, act=b.act, w_bits=w1, a_bits=a1)
    pw2 = conv_bn_act(mid, b.out_chs, 1, signed=act_output_signed(b.act), act=None, w_bits=w2, a_bits=a2)
    layers = [(f"{n}1", m) for n, m in pw1] + [("shift", shift_layer(b, mid, stride))] + [(f"{n}2", m) for n, m in pw2]
    return Block(layers, has_skip=has_residual(b, in_chs, stride))
