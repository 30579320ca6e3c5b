"""The builder over every block kind x bit width x stride, on real Fashion-MNIST images."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nas.blocks import ChannelShuffle, QuantNet, Shift, build_model
from nas.errors import UsageError
from nas.quant import BinaryConv2d, QuantConv2d, QuantLinear
from nas.space import decode, load_space, random_archs

# one segment per block kind and variant; {s} stride, {q} bits, {x} extras not allowed in 1-bit blocks
BLOCKS = {
    "ir_e1": "ir_r2_k3_s{s}_e1_c16{q}",
    "ir_e3_se_hs": "ir_r2_k5_s{s}_e3_c16{x}{q}_hs",
    "shift": "shift_r2_k3_s{s}_e2_c16{q}",
    "grouped": "grouped_r2_k3_s{s}_g4_c16{q}",
    "dense": "dense_r2_k3_s{s}_gr8_c16{q}",
}
BIT_WIDTHS = (1, 2, 4, 8, 16, 32)


def arch_string(block: str, bits: int, stride: int) -> str:
    seg = BLOCKS[block].format(s=stride, q=f"_w{bits}_a{bits}", x="" if bits == 1 else "_se0.25")
    return f"in_r28_c1-stem_c8_k3_s1_w8_a8-{seg}-head_c32_w8_a8-fc_n10_w8_a8"


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bits", BIT_WIDTHS)
@pytest.mark.parametrize("block", list(BLOCKS))
def test_block_kind_bits_stride_trains_a_step(block, bits, stride, fashion_batch):
    torch.manual_seed(0)
    x, y = fashion_batch
    model = build_model(decode(arch_string(block, bits, stride)))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    logits = model(x)
    assert logits.shape == (8, 10)
    assert torch.isfinite(logits).all()
    loss = F.cross_entropy(logits, y)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} has no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert torch.isfinite(model(x)).all()
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()

    layers = model.quant_layers()
    blocks = [q for q in layers if q.name.startswith("blocks.")]
    if bits == 1:  # Bi-Real: every block conv is binary with ±1 inputs, shortcut convs at 8 bits, no act
        binary = [q for q in blocks if isinstance(q.module, BinaryConv2d)]
        assert binary and all((q.w_bits, q.a_bits) == (1, 1) for q in binary)
        others = [q for q in blocks if q not in binary]
        assert all(".shortcut." in q.name and (q.w_bits, q.a_bits) == (8, 32) for q in others)
        assert not any(isinstance(m, (nn.ReLU, nn.Hardswish)) for m in model.blocks.modules())
    else:
        for q in blocks:
            se = ".se." in q.name
            assert (q.w_bits, q.a_bits) == (bits, 32 if se else bits), q.name
    ends = {q.name: (q.w_bits, q.a_bits) for q in layers if not q.name.startswith("blocks.")}
    assert ends == {"stem.conv": (8, 8), "head.conv": (8, 8), "fc": (8, 8)}


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("segment, expected", [
    # binary ir e1, 8 -> 16, stride 1: dw unit 8*9 + BN 16; pw unit 8*16 + BN 32 + shortcut 1x1 8*16 + BN 32
    ("ir_r1_k3_s1_e1_c16_w1_a1", 8 * 9 + 16 + 8 * 16 + 32 + 8 * 16 + 32),
    # grouped 4-bit, g=4, 8 -> 16: conv1 8/4*16*9 + BN 32 + clip; conv2 16/4*16 + BN 32 + clip
    ("grouped_r1_k3_s2_g4_c16_w4_a4", 2 * 16 * 9 + 32 + 1 + 4 * 16 + 32 + 1),
    # ir e3 with SE 0.25, 8-bit: mid = 24; pw 8*24 + BN 48 + clip; dw 24*9 + 48 + clip;
    # SE 24 -> round(8*0.25) = 2 -> 24 with biases (no clips); pwl 24*16 + 32 + clip
    ("ir_r1_k3_s1_e3_c16_se0.25_w8_a8", 8 * 24 + 48 + 1 + 24 * 9 + 48 + 1 + (24 * 2 + 2 + 2 * 24 + 24)
     + 24 * 16 + 32 + 1),
    # shift 32-bit, e2: mid = 16; pw1 8*16 + 32; shift nothing; pw2 16*16 + 32
    ("shift_r1_k3_s1_e2_c16", 8 * 16 + 32 + 16 * 16 + 32),
    # dense 16-bit, 2 layers, gr 4: (8 -> 16 1x1, 16 -> 4 3x3) (12 -> 16, 16 -> 4) transition 16 -> 16
    ("dense_r2_k3_s2_gr4_c16_w16_a16", (8 * 16 + 32 + 16 * 4 * 9 + 8) + (12 * 16 + 32 + 16 * 4 * 9 + 8)
     + 16 * 16 + 32),
])
def test_block_parameter_counts_follow_the_spec(segment, expected):
    model = build_model(decode(f"in_r28_c1-stem_c8_k3_s1-{segment}-head_c0-fc_n10"))
    assert _params(model.blocks) == expected


def test_model_ends_follow_the_spec():
    model = build_model(decode("in_r28_c3-stem_c16_k3_s2_w8_a8-ir_r1_k3_s1_e1_c16-head_c64_w8_a8_hs-fc_n10_w8_a4"))
    assert _params(model.stem) == 3 * 16 * 9 + 32 + 1  # conv (no bias) + BN + the image's PACT clip
    assert _params(model.head) == 16 * 64 + 128 + 1
    assert _params(model.fc) == 64 * 10 + 10 + 1  # classifier with bias, input clip
    assert model.fc.act_quant.signed  # hard-swish head: the classifier's input may be negative
    assert model(torch.zeros(2, 3, 28, 28)).shape == (2, 10)
    with pytest.raises(UsageError, match=r"expected \(N, 3, 28, 28\)"):
        model(torch.zeros(2, 3, 32, 32))
    with pytest.raises(UsageError, match="expected an ArchSpec"):
        build_model("in_r28_c3-stem_c16-ir_c16-head_c0-fc_n10")


def test_quant_layers_are_listed_in_execution_order(fashion_batch):
    model = build_model(decode(
        "in_r28_c1-stem_c8_k3_s1_w8_a8-ir_r1_k3_s2_e3_c16_se0.25_w4_a4-dense_r2_k3_s2_gr8_c24_w1_a1"
        "-grouped_r1_k3_s1_g4_c24_w2_a2-shift_r1_k3_s1_e2_c32_w8_a8-head_c0-fc_n10_w8_a8"))
    called = []
    for name, m in model.named_modules():
        if isinstance(m, (QuantConv2d, QuantLinear)):
            m.register_forward_pre_hook(lambda mod, args, name=name: called.append(name))
    model(fashion_batch[0])
    assert [q.name for q in model.quant_layers()] == called


def test_shift_moves_each_group_by_its_offset():
    shift = Shift(3, 1)
    assert _params(shift) == 0
    x = torch.zeros(1, 9, 5, 5)
    x[:, :, 2, 2] = 1.0  # a dot in the centre of every channel
    y = shift(x)
    for i in range(9):
        dy, dx = i // 3 - 1, i % 3 - 1
        # out[y, x] = in[y + dy, x + dx]: the dot lands at (2 - dy, 2 - dx)
        assert y[0, i].nonzero().tolist() == [[2 - dy, 2 - dx]]
    x = torch.arange(2 * 10 * 7 * 7, dtype=torch.float32).reshape(2, 10, 7, 7)  # 10 channels -> group 0 has 2
    y = Shift(3, 2)(x)
    assert y.shape == (2, 10, 4, 4)
    xp = F.pad(x, (1, 1, 1, 1))
    # channels 0-1 are group 0, offset (-1, -1): out[j, i] = in[2j - 1, 2i - 1]
    assert torch.equal(y[:, 0:2], xp[:, 0:2, 0:7:2, 0:7:2])
    # channel 4 is group 3, offset (0, -1): out[j, i] = in[2j, 2i - 1], zero at i = 0
    assert torch.equal(y[:, 4], xp[:, 4, 1:8:2, 0:7:2]) and (y[:, 4, :, 0] == 0).all()
    assert torch.equal(y[:, 5], x[:, 5, ::2, ::2])  # channel 5 is group 4, the centre: not moved


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6, dtype=torch.float32).reshape(1, 6, 1, 1)
    assert ChannelShuffle(2)(x).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert ChannelShuffle(3)(x).flatten().tolist() == [0, 2, 4, 1, 3, 5]


@pytest.mark.parametrize("space", ["default", "mcu", "binary"])
def test_sampled_archs_build_and_run(space, fashion_batch):
    x = fashion_batch[0]
    for arch in random_archs(load_space(f"search_spaces/{space}.yaml"), 5, seed=0):
        model = build_model(arch)
        assert isinstance(model, QuantNet) and model.arch == arch
        xr = x if arch.resolution == 28 else F.interpolate(x, size=arch.resolution, mode="bilinear",
                                                           align_corners=False)
        with torch.no_grad():
            out = model.eval()(xr)
        assert out.shape == (8, arch.fc.num_classes) and torch.isfinite(out).all()
