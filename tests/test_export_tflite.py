"""`model.tflite` (nas.export.tflite) on the real runtimes: litert-torch converts, the LiteRT
interpreter agrees with `nas infer` on the test split, every tensor is int8, TFLite Micro's
arena is measured beside `peak_act_bytes`, and what the format cannot hold is refused in one line.

Real data: scikit-learn's digits and a small model trained on it (every block kind, SE,
hard-swish, residual adds, 2/4/8-bit weights, 4- and 8-bit activations). The tests that need
the extra (pip install nas[tflite]) skip without it; the missing-extra error runs everywhere.
"""

import subprocess
import sys

import pytest
import torch

from nas.blocks.model import build_model
from nas.data import load_dataset
from nas.errors import UsageError
from nas.export import export_model, load_bundle, verify_bundle
from nas.export.bundle import payload_of, predictions
from nas.space import decode

TRAINED = ("in_r8_c1-stem_c16_k3_s1_w8_a8-ir_r1_k3_s1_e3_c16_se0.25_w4_a8_hs-shift_r1_k3_s2_e3_c24_w4_a8"
           "-grouped_r1_k3_s1_g2_c24_w2_a8-dense_r1_k3_s1_gr8_c32_w4_a4-head_c64_w8_a8-fc_n10_w8_a8")
BINARY = "in_r8_c1-stem_c8_k3_s1_w8_a8-grouped_r1_k3_s1_g1_c16_w1_a1-head_c0_w8_a8-fc_n10_w8_a8"
EPOCHS = 15  # digits at 8 x 8: about a minute on one loaded core, ~98% test accuracy

pytestmark = pytest.mark.usefixtures("one_thread")


def _extra():
    for name in ("litert_torch", "ai_edge_litert", "tflite_micro"):
        pytest.importorskip(name, reason="the tflite extra is not installed (pip install nas[tflite])")
    from nas.export import tflite

    return tflite


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def bundle(digits, tmp_path_factory):
    _extra()
    from nas.train.trainer import train

    torch.manual_seed(0)
    model = build_model(decode(TRAINED))
    train(model, digits, epochs=EPOCHS, batch_size=32, progress=False, measure_inference=False, val_subset=100)
    out = tmp_path_factory.mktemp("tflite") / "bundle"
    manifest = export_model(model.eval(), out, digits.test, info={"dataset": "digits"}, formats=("tflite",))
    return out, manifest


def test_bundle_lists_and_verifies_model_tflite(bundle):
    tflite = _extra()
    out, manifest = bundle
    entry = manifest["tflite"]
    path = out / tflite.FILE
    assert manifest["files"][tflite.FILE]["bytes"] == path.stat().st_size == entry["bytes"]
    assert entry["weight_bytes"] == manifest["weight_bytes"]
    verify_bundle(out)


def test_every_tensor_is_int8(bundle):
    """Full-integer: no float activation tensor, no DEQUANTIZE, in the converted file."""
    tflite = _extra()
    out, manifest = bundle
    live = tflite.tensor_liveness((out / tflite.FILE).read_bytes())
    assert live["activation_dtypes"] == ["int8"], live["activation_dtypes"]
    assert "DEQUANTIZE" not in live["op_counts"], live["op_counts"]
    assert manifest["tflite"]["full_integer"] is True
    assert sum(v for k, v in live["op_counts"].items() if k in ("CONV_2D", "DEPTHWISE_CONV_2D")) >= 8


def test_litert_agrees_with_nas_infer_on_the_test_split(bundle, digits):
    tflite = _extra()
    out, manifest = bundle
    _, packed = load_bundle(out)
    ours = predictions(packed, digits.test)
    arch = decode(manifest["arch"])
    payload = (out / "payload.bin").read_bytes()
    theirs = tflite.litert_predictions((out / tflite.FILE).read_bytes(), digits.test, tflite.input_site(arch, payload))
    agreement = int((theirs == ours).sum()) / len(ours)
    assert agreement == manifest["tflite"]["prediction_agreement"]
    assert agreement >= 0.995, f"{int((theirs != ours).sum())} of {len(ours)} test images disagree"


def test_micro_arena_beside_peak_act_bytes(bundle):
    """TFLite Micro runs the file and reports its arena; its planned (head) part is within
    1.10 x the cost model's peak_act_bytes, or the manifest explains the difference op by op."""
    _extra()
    _, manifest = bundle
    micro, peak = manifest["tflite"]["micro"], manifest["peak_act_bytes"]
    assert micro["ran"] is True, micro
    assert micro["arena_bytes"] == micro["head_bytes"] + micro["tail_bytes"] and micro["head_bytes"] > 0
    # the same int8 graph: TFLite Micro's kernels and LiteRT's reference kernels, bit for bit
    assert micro["logits_equal_litert_reference_kernels"] is True
    if micro["head_bytes"] > 1.10 * peak:
        assert manifest["tflite"]["arena_explained"]["tensors_not_in_cost_model"], manifest["tflite"]
    else:
        assert "arena_explained" not in manifest["tflite"]


def test_own_scales_at_every_site(bundle):
    """The PACT sites keep the model's own scales: the graph input is the stem's site."""
    tflite = _extra()
    out, manifest = bundle
    arch = decode(manifest["arch"])
    scale, zp, lo, alpha = tflite.input_site(arch, (out / "payload.bin").read_bytes())
    assert manifest["tflite"]["input"]["scale"] == scale and manifest["tflite"]["input"]["zero_point"] == zp
    assert all(r["input"] == "own PACT scale" for r in manifest["tflite"]["layers"] if ".se." not in r["layer"])


def test_one_bit_layer_is_refused_naming_it():
    tflite = _extra()
    arch = decode(BINARY)
    payload, _ = payload_of(build_model(arch).eval())
    with pytest.raises(UsageError, match=r"layer blocks\.\S+ is 1-bit"):
        tflite.qdq_model(arch, payload)


def test_missing_extra_is_one_line_exit_2(tmp_path):
    """Without litert-torch (hidden from the child's imports), `--format tflite` fails before any
    work: one line naming the extra, exit 2. Runs whether or not the extra is installed."""
    code = ("import sys; sys.modules['litert_torch'] = None; from nas.cli import main; "
            f"sys.exit(main(['export', '--study', 'none', '--best', '-o', {str(tmp_path / 'out')!r}, "
            "'--format', 'tflite']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install nas[tflite]" in lines[0], r.stderr
    assert not (tmp_path / "out").exists()

