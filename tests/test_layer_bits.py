"""Per-layer bit widths (issue 21 item 3): the arch-string form and its compact case, the
space's `bits_per: stage | block | layer` sampling, compound scaling of a per-layer stage, and
a block with mixed bits inside it priced, built, exported and run by `nas infer` (the payload
is `weight_bytes` to the byte; the packed model agrees with the fake-quant model).

Real data (Fashion-MNIST) wherever a model is trained or evaluated."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nas.blocks.model import build_model
from nas.cli import main
from nas.cost import arch_cost
from nas.data import load_dataset
from nas.data.split import stratified_subset
from nas.errors import UsageError
from nas.export import export_model, load_bundle
from nas.export.bundle import payload_of, predictions
from nas.export.deploy import packed_model
from nas.cost.kernel_path import on_packed_kernels
from nas.export.packed import PackedBinaryUnit, PackedIntegerConv2d
from nas.space import decode, encode
from nas.space.file import load_space
from nas.space.sample import random_archs, random_samples, space_size
from nas.space.scaling import Scaling, scale_arch
from nas.space.spec import BlockSpec

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")

# Mixed bits inside blocks of every kind: integer layers of different widths side by side (a
# residual fused into a w8-reading-a2 layer), a 32-bit layer between integer ones, SE convs
# following their depthwise conv's w4, and a Bi-Real block whose units read 1- and 2-bit inputs.
MIXED = ("in_r28_c1-stem_c8_k3_s1_w8_a8-ir_r2_k3_s2_e2_c16_w8x4x2x4x8x8_a8x4x4x2x8x8"
         "-grouped_r1_k3_s1_g2_c16_w2x8_a8x2-shift_r1_k3_s2_e2_c24_w4x32_a4x32"
         "-dense_r1_k3_s1_gr8_c24_w8x2x4_a4x8x2-ir_r1_k3_s1_e2_c24_se0.25_w8x4x8_a8x8x4"
         "-ir_r1_k3_s1_e2_c24_w1_a1x1x2-head_c32_w8_a8-fc_n10_w8_a8")
TEST_IMAGES = 500


# ---- arch strings ----------------------------------------------------------------------------

def test_per_layer_strings_round_trip():
    spec = decode(MIXED)
    assert encode(spec) == MIXED and decode(encode(spec)) == spec
    ir = spec.blocks[0]
    assert ir.block_bits(0) == ((8, 8), (4, 4), (2, 4)) and ir.block_bits(1) == ((4, 2), (8, 8), (8, 8))
    assert (ir.w_bits, ir.a_bits) == (8, 8)  # a mixed list's widest entry
    binary = spec.blocks[-1]
    assert binary.binary and binary.all_layer_bits() == ((1, 1), (1, 1), (1, 2))


def test_a_uniform_list_is_the_compact_form():
    """`w4x4x4` means `w4`: one spec, written compactly; today's strings mean what they meant."""
    compact = "in_r28_c1-stem_c8_k3_s1_w8_a8-ir_r1_k3_s2_e3_c16_w4_a4-head_c0_w8_a8-fc_n10_w8_a8"
    listed = compact.replace("w4_a4", "w4x4x4_a4x4x4")
    assert decode(listed) == decode(compact) and encode(decode(listed)) == compact
    b = decode(compact).blocks[0]
    assert not b.per_layer_bits and b.all_layer_bits() == ((4, 4),) * 3
    only_w = compact.replace("w4_a4", "w8x4x8_a4")
    assert encode(decode(only_w)) == only_w and decode(only_w).blocks[0].layer_a_bits == ()


