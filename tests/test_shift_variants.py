"""Shift variants of the shift kind: sparse shift (arch-string key `sf`, the shifted
fraction of channels; ShiftNet's grouped shift is sf1)."""

import pytest
import torch

from nas.blocks import build_model
from nas.blocks.common import shift_groups
from nas.blocks.layers import Shift
from nas.cost import arch_cost
from nas.errors import UsageError
from nas.space import decode, encode

END = "head_c0_w8_a8-fc_n10_w8_a8"


def _arch(block: str):
    return decode(f"in_r8_c3-stem_c16_k3_s1_w8_a8-{block}-{END}")


def test_sparse_shift_groups_closed_form():
    # 16 channels, half shifted: 8 stay, 8 over the 8 non-zero 3x3 offsets, one each
    groups = shift_groups(16, 3, 0.5)
    assert groups[0] == (0, 0, 8)
    assert sorted((dy, dx) for dy, dx, _ in groups[1:]) == [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                                                            if (dy, dx) != (0, 0)]
    assert all(n == 1 for _, _, n in groups[1:])
    assert shift_groups(10, 3)[:2] == [(-1, -1, 2), (-1, 0, 1)]  # grouped shift: tensor_split sizes


@pytest.mark.parametrize("stride", [1, 2])
def test_sparse_shift_moves_only_its_fraction(stride):
    x = torch.randn(2, 32, 7, 7)
    y = Shift(3, stride, 0.25)(x)  # 24 channels kept, 8 moved (one per non-zero offset)
    assert torch.equal(y[:, :24], x[:, :24, ::stride, ::stride])
    for c, (dy, dx, n) in zip(range(24, 32), shift_groups(32, 3, 0.25)[1:]):
        assert n == 1
        ref = torch.zeros(2, 7, 7)
        ys, xs = slice(max(0, -dy), 7 - max(0, dy)), slice(max(0, -dx), 7 - max(0, dx))
        ref[:, ys, xs] = x[:, c, max(0, dy):7 + min(0, dy), max(0, dx):7 + min(0, dx)]
        assert torch.equal(y[:, c], ref[:, ::stride, ::stride])


@pytest.mark.parametrize("kernel,stride,frac,size", [(3, 1, 1.0, 7), (3, 2, 1.0, 7), (5, 1, 1.0, 9), (5, 2, 0.25, 8),
                                                   (3, 2, 0.5, 6)])
