"""Analytic cost model: closed forms per block kind, the seed's worked examples, the weight
payload layout by hand, peak activation memory by hand, NetScore / Information Density."""

import json
import math
from pathlib import Path

import pytest

from nas.cost import GraphBuilder, arch_cost, graph_cost, information_density, netscore
from nas.cost import layout
from nas.cost.graph import make_divisible, tensor_bytes
from nas.space import decode
from nas.space.spec import SHORTCUT_BITS, ArchSpec, BlockSpec, ConvSpec, FcSpec


def net(block: BlockSpec, res=8, in_chs=1, stem=16, stem_bits=(8, 8), head=0, fc_bits=(8, 8)) -> ArchSpec:
    return ArchSpec(resolution=res, in_chs=in_chs,
                    stem=ConvSpec(out_chs=stem, kernel=3, w_bits=stem_bits[0], a_bits=stem_bits[1]),
                    blocks=(block,), head=ConvSpec(out_chs=head, kernel=1),
                    fc=FcSpec(num_classes=10, w_bits=fc_bits[0], a_bits=fc_bits[1]))


def layers(cost, prefix="blocks."):
    return {layer.name: layer for layer in cost.layers if layer.name.startswith(prefix)}


# --- closed forms per block kind -------------------------------------------------------

@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_separable_closed_form(stride):
    c_in, c_out, k, h = 16, 24, 3, 8
    cost = arch_cost(net(BlockSpec(kind="ir", out_chs=c_out, kernel=k, stride=stride), res=h, stem=c_in))
    ho = math.ceil(h / stride)
    dw, pw = layers(cost)["blocks.0.0.conv_dw"], layers(cost)["blocks.0.0.conv_pw"]
    assert dw.groups == c_in and dw.macs == k * k * c_in * ho * ho  # depthwise: one k x k filter per channel
    assert dw.params == k * k * c_in + 2 * c_in  # weights + BN affine (a_bits=32: no PACT clip)
    assert pw.macs == c_in * c_out * ho * ho
    assert pw.params == c_in * c_out + 2 * c_out


def test_inverted_residual_with_se_closed_form():
    c, e, k, h, se = 16, 6, 5, 8, 0.25
    mid, rd = c * e, round(c * se)
    cost = arch_cost(net(BlockSpec(kind="ir", out_chs=c, kernel=k, expand=e, se=se), res=h, stem=c))
    ls = layers(cost)
    assert ls["blocks.0.0.conv_pw"].macs == c * mid * h * h
    assert ls["blocks.0.0.conv_dw"].macs == k * k * mid * h * h
    assert ls["blocks.0.0.se.conv_reduce"].macs == mid * rd and ls["blocks.0.0.se.conv_reduce"].params == mid * rd + rd
    assert ls["blocks.0.0.se.conv_expand"].macs == rd * mid and ls["blocks.0.0.se.conv_expand"].params == rd * mid + mid
    assert ls["blocks.0.0.conv_pwl"].macs == mid * c * h * h
    assert ls["blocks.0.0.add"].macs == 0 and ls["blocks.0.0.se.mul"].macs == 0
    block_params = sum(layer.params for layer in ls.values())
    assert block_params == (c * mid + 2 * mid) + (k * k * mid + 2 * mid) + (mid * rd + rd + rd * mid + mid) + (mid * c + 2 * c)


