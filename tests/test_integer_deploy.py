"""The packed model's integer path (`nas.export.convert`, `nas.export.packed`): the conversion
table over every block kind x stride x bit width, integer layers equal to the int64
reference at atol=0, chaining that changes no number, and bad input.

Weights are seeded random (these are properties of the conversion, not of training); the
agreement with the fake-quant model on a trained network and the whole test split is in
tests/test_export.py (`prediction_agreement`).
"""

import json
import shutil

import numpy as np
import pytest
import torch

from nas.blocks import KINDS
from nas.blocks.model import build_model
from nas.cli import main
from nas.export.bundle import _manifest_digest, payload_of, sha256
from nas.export.convert import CONVERSIONS, PATHS, conversion_for
from nas.export.deploy import packed_model
from nas.export.fold import geometry
from nas.export.packed import PackedBinaryConv2d, PackedBinaryUnit, PackedIntegerConv2d
from nas.kernels import int_reference
from nas.kernels import integer as int_kernels
from nas.quant import QuantConv2d, QuantLinear
from nas.quant.integer import INT_BITS
from nas.space import decode

pytestmark = pytest.mark.skipif(not int_kernels.available(), reason="nas.kernels._int not built")

BLOCKS = {  # one segment per kind, {s} = stride, {q} = bits; dilation where the kind has it
    "ir": ["ir_r1_k3_s{s}_e2_c16_se0.25_{q}", "ir_r1_k3_s{s}_e1_c16_{q}", "ir_r1_k3_s{s}_e2_c16_d2_{q}"],
    "shift": ["shift_r1_k3_s{s}_e2_c16_{q}"],
    "grouped": ["grouped_r1_k3_s{s}_g2_c16_{q}", "grouped_r1_k3_s{s}_g2_c16_d2_{q}"],
    "dense": ["dense_r1_k3_s{s}_gr8_c16_{q}", "dense_r1_k3_s{s}_gr8_c16_d2_{q}"],
}
BITS = [(1, 1), (2, 2), (4, 4), (8, 8), (16, 16), (32, 32), (8, 32), (32, 8), (4, 16), (2, 8)]
END = "head_c16_w8_a8-fc_n10_w4_a4"


def arch_string(segment: str) -> str:
    return f"in_r12_c1-stem_c8_k3_s1_w8_a8-{segment}-ir_r1_k3_s1_e2_c8_w8_a8-{END}"


