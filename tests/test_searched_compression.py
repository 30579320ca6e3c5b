"""Issue 22 item 5: per-stage sparsity (`p`) and codebook bits (`cb`) as search-space axes.

Priced before training (`nas.cost.layout.searched_layer_bytes`), trained to exactly that
state (`nas.train.sparsify`), written at exactly the predicted bytes (`nas.export.payload`)
and run by `nas infer` (the float path). Real data: scikit-learn's digits.
"""

import math
from pathlib import Path

import pytest
import torch

from nas.cli import main
from nas.cost import arch_cost, layout
from nas.errors import UsageError
from nas.space import decode, encode, load_space, random_archs
from nas.space.sample import space_size

REPO = Path(__file__).resolve().parents[1]
SPARSE_SPACE = REPO / "search_spaces" / "mcu-sparse.yaml"

# every kind, with and without a codebook, pruned and not, SE (not marked) included
ARCH = ("in_r8_c1-stem_c8_k3_s1_w32_a32-ir_r1_k3_s1_e2_c16_se0.25_p75_cb4_w32_a32"
        "-grouped_r1_k3_s2_g2_c16_p50_w32_a32-dense_r1_k3_s1_gr8_c24_cb3_w32_a32"
        "-shift_r1_k3_s1_e2_c24_p90_cb5_w32_a32-head_c0_w32_a32-fc_n10_w32_a32")


# ---- codec ---------------------------------------------------------------------------------

def test_arch_string_round_trips_the_new_keys():
    arch = decode(ARCH)
    assert encode(arch) == ARCH
    b = arch.blocks
    assert (b[0].sparsity, b[0].codebook) == (0.75, 4)
    assert (b[1].sparsity, b[1].codebook) == (0.5, 0)
    assert (b[2].sparsity, b[2].codebook) == (0.0, 3)
    assert (b[3].sparsity, b[3].codebook) == (0.9, 5)  # p90 is exactly 0.9, and 0.9 writes back as p90
    odd = decode(ARCH.replace("p50", "p87.5"))
    assert odd.blocks[1].sparsity == 0.875 and "p87.5" in encode(odd)


def test_absent_keys_mean_none_and_are_never_written():
    plain = "in_r28_c1-stem_c8_k3_s1_w8_a8-ir_r1_k3_s2_e2_c16_w32_a32-head_c0_w8_a8-fc_n10_w8_a8"
    arch = decode(plain)
    assert (arch.blocks[0].sparsity, arch.blocks[0].codebook) == (0.0, 0) and encode(arch) == plain
    assert encode(decode(plain.replace("c16_w32", "c16_p0_cb0_w32"))) == plain


@pytest.mark.parametrize("bad, names", [
    ("p100", ["sparsity=1.0", "block 1", "position"]),
    ("p150", ["sparsity=1.5", "block 1"]),
    ("cb9", ["codebook=9", "1..8", "block 1"]),
    ("p50_p75", ["'p' given twice"]),
    ("p5x", ["'p5x'"]),
])
def test_bad_values_name_the_value_and_the_place(bad, names):
    with pytest.raises(UsageError) as e:
        decode(ARCH.replace("p50", bad))
    assert all(n in str(e.value) for n in names), str(e.value)
    assert "\n" not in str(e.value)


def test_a_quantized_stage_cannot_be_pruned_in_its_own_record():
    with pytest.raises(UsageError, match=r"block 1.*sparsity=0.5.*w8 a8.*expected w32 a32"):
        decode(ARCH.replace("c16_p50_w32_a32", "c16_p50_w8_a8"))