@pytest.mark.parametrize("segment, message", [
    ("ir_r2_k3_s2_e3_c16_w8x4x8_a8", "block 0: ir block: 3 weight bit widths given (w8x4x8), expected 1 or 6"),
    ("dense_r2_k3_s1_gr8_c16_w8_a8x8", "block 0: dense block: 2 activation bit widths given (a8x8), expected 1 or 5"),
    ("ir_r1_k3_s2_e3_c16_w1x4x4_a1x4x4", "mix 1-bit and multi-bit layers"),
    ("ir_r1_k3_s2_e3_c16_w2x4x4_a1x4x4", "a_bits=1 with w_bits=2"),
    ("ir_r1_k3_s2_e3_c16_w8x3x8_a8", "layer_w_bits=3 is not allowed"),
    ("ir_r1_k3_s2_e3_c16_w8x4x8_w8", "key 'w' given twice"),
])
def test_bad_per_layer_bits_are_refused(segment, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode(f"in_r28_c1-stem_c8_k3_s1_w8_a8-{segment}-head_c0_w8_a8-fc_n10_w8_a8")


# ---- sampling at bits_per --------------------------------------------------------------------

def _space(bits_per: str):
    return dataclasses.replace(load_space(REPO / "search_spaces/mcu.yaml"), bits_per=bits_per)


def test_bits_per_stage_draws_what_it_drew_before():
    """The default granularity is today's: no per-layer lists, the same seeded draws."""
    space = load_space(REPO / "search_spaces/mcu.yaml")
    assert space.bits_per == "stage"
    archs = random_archs(space, 20, seed=3)
    assert not any(b.per_layer_bits for a in archs for b in a.blocks)
    assert [encode(a) for a in archs] == [encode(a) for a in random_archs(_space("stage"), 20, seed=3)]


def test_bits_per_layer_and_block_sample_accordingly():
    space = _space("layer")
    pairs = [set(st.bits) for st in space.stages]
    mixed = 0
    for s in random_samples(space, 40, seed=5):
        for i, (b, base) in enumerate(zip(s.arch.blocks, s.base.blocks)):
            layers = base.all_layer_bits()
            assert set(layers) <= pairs[i] and len({w == 1 for w, _ in layers}) == 1
            mixed += len(set(layers)) > 1
            assert b.layer_count >= base.layer_count  # scaled depth keeps a list per layer
    assert mixed >= 20
    for s in random_samples(_space("block"), 40, seed=5):
        for b in s.base.blocks:  # one pair per block: its layers share it
            for j in range(1 if b.kind == "dense" else b.repeats):
                assert len(set(b.block_bits(j))) == 1


def test_per_layer_parameters_are_named_and_replayable():
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    from nas.space.sample import replay, sample_arch
    for _ in range(10):
        trial = study.ask()
        s = sample_arch(_space("layer"), trial)
        names = [n for n in trial.params if ".l" in n]
        assert all(n.split(".")[1][0] == "l" and n.endswith(".bits") for n in names)
        assert replay(_space("layer"), trial.params).arch == s.arch


def test_space_size_counts_per_layer_choices(tmp_path):
    """One ir stage, repeats 1|2, expand 1|2, bits w8a8|w4a4|w1a1: per layer, a non-binary
    stage takes 2^(layers - 1) more assignments beyond its first pick (layers 2, 3, 4, 6),
    a binary one none; per block 2^(blocks - 1)."""
    text = ("name: t\ninput: {{resolution: 8, channels: 1}}\nbits_per: {bp}\nscaling: {{mode: free}}\n"
            "stem: {{channels: 8}}\n"
            "stages:\n  - {{channels: 8, stride: 1, kinds: [ir], repeats: [1, 2], expand: [1, 2],"
            " bits: [w8a8, w4a4, w1a1]}}\n")
    sizes = {}
    for bp in ("stage", "block", "layer"):
        (tmp_path / f"{bp}.yaml").write_text(text.format(bp=bp))
        sizes[bp] = space_size(load_space(tmp_path / f"{bp}.yaml"))
    assert sizes == {"stage": 3 * 4, "block": 2 * (1 + 1 + 2 + 2) + 4, "layer": 2 * (2 + 4 + 8 + 32) + 4}


def test_bad_bits_per_names_the_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: t\ninput: {resolution: 8}\nbits_per: conv\nstem: {channels: 8}\nstages:\n"
                    "  - {channels: 8}\n")
    with pytest.raises(UsageError, match=r"s.yaml:3: space.bits_per: 'conv' is not allowed"):
        load_space(path)


def test_deeper_scaling_repeats_the_last_blocks_bits():
    b = BlockSpec("ir", 16, repeats=2, expand=2, layer_w_bits=(8, 4, 2, 4, 8, 2), layer_a_bits=(8, 4, 4, 2, 8, 8))
    d = BlockSpec("dense", 16, repeats=2, growth=8, layer_w_bits=(8, 4, 2, 4, 8), layer_a_bits=(8,) * 5)
    base = decode("in_r28_c1-stem_c8_k3_s1_w8_a8-ir_r1_k3_s1_e1_c16_w8_a8-head_c0_w8_a8-fc_n10_w8_a8")
    base = dataclasses.replace(base, blocks=(b, d))
    scaled = scale_arch(base, Scaling(alpha=1.5, phi=1.0))  # repeats 2 -> 3
    sb, sd = scaled.blocks
    assert sb.repeats == 3 and sb.block_bits(2) == sb.block_bits(1) == b.block_bits(1)
    assert sb.block_bits(0) == b.block_bits(0)
    assert sd.layer_w_bits == (8, 4, 2, 4, 2, 4, 8)  # dense layer 2 repeats layer 1; the transition stays


# ---- cost, payload, export, nas infer --------------------------------------------------------

def test_mixed_block_payload_is_weight_bytes_to_the_byte():
    spec = decode(MIXED)
    model = build_model(spec).eval()
    payload, index = payload_of(model)
    cost = arch_cost(spec)
    assert len(payload) == cost.weight_bytes
    assert [e["bytes"] for e in index] == [c.weight_bytes for c in cost.layers if c.weight_bytes]
    # the same network at each block's widest bits costs more: the lists are what is priced
    widest = decode(encode(dataclasses.replace(spec, blocks=tuple(
        BlockSpec(**{**{f.name: getattr(b, f.name) for f in dataclasses.fields(b)},
                     "layer_w_bits": (), "layer_a_bits": ()}) for b in spec.blocks))))
    assert arch_cost(widest).weight_bytes > cost.weight_bytes
    assert [c.w_bits for c in cost.layers if c.name.startswith("blocks.0.") and c.w_bits] == [8, 4, 2, 4, 8, 8]