def test_a_shift_exported_to_onnx_is_one_conv_with_the_same_outputs(kernel, stride, frac, size, tmp_path):
    """In ONNX a shift is one depthwise conv with a one-hot kernel (not a Pad and a Slice per
    group); onnxruntime's outputs equal the module's at atol=0 (each is one input times 1.0)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    m = Shift(kernel, stride, frac).eval()
    x = torch.randn(2, 40, size, size)
    path = tmp_path / "shift.onnx"
    torch.onnx.export(m, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=False)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node if n.op_type != "Constant"]
    assert ops == ["Conv"], ops
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        assert np.array_equal(got, m(x).numpy())


def test_sparse_shift_arch_string_cost_and_build():
    s = "shift_r2_k3_s2_e2_c32_sf0.25_w8_a8"
    arch = _arch(s)
    assert arch.blocks[0].shift_frac == 0.25
    assert encode(arch).split("-")[2] == s
    dense = _arch(s.replace("_sf0.25", ""))
    assert "_sf" not in encode(dense)
    cost, base = arch_cost(arch), arch_cost(dense)
    # the shift itself has no macs / params, sparse or not: the totals do not move
    assert (cost.macs, cost.params, cost.weight_bytes) == (base.macs, base.params, base.weight_bytes)
    shifts = [layer for layer in cost.layers if layer.op == "shift"]
    assert [(layer.params, layer.macs) for layer in shifts] == [(0, 0), (0, 0)]
    assert shifts[0].groups == 9  # 32 channels: 24 kept + 8 moved one each = 9 groups
    model = build_model(arch).eval()
    assert model.blocks[0][0].shift.shift_frac == 0.25
    assert tuple(model(torch.zeros(1, 3, 8, 8)).shape) == (1, 10)


@pytest.mark.parametrize("block, needle", [
    ("shift_r1_k3_s1_e2_c32_sf0_w8_a8", "shift_frac=0.0 is not allowed"),
    ("shift_r1_k3_s1_e2_c32_sf1.5_w8_a8", "shift_frac=1.5 is not allowed"),
    ("ir_r1_k3_s1_e2_c32_sf0.5_w8_a8", "unknown key 'sf0.5' in a 'ir' segment"),
])
def test_sparse_shift_refusals(block, needle):
    with pytest.raises(UsageError) as e:
        _arch(block)
    assert needle in str(e.value)


# --- active shift (key as1): learned fractional per-channel offsets, bilinear ---

def test_active_shift_starts_as_the_grouped_shift_and_interpolates():
    from nas.blocks.layers import ActiveShift

    x = torch.randn(2, 18, 7, 7)
    for stride in (1, 2):
        active = ActiveShift(18, 3, stride)
        assert active.offset.shape == (18, 2)
        # integer offsets: bilinear reads land on pixel centres (float rounding of the grid only)
        torch.testing.assert_close(active(x), Shift(3, stride)(x), atol=1e-5, rtol=0)
    active = ActiveShift(1, 1)
    with torch.no_grad():
        active.offset[:] = torch.tensor([[0.0, 0.25]])  # a quarter pixel to the right
    x = torch.randn(1, 1, 4, 5)
    expected = 0.75 * x + 0.25 * torch.nn.functional.pad(x, (-1, 1, 0, 0))  # out[x] = .75 in[x] + .25 in[x+1]
    torch.testing.assert_close(active(x), expected, atol=1e-5, rtol=0)


def test_active_shift_offsets_learn():
    from nas.blocks.layers import ActiveShift

    active = ActiveShift(4, 3)
    with torch.no_grad():
        active.offset.add_(0.3)  # between pixels: the bilinear read has a gradient
    active(torch.randn(2, 4, 6, 6)).square().sum().backward()
    assert active.offset.grad is not None and active.offset.grad.abs().sum() > 0


def test_active_shift_cost_params_are_the_built_ones():
    s = "shift_r2_k3_s2_e2_c32_as1_w8_a8"
    arch = _arch(s)
    assert encode(arch).split("-")[2] == s and arch.blocks[0].active_shift == 1
    cost, base = arch_cost(arch), arch_cost(_arch(s.replace("_as1", "")))
    shifts = [layer for layer in cost.layers if layer.op == "shift"]
    mids = [layer.in_shapes[0][0] for layer in shifts]  # 32 (16 * 2) then 64 (32 * 2) channels
    assert mids == [32, 64]
    assert [(layer.params, layer.weight_bytes, layer.macs) for layer in shifts] == [(2 * c, 8 * c, 0) for c in mids]
    assert cost.params == base.params + 2 * sum(mids)
    assert cost.weight_bytes == base.weight_bytes + 4 * 2 * sum(mids)  # float32 offsets
    assert cost.macs == base.macs
    model = build_model(arch)
    offsets = [m.offset for m in model.modules() if hasattr(m, "offset")]
    assert [o.numel() for o in offsets] == [2 * c for c in mids]
    assert cost.params == sum(p.numel() for p in model.parameters())
    assert tuple(model.eval()(torch.zeros(1, 3, 8, 8)).shape) == (1, 10)


def test_active_shift_refusals_and_export_refusal():
    from nas.export.bundle import payload_of

    for block, needle in [("ir_r1_k3_s1_e2_c32_as1_w8_a8", "unknown key 'as1' in a 'ir' segment"),
                          ("shift_r1_k3_s1_e2_c32_sf0.5_as1_w8_a8", "active_shift=1 with shift_frac=0.5"),
                          ("shift_r1_k3_s1_e2_c32_as2_w8_a8", "active_shift=2 is not allowed")]:
        with pytest.raises(UsageError) as e:
            _arch(block)
        assert needle in str(e.value)
    with pytest.raises(UsageError, match="active-shift archs cannot be exported yet"):
        payload_of(build_model(_arch("shift_r1_k3_s1_e2_c32_as1_w8_a8")))


def test_shift_space_file_draws_every_variant_and_costs_them():
    """search_spaces/shift.yaml offers sparse (`shift_frac`) and active (`active_shift`) shift as
    stage choices; the sampler draws them, the codec writes them, the cost model prices them."""
    from dataclasses import replace

    from nas.space import load_space, random_archs
    from nas.space.sample import space_size

    space = load_space("search_spaces/shift.yaml")
    strings = [encode(a) for a in random_archs(space, 40, seed=3)]
    assert any("_sf0.5_" in s or "_sf0.25_" in s for s in strings)
    assert any("_as1_" in s for s in strings)
    assert any("-shift_" in s and "_sf" not in s and "_as1" not in s for s in strings)  # grouped shift too
    for s in strings:
        assert encode(decode(s)) == s and arch_cost(decode(s)).macs > 0
    plain = replace(space, stages=tuple(replace(st, shift_frac=(1.0,), active_shift=(0,)) for st in space.stages))
    assert space_size(space) > space_size(plain)
    assert not any("_sf" in encode(a) or "_as1" in encode(a) for a in random_archs(plain, 20, seed=3))


@pytest.mark.parametrize("stage, needle", [
    ("shift_frac: [1, 0]", "shift_frac: 0.0 is not allowed; expected 0 < shift_frac <= 1"),
    ("shift_frac: [0.5], active_shift: [0, 1]", "cannot be drawn beside shift_frac < 1"),
    ("active_shift: [2]", "active_shift: 2 is not allowed"),
])
def test_shift_variant_choices_are_checked_at_load(tmp_path, stage, needle):
    from nas.space import load_space

    path = tmp_path / "s.yaml"
    path.write_text("input: {resolution: 28, channels: 1}\nnum_classes: 10\nstem: {channels: 16, bits: w8a8}\n"
                    f"stages:\n  - {{channels: 16, kinds: [shift], bits: w8a8, {stage}}}\n"
                    "head: {channels: 0, bits: w8a8}\nclassifier: {bits: w8a8}\n")
    with pytest.raises(UsageError) as e:
        load_space(path)
    assert needle in str(e.value) and "s.yaml" in str(e.value) and len(str(e.value).splitlines()) == 1, str(e.value)