def test_cli_refuses_a_bad_arch_with_exit_2(capsys):
    assert main(["cost", "--arch", ARCH.replace("cb5", "cb12")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "codebook=12" in err[0] and "block 3" in err[0]


# ---- cost ------------------------------------------------------------------------------------

def _record(c_out, c_in_g, k, s, b):
    """The record size written out by hand from the layout's definition (docs/compression.md)."""
    n = c_out * c_in_g * k * k
    nnz = n - round(s * n)
    vb = b or 32
    dense, bitmap = math.ceil(n * vb / 8), math.ceil(n / 8) + math.ceil(nnz * vb / 8)
    book = (2 ** b) * 4 + c_out * 4 if b else 0
    return 5 + book + min(dense, bitmap) + 4 * c_out


def test_weight_bytes_price_each_searched_conv_exactly():
    arch = decode(ARCH)
    cost = arch_cost(arch)
    layers = {layer.name: layer for layer in cost.layers}
    # ir e2 on 8 channels: pw 8->16, dw 3x3 on 16, SE (not marked: plain w32 records), pwl 16->16
    assert layers["blocks.0.0.conv_pw"].weight_bytes == _record(16, 8, 1, 0.75, 4) == 229
    assert layers["blocks.0.0.conv_dw"].weight_bytes == _record(16, 1, 3, 0.75, 4)
    assert layers["blocks.0.0.se.conv_reduce"].weight_bytes == layout.layer_bytes(32, 2, 16)
    assert layers["blocks.0.0.conv_pwl"].weight_bytes == _record(16, 16, 1, 0.75, 4)
    assert layers["blocks.1.0.conv_g"].weight_bytes == _record(16, 8, 3, 0.5, 0)
    assert layers["blocks.2.0.layers.0.conv2"].weight_bytes == _record(8, 32, 3, 0.0, 3)
    assert layers["blocks.3.0.conv_pw"].weight_bytes == _record(48, 24, 1, 0.9, 5)
    assert layers["stem"].weight_bytes == layout.layer_bytes(32, 8, 1, 3, 3)  # unmarked
    # the same arch without the keys: only the marked convs change, params do not
    plain = arch_cost(decode(ARCH.replace("_p75_cb4", "").replace("_p50", "").replace("_cb3", "")
                             .replace("_p90_cb5", "")))
    assert plain.params == cost.params and plain.macs == cost.macs
    assert cost.weight_bytes < plain.weight_bytes


def test_layout_picks_dense_or_bitmap_whichever_is_smaller():
    assert layout.searched_encoding(1000, 0.0, 4) == (layout.DENSE, 500)
    assert layout.searched_encoding(1000, 0.5, 0) == (layout.BITMAP, 125 + 2000)
    assert layout.searched_encoding(1000, 0.02, 0) == (layout.DENSE, 4000)  # 125 + 3920 > 4000
    assert layout.searched_encoding(1000, 0.25, 4) == (layout.DENSE, 500)  # 125 + 375 = 500: tie -> dense
    assert layout.searched_nnz(10, 0.25) == 8  # round(2.5) = 2 (half to even), as torch's prune rounds


# ---- space file ----------------------------------------------------------------------------

def test_sparse_space_draws_the_axes_only_for_w32a32_stages():
    space = load_space(SPARSE_SPACE)
    assert [st.sparsity for st in space.stages] == [(0.0,)] + [(0.0, 0.5, 0.75, 0.9)] * 3
    assert space_size(space) > space_size(load_space(REPO / "search_spaces" / "mcu.yaml"))
    archs = random_archs(space, 60, seed=1)
    marked = [b for a in archs for b in a.blocks if b.compressed]
    assert marked and all((b.w_bits, b.a_bits) == (32, 32) for b in marked)
    assert all(not b.compressed for a in archs for b in a.blocks if b.w_bits != 32)
    for a in archs:  # every sampled member decodes, round trips and costs
        assert decode(encode(a)) == a and arch_cost(a).weight_bytes > 0


def _space_with(tmp_path, stage_extra: str, top: str = "") -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(f"name: t\ninput: {{resolution: 8}}\n{top}stem: {{channels: [8], bits: w8a8}}\nstages:\n"
                 f"  - {{channels: 16, kinds: [ir], bits: [w8a8, w32a32]{stage_extra}}}\n", encoding="utf-8")
    return p


@pytest.mark.parametrize("extra, top, names", [
    (", sparsity: [0, 1.5]", "", ["s.yaml:", "stages[0].sparsity", "1.5"]),
    (", codebook: [0, 9]", "", ["stages[0].codebook", "9"]),
    (", sparsity: [0, 0.5]", "bits_per: layer\n", ["stages[0].sparsity", "bits_per: stage"]),
])
def test_bad_space_axes_give_one_line_with_file_and_key(tmp_path, extra, top, names):
    with pytest.raises(UsageError) as e:
        load_space(_space_with(tmp_path, extra, top))
    assert all(n in str(e.value) for n in names), str(e.value)


def test_axes_need_w32a32_among_the_stage_bits(tmp_path):
    p = _space_with(tmp_path, ", sparsity: [0, 0.5]")
    p.write_text(p.read_text().replace("[w8a8, w32a32]", "[w8a8, w4a4]"))
    with pytest.raises(UsageError, match=r"stages\[0\].sparsity.*needs w32a32"):
        load_space(p)


# ---- built module == cost graph ------------------------------------------------------------

def test_marked_modules_are_the_cost_models_searched_ops():
    from nas.blocks.model import build_model
    from nas.cost.graph import expand

    arch = decode(ARCH)
    ops = [op for op in expand(arch).ops if op.kind in ("conv", "linear")]
    layers = build_model(arch).quant_layers()
    assert len(ops) == len(layers)
    got = [(vars(q.module).get("sparsity", 0.0), vars(q.module).get("codebook", 0)) for q in layers]
    assert got == [(op.sparsity, op.codebook) for op in ops]
    assert sum(1 for s, c in got if s or c) == sum(b.layer_count for b in arch.blocks)  # SE convs unmarked


# ---- training ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    from nas.data import load_dataset

    return load_dataset("digits")


def test_cubic_schedule():
    from nas.train.sparsify import cubic_sparsity

    assert cubic_sparsity(10, 10, 40, 0.9) == 0.0 and cubic_sparsity(40, 10, 40, 0.9) == 0.9
    assert cubic_sparsity(99, 10, 40, 0.9) == 0.9
    assert cubic_sparsity(25, 10, 40, 0.8) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    values = [cubic_sparsity(t, 10, 40, 0.9) for t in range(50)]
    assert values == sorted(values)


def _trained(digits, epochs, **kw):
    from nas.blocks.model import build_model
    from nas.train import train

    torch.manual_seed(0)
    model = build_model(decode(ARCH))
    result = train(model, digits, epochs=epochs, batch_size=32, progress=False, measure_inference=False, **kw)
    return model, result


def test_training_ramps_masks_then_ties_codebooks_and_ends_exact(digits):
    """Per epoch (6 epochs: pruning from 1/6 to 2/3 of the steps, codebook from 3/4): the pruned
    count grows to exactly round(s n) by epoch 4, the codebook is tied in epoch 5 and its
    centroids still train in epoch 6; the model comes back as plain weights in that state."""
    from torch.nn.utils import prune

    from nas.quant.codebook import shared_of
    from nas.train.sparsify import final_pruned, marked_layers

    seen = []

    def on_epoch_end(epoch, acc):
        row = {}
        for name, m in marked_layers(model):
            w = m.weight.detach()
            book = shared_of(m)
            row[name] = (int((w == 0).sum()), None if book is None else book.codebook().detach().clone())
        seen.append(row)

    from nas.blocks.model import build_model
    from nas.train import train

    torch.manual_seed(0)
    model = build_model(decode(ARCH))
    result = train(model, digits, epochs=6, batch_size=32, progress=False, measure_inference=False,
                   on_epoch_end=on_epoch_end, ema_decay="auto")
    layers = dict(marked_layers(model))
    assert len(layers) == 10 and result.ema_decay is None
    for name, m in layers.items():
        target = final_pruned(m)
        counts = [row[name][0] for row in seen]
        if m.sparsity:
            assert counts[0] < target and 0 < counts[1] < target and counts[3] == target, (name, counts)
            assert counts == sorted(counts)
        if m.codebook:
            assert seen[3][name][1] is None and seen[4][name][1] is not None, name
            assert not torch.equal(seen[4][name][1], seen[5][name][1]), name  # centroids fine-tuned
            book = seen[5][name][1]
            assert set(torch.unique(m.weight.detach()).tolist()) <= set(book.tolist())
        assert not prune.is_pruned(m) and shared_of(m) is None
        w = m.weight.detach()
        assert int((w == 0).sum()) == (target if m.sparsity else int((w == 0).sum()))
        if m.codebook:
            assert torch.unique(w).numel() <= 2 ** m.codebook
        assert not torch.signbit(w[w == 0]).any()  # pruned weights are +0.0
    keys = list(model.state_dict())
    assert not any("_orig" in k or "_mask" in k or "parametrizations" in k for k in keys)
    assert result.accuracy > 0.5  # 10 classes: it learned


def test_a_run_cut_short_still_ends_in_the_priced_state(digits):
    from nas.train.sparsify import check_trained, marked_layers

    model, result = _trained(digits, 3, max_seconds=0.0)
    assert result.stopped_early == "max_seconds" and result.steps == 1
    for name, m in marked_layers(model):
        check_trained(name, m)  # exactly round(s n) zeros, at most 2^b values


# ---- export and `nas infer` ----------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(digits, tmp_path_factory):
    from nas.export.bundle import export_model

    model, _ = _trained(digits, 3)
    model.eval()
    out = tmp_path_factory.mktemp("searched") / "bundle"
    manifest = export_model(model, out, digits.test, info={"dataset": "digits"})
    return model, out, manifest


def _dense_twin_logits(model, x):
    """The same trained weights written as ordinary dense w32 records (marks cleared) and run
    by the same deployable float path: the reference the searched records must reproduce."""
    from nas.blocks.model import build_model
    from nas.export.convert import convert
    from nas.export.fold import geometries, model_records
    from nas.export.payload import decode_payload, encode_payload

    def unmark(net):
        for m in net.modules():
            if "sparsity" in vars(m):
                m.sparsity, m.codebook = 0.0, 0
        return net

    import copy

    dense, _ = encode_payload(model_records(unmark(copy.deepcopy(model))))
    twin = unmark(build_model(model.arch)).eval()
    twin.layer_paths = convert(twin, decode_payload(dense, geometries(twin)), True)
    with torch.inference_mode():
        return twin(x), len(dense)


def test_payload_is_exactly_the_predicted_bytes(exported):
    from nas.export.payload import decode_payload, encode_payload
    from nas.export.fold import geometries

    model, out, manifest = exported
    cost = arch_cost(model.arch)
    data = (out / "payload.bin").read_bytes()
    assert len(data) == cost.weight_bytes == manifest["weight_bytes"]
    index = manifest["payload"]["layers"]
    records = decode_payload(data, geometries(model))
    searched = [r for r in records if r.geom.searched]
    assert len(searched) == 10
    for rec in searched:
        g = rec.geom
        assert rec.geom.nbytes == layout.searched_layer_bytes(g.c_out, g.c_in_g, g.k_h, g.k_w, g.sparsity, g.codebook)
        w = torch.from_numpy(rec.weight)
        assert int((w != 0).sum()) == layout.searched_nnz(g.n, g.sparsity)  # exactly the priced survivors
        if g.codebook:
            assert torch.equal(w, model.get_submodule(g.name).weight.detach())  # codebook[index] = the trained W
    assert encode_payload(records)[0] == data  # read back and written again: the same bytes
    assert [e["bytes"] for e in index] == [c.weight_bytes for c in cost.layers if c.weight_bytes]
    entry = next(e for e in index if e["name"] == "blocks.3.0.conv1")  # the shift block's first 1x1 conv
    assert (entry["sparsity"], entry["codebook"], entry["encoding"]) == (0.9, 5, "bitmap")


def test_nas_infer_runs_the_payload_exactly(exported, digits, capsys):
    """`nas infer`'s network, decoded from payload.bin alone, gives logits equal (atol = 0) to
    the trained model's weights exported densely through the same float path; against the
    fake-quant model with BatchNorm unfolded only the last float bits differ (folding rounds
    differently), and every prediction agrees."""
    import json

    from nas.export.bundle import load_bundle

    model, out, manifest = exported
    test = digits.test
    x, y = test.batch(torch.arange(len(test)))
    _, packed = load_bundle(out)
    with torch.inference_mode():
        ours, trained = packed(x), model(x)
    reference, dense_bytes = _dense_twin_logits(model, x)
    assert torch.equal(ours, reference)
    assert torch.equal(ours.argmax(1), trained.argmax(1))
    assert (ours - trained).abs().max() < 1e-4
    assert dense_bytes > len((out / "payload.bin").read_bytes())
    assert main(["infer", "--bundle", str(out), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["accuracy"] == pytest.approx(float((ours.argmax(1) == y).float().mean()))


def test_integer_only_formats_refuse_a_searched_layer_in_one_line(exported):
    from nas.export import c as c_export
    from nas.export.fold import geometries
    from nas.export.tflite import refusal

    model, out, _ = exported
    why = refusal(geometries(model))
    assert why.startswith("layer blocks.0.0.conv_pw is a searched sparse / codebook record (sparsity 0.75, codebook 4")
    with pytest.raises(UsageError, match=r"^--format c: layer blocks.0.0.conv_pw is a searched sparse / codebook"):
        c_export.write(out, model.arch, (out / "payload.bin").read_bytes(), {}, None, None)


def test_weights_not_trained_to_the_arch_are_refused_at_export():
    from nas.blocks.model import build_model
    from nas.export.bundle import payload_of

    torch.manual_seed(0)
    with pytest.raises(UsageError, match=r"^layer blocks.0.0.conv_pw: 128 distinct weights; its 4-bit codebook"):
        payload_of(build_model(decode(ARCH)).eval())  # untrained: nothing shared
    with pytest.raises(UsageError, match=r"^layer blocks.0.0.conv_pw: 128 of 128 weights survive; the arch's "
                                         r"sparsity 0.75 keeps exactly 32"):
        payload_of(build_model(decode("in_r8_c1-stem_c8_k3_s1_w32_a32-ir_r1_k3_s1_e2_c16_p75_w32_a32-head_c0_w32_a32"
                                      "-fc_n10_w32_a32")).eval())  # untrained: nothing pruned
