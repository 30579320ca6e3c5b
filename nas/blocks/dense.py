"""``dense``: DenseNet block: `repeats` dense layers, each 1x1 to DENSE_BOTTLENECK * growth +
BN + act then k x k (dilation `d`) to growth + BN + act, concatenated onto the features; then a linear 1x1
transition to c + BN, and a 2x2 average pool (ceil mode) when stride 2. No residual add
(concatenation is its shortcut). A dense stage is one block (`repeats` counts its layers).
"""

KEYS = ("r", "k", "s", "gr", "c", "d", "p", "cb", "w", "a")  # arch-string keys, in canonical order
# cost op role -> (module name when float, module name of the Bi-Real unit when 1-bit)
MODULE_NAMES = {"conv1": ("conv1", "unit1"), "conv2": ("conv2", "unit2"), "conv": ("conv", "unit")}
DENSE_BOTTLENECK = 4  # a dense layer's 1x1 widens to 4 * growth (DenseNet-B)
ONE_BLOCK_PER_STAGE = True  # `repeats` counts dense layers, not blocks


def layer_roles(b) -> tuple[str, ...]:
    """The block's bit-carrying convs in execution order (`BlockSpec.block_bits` order)."""
    return tuple(f"layers.{i}.{c}" for i in range(b.repeats) for c in ("conv1", "conv2")) + ("transition.conv",)


def expand(net, prefix: str, x: int, b, in_chs: int, stride: int, bits) -> int:
    """`bits`: (w_bits, a_bits) per conv, `layer_roles` order (2 per dense layer, then the transition)."""
    act = None if b.binary else b.act
    elem = net.elementwise_bits(b)
    features = x
    for i in range(b.repeats):
        h = net.unit(f"{prefix}.layers.{i}.conv1", features, DENSE_BOTTLENECK * b.growth, 1, 1, 1, b, act,
                     bits=bits[2 * i])
        h = net.unit(f"{prefix}.layers.{i}.conv2", h, b.growth, b.kernel, 1, 1, b, act, b.dilation,
                     bits=bits[2 * i + 1])
        features = net.concat(f"{prefix}.layers.{i}.concat", [features, h], elem)
    y = net.unit(f"{prefix}.transition.conv", features, b.out_chs, 1, 1, 1, b, None, bits=bits[-1])  # linear
    if stride == 2:
        y = net.avgpool(f"{prefix}.transition.pool", y, elem, ceil_mode=True)
    return y


def build(b, in_chs: int, stride: int, bits):
    """`b.repeats` dense layers (1x1 to 4*gr, k x k to gr), then a 1x1 transition to c;
    `bits`: (w_bits, a_bits) per conv, `layer_roles` order."""
    from torch import nn

    from nas.blocks.layers import Block, DenseBlock, act_output_signed, conv_bn_act, unit

    gr, wide = b.growth, DENSE_BOTTLENECK * b.growth
    pool = [("pool", nn.AvgPool2d(2, ceil_mode=True))] if stride == 2 else []
    layers, chs = [], in_chs
    for i in range(b.repeats):
        (w1, a1), (w2, a2) = bits[2 * i], bits[2 * i + 1]
        if b.binary:
            layers.append(Block([("unit1", unit(a1, chs, wide, 1)), ("unit2", unit(a2, wide, gr, b.kernel))]))
        else:
            c1 = conv_bn_act(chs, wide, 1, signed=True, act=b.act, w_bits=w1, a_bits=a1)
            c2 = conv_bn_act(wide, gr, b.kernel, signed=act_output_signed(b.act), act=b.act, dilation=b.dilation,
                             w_bits=w2, a_bits=a2)
            layers.append(Block([(f"{n}1", m) for n, m in c1] + [(f"{n}2", m) for n, m in c2]))
        chs += gr
    w, a = bits[-1]
    if b.binary:
        transition = Block([("unit", unit(a, chs, b.out_chs, 1))] + pool)
    else:
        transition = Block(conv_bn_act(chs, b.out_chs, 1, signed=True, act=None, w_bits=w, a_bits=a) + pool)  # linear
    return DenseBlock(layers, transition)