@pytest.mark.parametrize("stride", [1, 2])
def test_grouped_closed_form(stride):
    c_in, c_out, g, k, h = 16, 32, 4, 3, 8
    cost = arch_cost(net(BlockSpec(kind="grouped", out_chs=c_out, kernel=k, stride=stride, groups=g), res=h, stem=c_in))
    ls, ho = layers(cost), math.ceil(h / stride)
    assert ls["blocks.0.0.conv_g"].macs == k * k * (c_in // g) * c_out * ho * ho
    assert ls["blocks.0.0.conv_g"].params == k * k * (c_in // g) * c_out + 2 * c_out
    assert ls["blocks.0.0.shuffle"].macs == 0 and ls["blocks.0.0.shuffle"].params == 0
    assert ls["blocks.0.0.conv_g1"].macs == (c_out // g) * c_out * ho * ho


@pytest.mark.parametrize("stride", [1, 2])
def test_shift_closed_form(stride):
    c_in, c_out, e, h = 16, 16, 3, 8
    mid = make_divisible(c_in * e)
    cost = arch_cost(net(BlockSpec(kind="shift", out_chs=c_out, kernel=3, stride=stride, expand=e), res=h, stem=c_in))
    ls, ho = layers(cost), math.ceil(h / stride)
    assert ls["blocks.0.0.shift"].macs == 0 and ls["blocks.0.0.shift"].params == 0  # shift: no MACs, no weights
    assert ls["blocks.0.0.shift"].out_shape == (mid, ho, ho)
    assert sum(layer.macs for layer in ls.values()) == c_in * mid * h * h + mid * c_out * ho * ho
    assert ("blocks.0.0.add" in ls) == (stride == 1)  # residual only at stride 1, same channels


@pytest.mark.parametrize("stride", [1, 2])
def test_dense_closed_form(stride):
    c_in, gr, r, c_out, k, h = 16, 8, 3, 24, 3, 8
    cost = arch_cost(net(BlockSpec(kind="dense", out_chs=c_out, repeats=r, kernel=k, stride=stride, growth=gr),
                         res=h, stem=c_in))
    ls = layers(cost)
    expected, chs = 0, c_in
    for i in range(r):
        assert ls[f"blocks.0.0.layers.{i}.conv1"].macs == chs * 4 * gr * h * h
        assert ls[f"blocks.0.0.layers.{i}.conv2"].macs == k * k * 4 * gr * gr * h * h
        expected += chs * 4 * gr * h * h + k * k * 4 * gr * gr * h * h
        chs += gr
        assert ls[f"blocks.0.0.layers.{i}.concat"].out_shape == (chs, h, h)
    assert ls["blocks.0.0.transition.conv"].macs == chs * c_out * h * h
    expected += chs * c_out * h * h
    assert sum(layer.macs for layer in ls.values()) == expected
    assert cost.layers[-3].out_shape == (c_out, math.ceil(h / stride), math.ceil(h / stride))  # pool (ceil) or not


def test_binary_unit_structure_and_counts():
    """w1a1: every conv is a Bi-Real unit: shortcut first (pool when strided, then 1x1 conv at
    SHORTCUT_BITS + BN when channels change), sign, binary conv + BN, add. No PACT clip at
    1 bit, no block-level residual, no activation function."""
    c_in, c_out, h = 16, 32, 8
    cost = arch_cost(net(BlockSpec(kind="grouped", out_chs=c_out, kernel=3, stride=2, groups=2, w_bits=1, a_bits=1),
                         res=h, stem=c_in))
    ls = layers(cost)
    names = [n for n in ls if n.startswith("blocks.0.0.conv_g.") or n == "blocks.0.0.conv_g"]
    assert names == ["blocks.0.0.conv_g.shortcut.pool", "blocks.0.0.conv_g.shortcut.conv",
                     "blocks.0.0.conv_g.sign", "blocks.0.0.conv_g", "blocks.0.0.conv_g.add"]
    conv, sc = ls["blocks.0.0.conv_g"], ls["blocks.0.0.conv_g.shortcut.conv"]
    assert conv.params == 9 * (c_in // 2) * c_out + 2 * c_out  # scale is computed, not a parameter
    assert conv.w_bits == 1 and conv.a_bits == 1 and conv.bops == conv.macs
    assert sc.w_bits == SHORTCUT_BITS and sc.a_bits == 32 and sc.in_shapes == ((c_in, 4, 4),)  # pool first
    assert sc.params == c_in * c_out + 2 * c_out and sc.macs == c_in * c_out * 4 * 4
    assert ls["blocks.0.0.conv_g.sign"].out_bits == 1 and ls["blocks.0.0.conv_g.sign"].macs == 0
    # the second unit keeps the channel count: identity shortcut, no shortcut conv
    assert "blocks.0.0.conv_g1.shortcut.conv" not in ls and "blocks.0.0.conv_g1.add" in ls
    assert all(layer.act is None for layer in ls.values())


def test_pact_clip_is_a_parameter_only_for_2_to_8_bits():
    for a_bits, clip in ((2, 1), (4, 1), (8, 1), (16, 0), (32, 0)):
        cost = arch_cost(net(BlockSpec(kind="ir", out_chs=16, w_bits=a_bits, a_bits=a_bits), stem=16))
        dw = layers(cost)["blocks.0.0.conv_dw"]
        assert dw.params == 9 * 16 + 2 * 16 + clip
        assert dw.weight_bytes == layout.layer_bytes(a_bits, 16, 1, 3, 3) + 4 * clip


def test_make_divisible_matches_timm():
    from timm.layers import make_divisible as timm_make_divisible

    for v in [1, 3.5, 7, 8, 12, 16 * 2.3, 16 * 4.5, 24 * 3.67, 80 * 2.5, 100, 134.4, 0.25 * 16, 1280 * 1.1]:
        for divisor in (1, 4, 8, 16):
            assert make_divisible(v, divisor) == timm_make_divisible(v, divisor), (v, divisor)


# --- the seed survey's worked examples (000, ch. 3 and ch. 4) ---------------------------

def test_seed_table_3_4_standard_vs_depthwise_separable():
    """Table 3-4: a 3x3 conv on 8x8x3 -> 256 is 442,368 MACs; depthwise 1,728 + pointwise
    49,152 = 50,880."""
    standard = arch_cost(ArchSpec(resolution=8, in_chs=3, stem=ConvSpec(out_chs=256, kernel=3),
                                  blocks=(BlockSpec(kind="ir", out_chs=256),), head=ConvSpec(out_chs=0),
                                  fc=FcSpec(num_classes=10)))
    assert standard.layers[0].name == "stem" and standard.layers[0].macs == 442_368
    separable = arch_cost(ArchSpec(resolution=8, in_chs=3, stem=ConvSpec(out_chs=3, kernel=1),
                                   blocks=(BlockSpec(kind="ir", out_chs=256, kernel=3),), head=ConvSpec(out_chs=0),
                                   fc=FcSpec(num_classes=10)))
    ls = layers(separable)
    assert ls["blocks.0.0.conv_dw"].macs == 1_728
    assert ls["blocks.0.0.conv_pw"].macs == 49_152
    assert ls["blocks.0.0.conv_dw"].macs + ls["blocks.0.0.conv_pw"].macs == 50_880


def test_seed_table_3_3_bottleneck():
    """Table 3-3 at 28x28: two 3x3 convs on 64 channels vs a 256-64-64-256 bottleneck.

    Its formulas give (28*28*64)*(3*3*64)*2 = 57,802,752 ("57M") and
    (28*28*256)*64 + (28*28*64)*(3*3*64) + (28*28*64)*256 = 12.8M + 28.9M + 12.8M = 54,591,488.
    The seed prints the terms as 14M + 25M + 12M = "51M": its own formulas do not give those
    terms, so we assert the formulas (and that the bottleneck is the cheaper one)."""
    b = GraphBuilder()
    x = b.tensor((64, 28, 28))
    y = b.conv("a", x, 64, 3, w_bits=32, a_bits=32, act="relu")
    b.conv("b", y, 64, 3, w_bits=32, a_bits=32, act="relu")
    all_3x3 = graph_cost(b.graph(x))
    b = GraphBuilder()
    x = b.tensor((256, 28, 28))
    y = b.conv("reduce", x, 64, 1, w_bits=32, a_bits=32, act="relu")
    y = b.conv("3x3", y, 64, 3, w_bits=32, a_bits=32, act="relu")
    b.conv("expand", y, 256, 1, w_bits=32, a_bits=32, act=None)
    bottleneck = graph_cost(b.graph(x))
    assert all_3x3.macs == (28 * 28 * 64) * (3 * 3 * 64) * 2 == 57_802_752
    assert [layer.macs for layer in bottleneck.layers] == [12_845_056, 28_901_376, 12_845_056]
    assert bottleneck.macs == 54_591_488 < all_3x3.macs


@pytest.mark.parametrize("g", [1, 2, 4, 8])
def test_seed_1x1_memory_access_formula(g):
    """Ch. 4 sec. 2 (ShuffleNet V2 guideline): a 1x1 conv with g groups reads and writes
    h*w*(c1 + c2) + c1*c2/g elements."""
    h = w = 14
    c1, c2 = 64, 128
    b = GraphBuilder()
    x = b.tensor((c1, h, w))
    b.conv("pw", x, c2, 1, groups=g, w_bits=8, a_bits=8, act=None)
    layer = graph_cost(b.graph(x)).layers[0]
    assert layer.mem_access == h * w * (c1 + c2) + c1 * c2 // g
    assert layer.macs == h * w * c1 * c2 // g  # B = h*w*c1*c2/g
    # bytes: 8-bit input; the output (unread) is stored at 32 bits; weights = the payload
    assert layer.mem_access_bytes == h * w * c1 + h * w * c2 * 4 + layer.weight_bytes


def test_seed_memory_access_lower_bound_at_equal_channels():
    """Same section: for fixed B = h*w*c1*c2, h*w*(c1+c2) + c1*c2 >= 2*sqrt(h*w*B) + B/(h*w),
    with equality when c1 == c2 (the seed prints the bound with a cube root; the AM-GM bound
    of ShuffleNet V2 is the square root)."""
    h = w = 14

    def mem(c1, c2):
        b = GraphBuilder()
        x = b.tensor((c1, h, w))
        b.conv("pw", x, c2, 1, w_bits=32, a_bits=32, act=None)
        return graph_cost(b.graph(x)).layers[0].mem_access

    macs = h * w * 64 * 64
    bound = 2 * math.sqrt(h * w * macs) + macs / (h * w)
    assert mem(64, 64) == pytest.approx(bound)
    for c1, c2 in ((32, 128), (16, 256), (128, 32)):
        assert h * w * c1 * c2 == macs and mem(c1, c2) > bound


# --- weight payload by hand ------------------------------------------------------------

# A 3x3 conv 16 -> 24 (row = 16*3*3 = 144 codes per output channel).
@pytest.mark.parametrize("bits,expected", [
    (32, 24 * 144 * 4 + 24 * 4),                 # fp32 weights + fp32 bias
    (16, 24 * 144 * 2 + 24 * 4 + 24 * 4),        # fp16 weights + fp32 scale + fp32 bias
    (8, 24 * 144 + 24 * 4 + 24 * 4),             # int8 codes + scale + bias
    (4, 24 * 72 + 24 * 4 + 24 * 4),              # 144 * 4 bits = 72 bytes per row
    (2, 24 * 36 + 24 * 4 + 24 * 4),              # 144 * 2 bits = 36 bytes per row
    (1, 24 * 3 * 3 * 1 * 8 + 24 * 4 + 24 * 4),   # uint64 words (24, 3, 3, ceil(16/64)=1)
])
def test_layer_bytes_by_hand(bits, expected):
    assert layout.layer_bytes(bits, 24, 16, 3, 3) == expected


def test_layer_bytes_row_padding_and_binary_words():
    # 3 input channels, 3x3: 27 codes per row: 2 bits -> 54 bits -> 7 bytes; 4 bits -> 108 -> 14 bytes
    assert layout.weight_payload_bytes(2, 10, 3, 3, 3) == 10 * 7
    assert layout.weight_payload_bytes(4, 10, 3, 3, 3) == 10 * 14
    # 130 input channels at 1 bit: ceil(130/64) = 3 words per kernel position
    assert layout.weight_payload_bytes(1, 5, 130, 3, 3) == 5 * 3 * 3 * 3 * 8
    # depthwise binary: one word per kernel position, 1 bit used
    assert layout.weight_payload_bytes(1, 32, 1, 3, 3) == 32 * 9 * 8
    with pytest.raises(ValueError, match="no payload layout"):
        layout.layer_bytes(3 * 11, 4, 4)


def test_network_weight_bytes_by_hand():
    """in 8x8x1, stem 3x3 1->8 w8a8, ir e1 8->8 w4a4, fc 8->10 w8a8."""
    arch = decode("in_r8_c1-stem_c8_k3_s1_w8_a8-ir_r1_k3_s1_e1_c8_w4_a4-head_c0-fc_n10_w8_a8")
    stem = 8 * 9 + 8 * 4 + 8 * 4 + 4                  # 9 codes/row at 8 bit, scale, bias, clip
    dw = 8 * math.ceil(9 * 4 / 8) + 8 * 4 + 8 * 4 + 4    # depthwise: 9 codes/row at 4 bit = 5 bytes
    pw = 8 * math.ceil(8 * 4 / 8) + 8 * 4 + 8 * 4 + 4    # 8 codes/row at 4 bit = 4 bytes
    fc = 10 * 8 + 10 * 4 + 10 * 4 + 4
    assert arch_cost(arch).weight_bytes == stem + dw + pw + fc


# --- peak activation memory by hand ------------------------------------------------------

def test_peak_act_bytes_by_hand():
    """in 8x8x1 (stem a8: 64 B), stem -> 8x8x8 at 8 bit (512 B, read by conv_dw and the add),
    conv_dw -> 512 B, conv_pw -> 512 B, add -> 512 B, pool -> 8 B, fc -> 10 fp32 logits.
    Live: stem 64+512 | dw 512+512 | pw 512+512+512 = 1536 (peak) | add 512+512+512 | ..."""
    cost = arch_cost(decode("in_r8_c1-stem_c8_k3_s1_w8_a8-ir_r1_k3_s1_e1_c8_w8_a8-head_c0-fc_n10_w8_a8"))
    assert cost.peak_act_bytes == 1536 and cost.peak_act_at == "blocks.0.0.conv_pw"


def test_peak_act_bytes_binary_packing():
    """w1a1: the real-valued stream is 32-bit, sign-and-pack writes H*W*ceil(C/64)*8 bytes.
    Stem -> x 8x8x64 fp32 = 16384 B (read by the dw unit's sign and identity shortcut);
    sign -> 8*8 pixels x 1 word = 512 B. Live:
    stem 64 + 16384 | dw.sign x + 512 | dw x + 512 + 16384 | dw.add x + y + u = 49152 (peak)
    | pw.sign u + 512 | pw u + 512 + 16384 | pw.add u + v + 4096 (8-bit, read by the pool) | ..."""
    cost = arch_cost(decode("in_r8_c1-stem_c64_k3_s1_w8_a8-ir_r1_k3_s1_e1_c64_w1_a1-head_c0-fc_n10_w8_a8"))
    sign = next(layer for layer in cost.layers if layer.op == "sign")
    assert sign.out_bits == 1 and tensor_bytes(sign.out_shape, 1) == 8 * 8 * 1 * 8
    dw = next(layer for layer in cost.layers if layer.name == "blocks.0.0.conv_dw")
    assert dw.a_bits == 1 and dw.mem_access_bytes == 512 + 8 * 8 * 64 * 4 + dw.weight_bytes
    assert cost.peak_act_bytes == 3 * 16384 and cost.peak_act_at == "blocks.0.0.conv_dw.add"
    assert tensor_bytes((100, 2, 2), 1) == 2 * 2 * 2 * 8 and tensor_bytes((10, 2, 2), 4) == 2 * 2 * 5


# --- totals, bops, serialisation ---------------------------------------------------------

def test_totals_are_sums_and_to_dict_is_json():
    cost = arch_cost(decode("in_r28_c1-stem_c16_k3_s1_w8_a8-ir_r1_k3_s1_e1_c16_w8_a8-shift_r2_k3_s2_e3_c32_w4_a4"
                            "-grouped_r2_k3_s1_g4_c64_w8_a8-dense_r3_k3_s2_gr12_c64_w1_a1-head_c128_w8_a8-fc_n10_w8_a8"))
    for name in ("params", "macs", "weight_bytes", "mem_access", "mem_access_bytes", "bops"):
        assert getattr(cost, name) == sum(getattr(layer, name) for layer in cost.layers)
    assert all(layer.bops == layer.macs * layer.w_bits * layer.a_bits for layer in cost.layers)
    d = json.loads(json.dumps(cost.to_dict()))
    assert {"params", "macs", "weight_bytes", "peak_act_bytes", "mem_access", "mem_access_bytes", "bops",
            "layers"} <= set(d)
    assert set(d["layers"][0]) >= {"name", "op", "in_shapes", "out_shape", "w_bits", "a_bits", "params", "macs",
                                   "weight_bytes", "mem_access", "mem_access_bytes"}


# --- seed metrics ------------------------------------------------------------------------

def test_information_density_and_netscore():
    # MobileNetV2: 71.8 % top-1, 3.47 M params, 300 M MACs
    assert information_density(0.718, 3_470_000) == pytest.approx(71.8 / 3.47)
    assert netscore(0.718, 3_470_000, 300_000_000) == pytest.approx(20 * math.log10(71.8**2 / math.sqrt(3.47 * 300)))
    assert netscore(0.718, 3_470_000, 300_000_000) == pytest.approx(44.07, abs=0.01)
    # fewer MACs and params at equal accuracy score higher; accuracy 0 scores -inf
    assert netscore(0.7, 1e6, 1e8) > netscore(0.7, 2e6, 2e8)
    assert netscore(0.0, 1e6, 1e8) == -math.inf
    with pytest.raises(ValueError, match="fraction"):
        netscore(71.8, 3.47e6, 3e8)
    with pytest.raises(ValueError, match="positive"):
        information_density(0.5, 0)


@pytest.mark.parametrize("path", ["search_spaces/default.yaml", "search_spaces/mcu.yaml", "search_spaces/binary.yaml"])
def test_space_extremes_bound_every_sampled_member(path):
    """`nas space show` and the search's budget check use these; compound scaling must be
    swept jointly (phi alone changes nothing while alpha = beta = 1)."""
    from nas.cost.extremes import extreme
    from nas.space import load_space
    from nas.space.sample import random_archs

    repo = Path(__file__).resolve().parents[1]
    space = load_space(str(repo / path))
    sampled = [arch_cost(a) for a in random_archs(space, 150, seed=5)]
    for field in ("weight_bytes", "macs"):
        values = [getattr(c, field) for c in sampled]
        low, high = extreme(space, field), extreme(space, field, largest=True)
        assert low.value <= min(values) and high.value >= max(values), (field, low.value, high.value, max(values))
        assert getattr(arch_cost(low.arch), field) == low.value and getattr(arch_cost(high.arch), field) == high.value
