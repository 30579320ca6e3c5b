"""Dilated convs (arch-string key `d`, survey 000 ch. 3 sec. 2-2) as an option of the ir /
grouped / dense kinds: closed-form costs, the arch string, the built modules, the space file,
and the refusal of 1-bit dilated blocks (no packed dilated kernel)."""

import pytest
import torch

from nas.blocks import build_model
from nas.cost import arch_cost
from nas.cost.kernel_path import on_packed_kernels
from nas.errors import UsageError
from nas.space import decode, encode, load_space, random_archs
from nas.space.sample import space_size

END = "head_c0_w8_a8-fc_n10_w8_a8"


def _arch(block: str, res: int = 16):
    return decode(f"in_r{res}_c3-stem_c16_k3_s1_w8_a8-{block}-{END}")


def test_dilation_key_round_trips_and_is_omitted_when_one():
    s = f"in_r16_c3-stem_c16_k3_s1_w8_a8-ir_r1_k3_s1_e6_c24_d2_w8_a8-grouped_r1_k3_s1_g4_c24_d3_w8_a8" \
        f"-dense_r1_k3_s2_gr8_c32_d2_w4_a4-{END}"
    arch = decode(s)
    assert [b.dilation for b in arch.blocks] == [2, 3, 2]
    assert encode(arch) == s
    # d1 is the default: written nowhere, so every earlier arch string is unchanged
    plain = decode(s.replace("_d2", "_d1").replace("_d3", "_d1"))
    assert [b.dilation for b in plain.blocks] == [1, 1, 1]
    assert "_d" not in encode(plain)


@pytest.mark.parametrize("block, needle", [
    ("shift_r1_k3_s1_e2_c24_d2_w8_a8", "unknown key 'd2' in a 'shift' segment"),
    ("ir_r1_k3_s1_e2_c24_d2_w1_a1", "dilation=2 is not allowed in a 1-bit (Bi-Real) block"),
    ("ir_r1_k3_s1_e2_c24_d0_w8_a8", "dilation=0 is not allowed"),
])
def test_dilation_refusals_are_one_line(block, needle):
    with pytest.raises(UsageError) as e:
        _arch(block)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_packed_kernel_predicate_says_no_to_dilation():
    assert on_packed_kernels(1, 1, 1, True, 1)
    assert not on_packed_kernels(1, 1, 1, True, 2)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_dilation_closed_form(d, stride):
    """ir e1 k3 on a 16-ch 16x16 map: macs / params do not move with d, the output shape is
    ceil(16 / s) (padding d * (k - 1) / 2), and the receptive field grows by (d - 1) * (k - 1)."""
    arch = _arch(f"ir_r1_k3_s{stride}_e1_c24_d{d}_w8_a8")
    plain = _arch(f"ir_r1_k3_s{stride}_e1_c24_w8_a8")
    cost, base = arch_cost(arch), arch_cost(plain)
    dw = next(layer for layer in cost.layers if layer.name == "blocks.0.0.conv_dw")
    h = -(-16 // stride)
    assert dw.out_shape == (16, h, h)
    assert dw.macs == 16 * 3 * 3 * h * h  # depthwise: k*k per output element
    assert (cost.macs, cost.params, cost.weight_bytes) == (base.macs, base.params, base.weight_bytes)
    # stem k3: 3; dw k3 with jump 1: +2d; 1x1 convs add nothing
    assert base.receptive_field == 3 + 2
    assert cost.receptive_field == 3 + 2 * d
    model = build_model(arch).eval()
    conv = model.blocks[0][0].conv_dw
    assert conv.dilation == (d, d) and conv.padding == (d, d)
    assert tuple(model.blocks[0](torch.zeros(1, 16, 16, 16)).shape[1:]) == (24, h, h)


def test_receptive_field_closed_form_over_strides():
    """stem k3 (rf 3, jump 1); grouped k3 s2 d2: +2*2*1 = 7, jump 2; dense k3 d3 (stride 1):
    +3*2*2 = 19; its transition is a 1x1: 19."""
    arch = _arch("grouped_r1_k3_s2_g4_c32_d2_w8_a8-dense_r1_k3_s1_gr8_c32_d3_w8_a8")
    assert arch_cost(arch).receptive_field == 19
    assert arch_cost(arch).to_dict()["receptive_field"] == 19


def test_dilated_space_samples_dilation_but_never_on_binary_blocks():
    space = load_space("search_spaces/dilated.yaml")
    assert space.stages[1].dilation == (1, 2, 3)
    assert space_size(space) > 1
    archs = random_archs(space, 40, seed=0)
    dilations = {b.dilation for a in archs for b in a.blocks}
    assert dilations >= {1, 2}
    for a in archs:
        assert decode(encode(a)) == a
        assert all(b.dilation == 1 for b in a.blocks if b.binary or b.kind == "shift")


def test_dilated_and_sparse_shift_archs_export_with_exact_payload():
    """The payload of dilated convs (and of a sparse shift) is the cost model's weight_bytes, and
    the packed model read back from it predicts what the fake-quant model does."""
    from nas.export.bundle import payload_of
    from nas.export.deploy import packed_model

    s = "in_r16_c3-stem_c16_k3_s1_w8_a8-ir_r2_k3_s2_e3_c24_d2_w8_a8-grouped_r1_k3_s1_g4_c24_d3_w4_a4" \
        "-dense_r1_k3_s2_gr8_c32_d2_w8_a8-shift_r1_k3_s1_e2_c32_sf0.25_w8_a8-head_c0_w8_a8-fc_n10_w8_a8"
    torch.manual_seed(0)
    model = build_model(decode(s))
    with torch.no_grad():
        model.train()(torch.randn(8, 3, 16, 16))  # move the BN statistics off their defaults
    model.eval()
    payload, _ = payload_of(model)
    assert len(payload) == arch_cost(model.arch).weight_bytes
    packed = packed_model(decode(s), payload).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x).argmax(1), packed(x).argmax(1))