def test_mixed_integer_layers_chain_without_changing_a_number():
    """Integer layers of different widths in one block: each writes the next one's codes (at
    the consumer's a_bits); the logits equal, bit for bit, those of the unchained model."""
    torch.manual_seed(0)
    model = build_model(decode(MIXED)).eval()
    payload, _ = payload_of(model)
    packed = packed_model(decode(MIXED), payload)
    paths = {e["name"]: e for e in packed.layer_paths}
    assert paths["blocks.0.0.conv_dw"]["path"] == "integer" and paths["blocks.0.0.conv_dw"]["w_bits"] == 4
    assert paths["blocks.0.0.conv_pwl"]["w_bits"] == 2 and paths["blocks.2.0.conv2"]["path"] == "float"
    assert paths["blocks.1.0.conv2"].get("residual") == "fused"
    units = [packed.get_submodule(f"blocks.5.0.{n}") for n in ("pw", "dw", "pwl")]  # the w1 a1x1x2 block
    assert all(isinstance(u, PackedBinaryUnit) for u in units)
    assert [u.conv.a_bits for u in units] == [1, 1, 2]
    # the kernel path: the 1x1 unit with 1-bit inputs; the depthwise one (groups) and the 2-bit-input one run torch
    assert [on_packed_kernels(1, u.conv.a_bits, u.conv.groups) for u in units] == [True, False, False]
    chained = [(n, m) for n, m in packed.named_modules() if isinstance(m, PackedIntegerConv2d) and m.requant]
    assert any(m.kernel.w_bits != packed.get_submodule(paths[n]["output"].split()[-1]).kernel.w_bits
               for n, m in chained)
    x = load_dataset("fashion-mnist", subset=100).test.batch(torch.arange(16))[0]
    with torch.inference_mode():
        y = packed(x)
        for _, m in chained:
            m.requant = None
        assert torch.equal(packed(x), y)


@pytest.fixture(scope="module")
def fm():
    data = load_dataset("fashion-mnist", subset=1000)
    index = stratified_subset(data.test.labels.numpy(), TEST_IMAGES, seed=0)
    return data, data.test.subset(torch.from_numpy(index))


def test_mixed_block_exports_and_infer_agrees_with_fake_quant(fm, tmp_path, capsys):
    from nas.train.trainer import train

    torch.manual_seed(0)
    model = build_model(decode(MIXED))
    train(model, fm[0], epochs=1, batch_size=32, progress=False, measure_inference=False, val_subset=100)
    model.eval()
    out = tmp_path / "bundle"
    manifest = export_model(model, out, fm[1], info={"dataset": "fashion-mnist"})
    assert manifest["payload_bytes"] == manifest["weight_bytes"] == arch_cost(decode(MIXED)).weight_bytes \
        == (out / "payload.bin").stat().st_size
    assert main(["infer", "--bundle", str(out), "--dataset", "fashion-mnist", "--subset", str(TEST_IMAGES),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    paths = [e["path"] for e in manifest["layer_paths"]]
    assert result["layer_paths"] == {p: paths.count(p) for p in ("binary", "integer", "float")}
    assert min(result["layer_paths"].values()) > 0
    fake = build_model(decode(MIXED))
    fake.load_state_dict(load_file(str(out / "weights.safetensors")))
    expected = predictions(fake, fm[1])
    assert len(expected.unique()) > 2
    got = predictions(load_bundle(out)[1], fm[1])
    agreement = int((got == expected).sum()) / TEST_IMAGES
    assert agreement >= 0.99 and manifest["prediction_agreement"] == agreement
    assert result["accuracy"] == manifest["accuracy"] == int((got == fm[1].labels).sum()) / TEST_IMAGES


def test_shipped_layer_space_is_mcu_with_bits_per_layer():
    mcu, layer = load_space(REPO / "search_spaces/mcu.yaml"), load_space(REPO / "search_spaces/mcu-layer.yaml")
    assert layer.bits_per == "layer"
    assert dataclasses.replace(layer, name=mcu.name, path=mcu.path, bits_per="stage") == mcu
    assert any(b.per_layer_bits for a in random_archs(layer, 10, seed=0) for b in a.blocks)


def test_stage_level_params_replay_to_uniform_stages():
    """`nas.cost.extremes` names only stage-level parameters: the missing per-layer ones take
    the stage's pick, so its cheapest member of a per-layer space is a real member."""
    from nas.cost.extremes import parameter_choices
    from nas.space.sample import replay

    space = _space("layer")
    params = {name: values[0] for name, values in parameter_choices(space).items()}
    params.update({"s1.kind": "ir", "s1.bits": "w2a2", "s1.repeats": 2, "s1.expand": 4.0})
    b = replay(space, params).base.blocks[1]
    assert not b.per_layer_bits and (b.w_bits, b.a_bits) == (2, 2) and b.layer_count == 6