def packed_of(s: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(decode(s)).eval()
    payload, _ = payload_of(model)
    return model, packed_model(decode(s), payload)


def expected_path(m, w_bits: int, a_bits: int) -> str:
    if w_bits == 1:
        return "binary"
    dilated = isinstance(m, QuantConv2d) and tuple(m.dilation) != (1, 1)
    return "integer" if w_bits in INT_BITS and a_bits in INT_BITS and not dilated else "float"


def test_blocks_table_lists_every_kind():
    assert set(BLOCKS) == set(KINDS)
    assert PATHS == ("binary", "integer", "float") and len(CONVERSIONS) == 3


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_conversion_table_covers_every_kind_stride_and_bits(kind):
    """Every quantized layer the builder produces, for every kind x stride x bit width, has
    one row of the table, the row the stated rule picks; the packed model holds only
    deployable modules where fake-quant ones were, and runs."""
    for template in BLOCKS[kind]:
        for stride in (1, 2):
            for w, a in BITS:
                if w == 1 and (a != 1 or "_d2" in template or "_se" in template):
                    continue  # 1-bit blocks: 1-bit inputs, no dilation, no SE (the arch string refuses)
                if a == 1:
                    continue
                s = arch_string(template.format(s=stride, q=f"w{w}_a{a}"))
                model, packed = packed_of(s)
                layers = model.quant_layers()
                by_name = {e["name"]: e for e in packed.layer_paths}
                assert list(by_name) == [layer.name for layer in layers], s
                for layer in layers:
                    row, declined = conversion_for(geometry(layer.name, layer.module), layer.module)
                    want = expected_path(layer.module, layer.w_bits, layer.a_bits)
                    assert row.path == want == by_name[layer.name]["path"], (s, layer.name)
                    assert (declined is not None) == (want == "float"), (s, layer.name)  # a float layer says why
                left = [n for n, m in packed.named_modules()
                        if isinstance(m, (QuantConv2d, QuantLinear)) and m.w_bits != 32]
                assert left == [], (s, left)  # float-path layers are w_bits = 32 copies
                n_int = sum(isinstance(m, PackedIntegerConv2d) for m in packed.modules())
                n_bin = sum(isinstance(m, PackedBinaryConv2d) for m in packed.modules())
                assert n_int == sum(e["path"] == "integer" for e in packed.layer_paths)
                assert n_bin == sum(e["path"] == "binary" for e in packed.layer_paths)
                with torch.inference_mode():
                    out = packed(torch.randn(2, 1, 12, 12))
                assert out.shape == (2, 10) and out.dtype == torch.float32 and torch.isfinite(out).all(), s


MIXED = ("in_r28_c1-stem_c8_k3_s1_w8_a8-ir_r1_k3_s1_e2_c8_w8_a8-ir_r1_k5_s2_e3_c16_w4_a4"
         "-grouped_r1_k3_s1_g2_c16_w2_a2-shift_r1_k3_s2_e2_c24_w4_a4-dense_r1_k3_s1_gr8_c24_w8_a8"
         "-ir_r1_k3_s1_e2_c24_se0.25_w8_a8-ir_r1_k3_s1_e2_c24_w1_a1-head_c32_w8_a8-fc_n10_w2_a2")


def _capture(packed):
    seen = {}

    def keep(name):
        def hook(module, args, kwargs, out):
            residual = kwargs.get("residual")
            seen[name] = (args[0].clone(), None if residual is None else residual.clone(), out.clone())
        return hook

    hooks = [m.register_forward_hook(keep(n), with_kwargs=True) for n, m in packed.named_modules()
             if isinstance(m, PackedIntegerConv2d)]
    return seen, hooks


def test_integer_layers_equal_the_int64_reference_exactly():
    """Each integer layer of a packed mixed-kind network, on the inputs it sees in a forward
    pass (float, or codes from the previous integer layer; a residual where fused): its output
    equals the numpy int64 reference on the same codes, weights, scale, bias, residual,
    activation and requantization,
    at atol=0 (bit patterns); its input quantizer equals `nas.quant.integer.act_codes`."""
    _, packed = packed_of(MIXED)
    seen, hooks = _capture(packed)
    x = torch.randn(4, 1, 28, 28)
    with torch.inference_mode():
        packed(x)
    for h in hooks:
        h.remove()
    kinds = {"codes_in": 0, "codes_out": 0, "groups": 0, "linear": 0, "residual": 0}
    assert len(seen) >= 12
    for name, (inp, residual, out) in seen.items():
        m = packed.get_submodule(name)
        if inp.dtype in (torch.uint8, torch.int8):
            codes = inp[:, None, None, :] if m.linear else inp.permute(0, 2, 3, 1)
            kinds["codes_in"] += 1
        else:
            codes = m.input_codes(inp)
            assert torch.equal(codes, m.reference_codes(inp)), name
        k = m.kernel
        if residual is not None:
            residual = residual.permute(0, 2, 3, 1).numpy()  # NHWC
            kinds["residual"] += 1
        want = int_reference.conv2d(codes.numpy(), m.w_int.numpy(), k.stride, k.padding, k.groups,
                                    m.scale.numpy(), m.bias.numpy(), residual, m.activation, m.requant)
        got = out.reshape(want.shape) if m.linear else out.permute(0, 2, 3, 1)
        if m.requant is None:
            assert got.dtype == torch.float32 and np.array_equal(got.numpy().view(np.int32), want.view(np.int32)), name
        else:
            kinds["codes_out"] += 1
            assert np.array_equal(got.numpy().astype(np.int32), want), name
        kinds["groups"] += k.groups > 1
        kinds["linear"] += m.linear
    assert all(kinds.values()), kinds  # chained inputs / outputs, grouped / depthwise, linear, residual seen


def test_chaining_changes_no_number():
    """Integer layers that write the next layer's codes give the same logits, bit for bit,
    as the same layers each writing floats that the next layer quantizes itself."""
    _, packed = packed_of(MIXED)
    chained = [m for m in packed.modules() if isinstance(m, PackedIntegerConv2d) and m.requant is not None]
    assert len(chained) >= 3
    x = torch.randn(8, 1, 28, 28)
    with torch.inference_mode():
        y = packed(x)
        for m in chained:
            m.requant = None
        assert torch.equal(packed(x), y)


@pytest.mark.parametrize("segment", ["shift_r2_k3_s2_e2_c16_w8_a8", "shift_r2_k3_s1_e2_c16_sf0.25_w4_a4",
                                     "grouped_r2_k3_s1_g2_c16_w8_a8", "grouped_r1_k3_s2_g4_c16_w2_a2"])
def test_chains_go_through_shift_and_shuffle(segment):
    """A shift or a channel shuffle between two integer layers runs on the codes: the layer
    before it writes the layer after it's codes, and the logits equal, bit for bit, those of
    the same layers each writing floats."""
    from nas.blocks.layers import ChannelShuffle, Shift

    _, packed = packed_of(arch_string(segment), seed=3)
    movers = [n for n, m in packed.named_modules() if isinstance(m, (Shift, ChannelShuffle))]
    assert movers
    ints = {n: m for n, m in packed.named_modules() if isinstance(m, PackedIntegerConv2d)}
    for mover in movers:  # conv1 -> shift / shuffle -> conv2 in both kinds
        block = mover.rsplit(".", 1)[0]
        assert ints[f"{block}.conv1"].requant is not None, mover
    outputs = {e["name"]: e.get("output") for e in packed.layer_paths}
    assert sum(bool(o and o.endswith(".conv2")) for o in outputs.values()) >= len(movers), outputs
    x = torch.randn(4, 1, 12, 12)
    with torch.inference_mode():
        y = packed(x)
        for m in ints.values():
            m.requant = None
        assert torch.equal(packed(x), y)


def test_predictions_agree_with_fake_quant_on_real_images():
    """The mixed network (random weights) against its fake-quant model on Fashion-MNIST test
    images: the same codes, float32 rounding apart; predictions agree on nearly all."""
    from nas.data import load_dataset

    data = load_dataset("fashion-mnist", subset=200)
    x, _ = data.test.batch(torch.arange(200))
    model, packed = packed_of(MIXED, seed=1)
    model.use_kernels(False)
    with torch.inference_mode():
        agree = (packed(x).argmax(1) == model(x).argmax(1)).float().mean().item()
    assert agree >= 0.95, agree
    assert {"integer", "binary", "float"} == {e["path"] for e in packed.layer_paths}
    assert isinstance(packed.get_submodule("blocks.6.0.pw"), PackedBinaryUnit)


# ---- bad input -------------------------------------------------------------------------------

def test_infer_refuses_a_payload_that_does_not_match_the_arch(tmp_path, capsys):
    """A bundle (hashes consistent) whose payload.bin was written for another arch: one line, exit 2."""
    from nas.data import load_dataset
    from nas.export import export_model

    s = arch_string("ir_r1_k3_s1_e2_c16_w8_a8").replace("in_r12", "in_r28")
    model, _ = packed_of(s)
    data = load_dataset("fashion-mnist", subset=100)
    out = tmp_path / "b"
    export_model(model, out, data.test.subset(torch.arange(50)), info={"dataset": "fashion-mnist"})
    other, _ = payload_of(build_model(decode(arch_string("ir_r1_k3_s1_e2_c24_w4_a4").replace("in_r12", "in_r28"))))
    (out / "payload.bin").write_bytes(other)
    m = json.loads((out / "manifest.json").read_text())
    m["files"]["payload.bin"] = {"bytes": len(other), "sha256": sha256(out / "payload.bin")}
    m["manifest_sha256"] = _manifest_digest(m)
    (out / "manifest.json").write_text(json.dumps(m))
    capsys.readouterr()  # the export's own output (a busy machine's timing warning among it)
    assert main(["infer", "--bundle", str(out), "--dataset", "fashion-mnist", "--subset", "20"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "payload.bin does not fit" in err, err
    shutil.rmtree(out)


@pytest.mark.parametrize("mixed", ["8,3,2,4,8", "8,16,2,4,8", "8,4,x"])
def test_bench_infer_refuses_a_bit_width_without_an_integer_kernel(mixed, capsys):
    assert main(["bench", "infer", "--mixed", mixed, "--repeats", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--mixed" in err, err


def test_integer_conv_refuses_a_bit_width_without_a_kernel():
    from nas.errors import UsageError

    with pytest.raises(UsageError, match="w_bits=16 has no integer kernel"):
        int_kernels.IntegerConv(torch.zeros(4, 4, 1, 1, dtype=torch.int16), 16)


def test_residual_add_in_the_epilogue_changes_no_number(monkeypatch):
    """Residual blocks whose last layer is integer add the shortcut in that layer's epilogue:
    the logits equal, bit for bit, those of the same packed layers with the block's own add."""
    from nas.export import convert
    from nas.export.packed import ResidualBlock

    _, fused = packed_of(MIXED)
    blocks = [n for n, m in fused.named_modules() if isinstance(m, ResidualBlock)]
    assert {"blocks.0.0", "blocks.2.0", "blocks.5.0"} <= set(blocks), blocks  # ir, grouped, ir + SE
    assert [e["name"] for e in fused.layer_paths if e.get("residual") == "fused"] == \
        [f"{b}.{fused.get_submodule(b).last}" for b in blocks]
    monkeypatch.setattr(convert, "fuse_residual_adds", lambda model: set())
    _, plain = packed_of(MIXED)
    assert not any(isinstance(m, ResidualBlock) for m in plain.modules())
    x = torch.randn(8, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(fused(x), plain(x))


def test_bench_infer_rows(capsys):
    """`nas bench infer` (figures, no timing targets): per base arch the fp32, int8 and mixed
    variants of the same arch, the paths they run on, and speedups computed from its own ms."""
    base = "in_r28_c1-stem_c8_k3_s1_w8_a8-ir_r1_k3_s2_e2_c16_w8_a8-grouped_r1_k3_s1_g2_c16_w8_a8-head_c0_w8_a8-fc_n10_w8_a8"
    assert main(["bench", "infer", "--arch", base, "--mixed", "2,4", "--repeats", "2", "--rounds", "1", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["variant"] for r in rows] == ["fp32", "int8", "mixed"]
    assert rows[0]["layer_paths"] == {"float": 7} and rows[1]["layer_paths"] == {"integer": 7}  # stem, 3 + 2, fc
    assert "_w2_a2" in rows[2]["arch"] and "_w4_a4" in rows[2]["arch"] and "stem_c8_k3_s1_w8_a8" in rows[2]["arch"]
    for r in rows:
        assert r["batch"] == 1 and r["threads"] == 1 and r["ms"] > 0
        assert r["speedup_vs_fp32"] == pytest.approx(rows[0]["ms"] / r["ms"], rel=1e-2)
