"""A block kind is one unit (`nas.blocks.<kind>`): the cost model's per-layer list and the
built module's quantized layers are one sequence - names, order, shapes, bits - on every
block kind x stride x bit width; and the cost package imports without torch or timm."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from nas.blocks import KINDS, build_model, module_name
from nas.cost import arch_cost
from nas.space import decode
from nas.space.spec import BLOCK_KINDS

BLOCKS = {  # a block segment per kind and option (c64 from a 32-channel stem: the first repeat changes channels)
    "ir_e1": "ir_r2_k3_s{s}_e1_c64",
    "ir_e3": "ir_r2_k3_s{s}_e3_c64",
    "ir_e3_se": "ir_r2_k5_s{s}_e3_c64_se0.25",
    "ir_e1_c32": "ir_r2_k3_s{s}_e1_c32",  # channels kept: the residual add on the first repeat too
    "shift": "shift_r2_k3_s{s}_e2_c64",
    "shift_c32": "shift_r1_k3_s{s}_e2_c32",
    "shift_sparse": "shift_r2_k3_s{s}_e2_c64_sf0.25",
    "shift_active": "shift_r2_k3_s{s}_e2_c64_as1",
    "grouped": "grouped_r2_k3_s{s}_g4_c64",
    "grouped_g1": "grouped_r1_k3_s{s}_g1_c32",
    "dense": "dense_r2_k3_s{s}_gr16_c64",
    # dilated k x k convs (key d); 1-bit blocks take no dilation, so at w1 they run undilated
    "ir_e1_d2": "ir_r2_k3_s{s}_e1_c64_d2",
    "ir_e3_d3": "ir_r2_k5_s{s}_e3_c64_se0.25_d3",
    "grouped_d2": "grouped_r2_k3_s{s}_g4_c64_d2",
    "dense_d2": "dense_r2_k3_s{s}_gr16_c64_d2",
}
BITS = (1, 2, 4, 8, 16, 32)


def test_every_kind_has_one_file_with_its_parts():
    assert set(KINDS) == set(BLOCK_KINDS)
    for name, kind in KINDS.items():
        assert callable(kind.expand) and callable(kind.build) and kind.KEYS and kind.MODULE_NAMES, name


def _arch(kind: str, stride: int, bits: int):
    block = BLOCKS[kind].format(s=stride)
    if "_se" in block and bits == 1:
        block = block.replace("_se0.25", "")  # SE is not allowed in binary blocks
    if bits == 1:
        block = block.replace("_d2", "").replace("_d3", "")  # nor is dilation
    return decode(f"in_r16_c3-stem_c32_k3_s1_w8_a8-{block}_w{bits}_a{bits}-head_c48_w8_a8-fc_n10_w8_a8")


def module_sequence(model, arch):
    """(name, out shape, w_bits, a_bits) of every quantized conv / linear, in the order they run."""
    names = {m: n for n, m in model.named_modules()}
    rows, hooks = [], []

    def hook(m, inputs, output):
        rows.append((names[m], tuple(output.shape[1:]) if output.dim() == 4 else (output.shape[1], 1, 1),
                     m.w_bits, m.a_bits))

    for q in model.quant_layers():
        hooks.append(q.module.register_forward_hook(hook))
    with torch.enable_grad():  # the differentiable path runs every conv's forward
        model.eval()(torch.zeros(1, arch.in_chs, arch.resolution, arch.resolution))
    for h in hooks:
        h.remove()
    return rows


def cost_sequence(arch):
    return [(module_name(arch, layer.name), layer.out_shape, layer.w_bits, layer.a_bits)
            for layer in arch_cost(arch).layers if layer.op in ("conv", "linear")]


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kind", list(BLOCKS))
def test_cost_layers_and_built_layers_are_one_sequence(kind, stride, bits):
    arch = _arch(kind, stride, bits)
    model = build_model(arch)
    expected = cost_sequence(arch)
    assert module_sequence(model, arch) == expected
    # registration order is execution order (what peak_act_bytes and the payload assume)
    assert [q.name for q in model.quant_layers()] == [row[0] for row in expected]
    assert len(expected) >= 5  # stem, >= 2 block convs, head, fc


@pytest.mark.parametrize("kind", ["ir_e1_c32", "shift_c32", "grouped_g1"])
def test_residual_rule_is_shared(kind):
    """The residual add the cost model prices is the one the built block runs."""
    for bits in (1, 8):
        arch = _arch(kind, 1, bits)
        model = build_model(arch)
        adds = [layer.name for layer in arch_cost(arch).layers if layer.op == "add" and "shortcut" not in layer.name
                and not layer.name.endswith((".conv_pw.add", ".conv_pwl.add", ".conv_dw.add", ".conv_g.add",
                                             ".conv_g1.add"))]
        first = model.blocks[0][0]
        has_skip = bool(getattr(first, "has_skip", False))
        assert ("blocks.0.0.add" in adds) == has_skip == (bits != 1)


def test_cost_imports_without_torch_or_timm():
    code = "import nas.cost, nas.space, sys; assert 'torch' not in sys.modules and 'timm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _mixed_arch(kind: str, stride: int, binary: bool):
    """`kind`'s block with its own bits on every conv layer: weights and activations cycling
    through the widths (1-bit blocks: 1-bit weights, activations 1/2/4/8)."""
    block = BLOCKS[kind].format(s=stride)
    if binary:
        block = block.replace("_se0.25", "").replace("_d2", "").replace("_d3", "")
    n = decode(f"in_r16_c3-stem_c32_k3_s1_w8_a8-{block}-head_c48_w8_a8-fc_n10_w8_a8").blocks[0].layer_count
    ws = [1] * n if binary else [(2, 4, 8, 16, 32)[i % 5] for i in range(n)]
    acts = [(1, 2, 4, 8)[i % 4] for i in range(n)] if binary else [(8, 4, 2, 32, 16)[i % 5] for i in range(n)]
    bits = f"w{'x'.join(map(str, ws))}_a{'x'.join(map(str, acts))}"
    return decode(f"in_r16_c3-stem_c32_k3_s1_w8_a8-{block}_{bits}-head_c48_w8_a8-fc_n10_w8_a8"), list(zip(ws, acts))


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kind", list(BLOCKS))
def test_per_layer_bits_reach_the_cost_layers_and_the_built_layers(kind, stride, binary):
    """Mixed bits inside a block: the cost model's layers and the built module's are still one
    sequence, and the block's conv layers (shortcut and SE convs aside) carry the given bits in
    execution order; `block_layers` counts exactly the layers each kind's expansion makes."""
    arch, bits = _mixed_arch(kind, stride, binary)
    b = arch.blocks[0]
    assert b.per_layer_bits and b.layer_count == len(bits)
    assert len(KINDS[b.kind].layer_roles(b)) * (1 if b.kind == "dense" else b.repeats) == b.layer_count
    model = build_model(arch)
    expected = cost_sequence(arch)
    assert module_sequence(model, arch) == expected
    block_rows = [r for r in expected if r[0].startswith("blocks.0.") and ".shortcut." not in r[0]
                  and ".se." not in r[0]]
    assert [(w, a) for _, _, w, a in block_rows] == bits
    by_name = {r[0]: r for r in expected}
    for name, _, w, a in expected:  # squeeze-excite: the depthwise conv's weight bits, float input
        if ".se." in name:
            assert (w, a) == (by_name[name.split(".se.")[0] + ".conv_dw"][2], 32)
