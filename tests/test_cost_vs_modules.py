"""The module counter (`nas.count`) on closed forms, and the analytic cost model (`nas.cost`,
specs only) against the counter on the built module (`nas.blocks.build_model`): params and
macs equal on every block kind x stride x bit width."""

import pytest
import torch
from torch import nn

from nas.blocks.model import build_model
from nas.cost import arch_cost, layout
from nas.count import count_modules, format_counts
from nas.space import decode

# --- the counter on closed forms ---------------------------------------------------------


def test_counter_closed_forms_dense_grouped_depthwise_linear():
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),            # dense:     3*3*3*16 * 8*8
        nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=4),    # grouped:   3*3*4*32 * 4*4
        nn.Conv2d(32, 32, 5, padding=2, groups=32, bias=False),  # depthwise: 5*5*32 * 4*4
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(32, 10),                                      # linear:    32*10
    )
    c = count_modules(model, (3, 8, 8))
    assert c.macs == 3 * 3 * 3 * 16 * 64 + 3 * 3 * 4 * 32 * 16 + 5 * 5 * 32 * 16 + 32 * 10
    assert c.params == sum(p.numel() for p in model.parameters())
    assert c.complete and "total" in format_counts(c)


def test_counter_reports_unknown_modules_and_functional_compute():
    class Mystery(nn.Module):  # a leaf with parameters the table does not know
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(8, 8))

        def forward(self, x):
            return x @ self.w  # a matmul no handler sees

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), Mystery())
    c = count_modules(model, (4, 1, 1))
    assert any("Mystery" in u and "64 parameters" in u for u in c.unknown)
    assert c.unattributed_macs == 8 * 8 and c.macs == 4 * 8 and not c.complete
    assert c.params == 4 * 8 + 8 + 64  # every parameter is in the total, handled or not


def test_counter_reports_attention_compute():
    class Attention(nn.Module):  # "attention" is no known word: reported, and its matmuls too
        def forward(self, x):  # (N, 1, L, E) -> scaled dot-product attention of x with itself
            return nn.functional.scaled_dot_product_attention(x, x, x)

    c = count_modules(nn.Sequential(Attention()), (1, 10, 4))
    assert c.unattributed_macs == 10 * 10 * (4 + 4)  # q @ k^T and attn @ v
    assert any("Attention" in u for u in c.unknown)


def test_counter_restores_training_mode():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    model.train()
    count_modules(model, (1, 4, 4))
    assert model.training


# --- analytic == counter on the built module ---------------------------------------------

BLOCKS = {  # kind -> block segment (c64 from a 32-channel stem: the first repeat changes channels)
    "ir_e1": "ir_r2_k3_s{s}_e1_c64",
    "ir_e3": "ir_r2_k3_s{s}_e3_c64",
    "ir_e3_se": "ir_r2_k5_s{s}_e3_c64_se0.25",
    "shift": "shift_r2_k3_s{s}_e2_c64",
    "grouped": "grouped_r2_k3_s{s}_g4_c64",
    "dense": "dense_r2_k3_s{s}_gr16_c64",
}
BITS = (1, 2, 4, 8, 16, 32)


def _arch(kind: str, stride: int, bits: int) -> str:
    block = BLOCKS[kind].format(s=stride)
    if kind == "ir_e3_se" and bits == 1:
        block = BLOCKS["ir_e3"].format(s=stride)  # SE is not allowed in binary blocks
    return (f"in_r16_c3-stem_c32_k3_s1_w8_a8-{block}_w{bits}_a{bits}-head_c48_w8_a8-fc_n10_w8_a8")


def module_layers(model, arch):
    """Every conv / linear the built model runs: (kind, in C, out (C, H, W), k, stride, groups,
    w_bits, a_bits, payload bytes by `nas.cost.layout`), from forward hooks."""
    rows, hooks = [], []

    def hook(m, inputs, output):
        kind = "linear" if isinstance(m, nn.Linear) else "conv"
        k = 1 if kind == "linear" else m.kernel_size[0]
        out = tuple(output.shape[1:]) if kind == "conv" else (m.out_features, 1, 1)
        groups = 1 if kind == "linear" else m.groups
        c_in = m.in_features if kind == "linear" else m.in_channels
        stride = 1 if kind == "linear" else m.stride[0]
        clip = m.act_quant.clip is not None
        payload = layout.layer_bytes(m.w_bits, out[0], c_in // groups, k, k) + (layout.CLIP_BYTES if clip else 0)
        rows.append((kind, c_in, out, k, stride, groups, m.w_bits, m.a_bits, payload))

    for m in model.modules():
        if hasattr(m, "w_bits") and isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(hook))
    with torch.enable_grad():  # the differentiable path runs every conv's forward
        model.eval()(torch.zeros(1, arch.in_chs, arch.resolution, arch.resolution))
    for h in hooks:
        h.remove()
    return sorted(rows)


def analytic_layers(cost):
    return sorted((layer.op, layer.in_shapes[0][0], layer.out_shape, layer.kernel, layer.stride, layer.groups,
                   layer.w_bits, layer.a_bits, layer.weight_bytes) for layer in cost.layers
                  if layer.op in ("conv", "linear"))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kind", list(BLOCKS))
def test_analytic_equals_module_counter(kind, stride, bits):
    arch = decode(_arch(kind, stride, bits))
    analytic = arch_cost(arch)
    model = build_model(arch)
    counted = count_modules(model, (arch.in_chs, arch.resolution, arch.resolution))
    assert counted.unknown == (), counted.unknown
    assert counted.unattributed_macs == 0
    assert (analytic.params, analytic.macs) == (counted.params, counted.macs), (
        f"{_arch(kind, stride, bits)}\n{format_counts(counted)}")
    # the same conv / linear inventory: shapes, bits and payload bytes layer by layer, so
    # weight_bytes (what export writes) and the tensor sizes behind peak_act_bytes agree too
    assert analytic_layers(analytic) == module_layers(model, arch)


@pytest.mark.parametrize("bits", [(1, 8), (1, 2), (4, 8), (8, 4)])
def test_analytic_equals_module_counter_mixed_bits(bits):
    """w != a: binary weights with k-bit activations, and the other way round."""
    w, a = bits
    arch = decode(f"in_r16_c3-stem_c32_k3_s1_w8_a8-grouped_r2_k3_s2_g4_c64_w{w}_a{a}"
                  f"-ir_r1_k3_s1_e2_c64_w{w}_a{a}-head_c0-fc_n10_w8_a8")
    analytic = arch_cost(arch)
    counted = count_modules(build_model(arch), (3, 16, 16))
    assert counted.unknown == () and counted.unattributed_macs == 0
    assert (analytic.params, analytic.macs) == (counted.params, counted.macs), format_counts(counted)
