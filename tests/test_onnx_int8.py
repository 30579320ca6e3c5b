"""`model.int8.onnx` (nas.export.onnx_int8) on real onnxruntime: int8 kernels actually run,
predictions agree with `nas infer`'s packed model, the file stays near `weight_bytes`, and a
bundle int8 ONNX cannot hold is refused in one line.

Real data: scikit-learn's digits, a small model trained on it (every block kind, SE,
hard-swish, residual adds, 2/4/8-bit weights, 4- and 8-bit activations). One thread.
"""

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from nas.blocks.model import build_model
from nas.data import load_dataset
from nas.export import export_model, load_bundle, verify_bundle
from nas.export import onnx_int8
from nas.export.bundle import payload_of, predictions
from nas.space import decode

TRAINED = ("in_r8_c1-stem_c16_k3_s1_w8_a8-ir_r1_k3_s1_e3_c16_se0.25_w4_a8_hs-shift_r1_k3_s2_e3_c24_w4_a8"
           "-grouped_r1_k3_s1_g2_c24_w2_a8-dense_r1_k3_s1_gr8_c32_w4_a4-head_c64_w8_a8-fc_n10_w8_a8")
EIGHT_BIT = ("in_r28_c1-stem_c16_k3_s1_w8_a8-ir_r2_k3_s2_e6_c32_w8_a8-grouped_r2_k3_s2_g2_c64_w8_a8"
             "-shift_r1_k3_s1_e3_c96_w8_a8-head_c256_w8_a8-fc_n10_w8_a8")
WIDE_LAYER = "in_r8_c1-stem_c8_k3_s1_w8_a8-ir_r1_k3_s2_e2_c16_w32_a32-head_c0_w8_a8-fc_n10_w8_a8"
EPOCHS = 15  # digits at 8 x 8: about a minute on one loaded core, ~98% test accuracy
SIZE_SLACK = 1.15  # bytes <= SIZE_SLACK * weight_bytes + onnx_int8.GRAPH_OVERHEAD_BYTES (8-bit weights)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread per module


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def bundle(digits, tmp_path_factory):
    from nas.train.trainer import train

    torch.manual_seed(0)
    model = build_model(decode(TRAINED))
    train(model, digits, epochs=EPOCHS, batch_size=32, progress=False, measure_inference=False, val_subset=100)
    out = tmp_path_factory.mktemp("int8") / "bundle"
    manifest = export_model(model.eval(), out, digits.test, info={"dataset": "digits"})
    return out, manifest


def test_bundle_lists_and_verifies_the_int8_model(bundle):
    out, manifest = bundle
    entry = manifest["int8_onnx"]
    path = out / onnx_int8.FILE
    assert entry["file"] == onnx_int8.FILE and path.is_file()
    assert manifest["files"][onnx_int8.FILE]["bytes"] == path.stat().st_size == entry["bytes"]
    assert entry["weight_bytes"] == manifest["weight_bytes"]
    assert entry["latency_measured_ms"] > 0 and entry["float_onnx_latency_measured_ms"] > 0
    model = onnx.load(str(path))
    assert [o.version for o in model.opset_import if o.domain == ""] == [onnx_int8.OPSET]
    assert not [n for n in model.graph.node if n.domain == onnx_int8.DOMAIN]  # no placeholder left
    verify_bundle(out)
    with open(path, "r+b") as f:  # one flipped byte: the bundle no longer verifies
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(Exception, match="model.int8.onnx does not match"):
        verify_bundle(out)
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b)


def test_agrees_with_nas_infer_on_the_test_split(bundle, digits):
    out, manifest = bundle
    _, packed = load_bundle(out)
    ours = predictions(packed, digits.test)
    theirs = onnx_int8.ort_predictions(onnx_int8.session(out / onnx_int8.FILE), digits.test)
    agreement = int((theirs == ours).sum()) / len(ours)
    assert agreement == manifest["int8_onnx"]["prediction_agreement"]
    assert agreement >= 0.995, f"{int((theirs != ours).sum())} of {len(ours)} test images disagree"


def test_int8_capable_convs_run_on_int8_kernels(bundle, digits, tmp_path):
    """onnxruntime's profiler lists the kernels it ran: every conv / linear with int8 weights
    and a 2..8-bit input must be a QLinearConv / QGemm; float Conv / Gemm only for the rest
    (here: the SE convs, whose input is float). A shift block's shift is a one-hot depthwise
    conv in ONNX (`nas.blocks.layers.Shift`), which onnxruntime runs as a QLinearConv too."""
    from nas.blocks.layers import Shift

    out, manifest = bundle
    layers = manifest["int8_onnx"]["layers"]
    x, _ = digits.test.batch(torch.arange(1))
    kernels = onnx_int8.executed_kernels(out / onnx_int8.FILE, x, tmp_path)
    int8_convs = [r for r in layers if r["int8_kernel"] and r["layer"] != "fc"]
    float_layers = [r for r in layers if not r["int8_kernel"]]
    assert float_layers and all(".se." in r["layer"] for r in float_layers)
    shifts = sum(isinstance(m, Shift) for m in build_model(decode(manifest["arch"])).modules())
    assert shifts == 1
    assert kernels.get("QLinearConv", 0) == len(int8_convs) + shifts, kernels
    assert kernels.get("QGemm", 0) == 1, kernels
    assert onnx_int8.float_convs_in(kernels) == len(float_layers), kernels


def test_weights_are_int8_where_no_kernel_can_saturate(bundle):
    """Weights within ±63 (the 1/2/4-bit layers: widened to that bound) are int8 at zero point
    0, the fast u8 x s8 kernels' form; wider ones (8-bit layers) uint8 at zero point 128, since
    u8 x s8 without VNNI sums pairs in saturating int16 (2 * 255 * 63 < 32,767 <= 2 * 255 * 64)."""
    out, manifest = bundle
    model = onnx.load(str(out / onnx_int8.FILE))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    bits = {r["layer"]: r for r in manifest["int8_onnx"]["layers"]}
    seen = set()
    for name, r in bits.items():
        if not r["int8_kernel"]:
            continue
        stored = next(v for k, v in inits.items() if k.rsplit("_", 1)[0] == name + ".weight_q")  # name_<n>
        zero = next(v for k, v in inits.items() if k.rsplit("_", 1)[0] == name + ".w_zero")
        assert r["weight_dtype"] == ("int8" if stored.dtype == np.int8 else "uint8 (zero point 128)")
        if r["w_bits"] < 8:
            assert stored.dtype == np.int8 and np.abs(stored).max() <= onnx_int8.SATURATION_FREE, name
            assert zero.dtype == np.int8 and not zero.any(), name
        else:
            assert stored.dtype == np.uint8 and zero.dtype == np.uint8 and (zero == onnx_int8.WEIGHT_ZERO_POINT).all()
        seen.add(stored.dtype)
    assert seen == {np.dtype(np.int8), np.dtype(np.uint8)}


def test_file_size_near_weight_bytes():
    """8-bit weights: one byte each in both files; per channel the int8 model adds a bias
    scale (4 bytes) and a weight zero point (1), and the graph itself is the stated overhead."""
    arch = decode(EIGHT_BIT)
    payload, _ = payload_of(build_model(arch).eval())
    built = onnx_int8.build(arch, payload, torch.zeros(1, 1, 28, 28))
    size = len(built.model.SerializeToString())
    assert size <= SIZE_SLACK * len(payload) + onnx_int8.GRAPH_OVERHEAD_BYTES, (size, len(payload))


@pytest.mark.parametrize("steps,unsigned", [(1, False), (3, True), (7, False), (15, True), (127, False), (255, True)])
def test_finer_output_quantizer_changes_no_site_code(steps, unsigned, fashion_batch):
    """Rounding to 1/n of a site's step (n = refinement, odd) and then to the site's step
    gives the site's codes exactly, on real activations (a Fashion-MNIST batch, scaled)."""
    n = onnx_int8.refinement(steps, unsigned)
    assert n % 2 == 1 and n * steps <= (255 if unsigned else 128)
    alpha = np.float32(3.0)
    s = np.float32(alpha / np.float32(steps))
    fine = np.float32(s / np.float32(n))
    x = fashion_batch[0].numpy().astype(np.float32).reshape(-1) * np.float32(2.5)
    lo = np.float32(0) if unsigned else -alpha
    x = np.clip(x, lo, alpha)
    direct = np.rint(x / s)
    twice = np.rint((np.rint(x / fine) * fine).astype(np.float32) / s)
    assert np.array_equal(direct, twice)


def test_sub_byte_weights_are_exact_and_eight_bit_within_half_a_level():
    rng_codes = np.arange(4 * 30).reshape(4, 30)
    for bits in (1, 2, 4):
        levels = 1 if bits == 1 else 2 ** bits - 1
        w_int = (2 * (rng_codes % (levels + 1)) - levels) if bits > 1 else np.where(rng_codes % 2, 1, -1)
        scale = np.linspace(0.5, 2.0, 4, dtype=np.float32)
        weight, w_scale = onnx_int8._widened(w_int, scale, limit=onnx_int8.SATURATION_FREE)
        k = weight.astype(np.int64) // w_int  # the whole factor per channel
        assert np.array_equal(weight.astype(np.int64), w_int * k) and np.abs(weight).max() <= 63
        assert np.abs(weight).max() > 63 - np.abs(w_int).max()  # the largest whole factor
        assert np.array_equal(k.min(axis=1), k.max(axis=1))
    w_int = 2 * np.arange(256) - 255
    r = onnx_int8.eight_bit_int8(w_int).astype(np.int64)
    assert np.abs(2 * r - w_int).max() == 1 and r.min() == -128 and r.max() == 127


def test_a_layer_int8_onnx_cannot_hold_is_refused(digits, tmp_path):
    torch.manual_seed(0)
    model = build_model(decode(WIDE_LAYER)).eval()
    out = tmp_path / "bundle"
    manifest = export_model(model, out, digits.test, info={"dataset": "digits"})
    assert manifest["int8_onnx"]["file"] is None and "32-bit" in manifest["int8_onnx"]["skipped"]
    assert not (out / onnx_int8.FILE).exists() and onnx_int8.FILE not in manifest["files"]
    verify_bundle(out)
    run = subprocess.run([sys.executable, "-m", "nas.export.onnx_int8", "--bundle", str(out), "-o",
                          str(tmp_path / "m.onnx")], capture_output=True, text=True)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "blocks.0.0.conv_pw" in lines[0] and "32-bit" in lines[0], run.stderr
    assert not (tmp_path / "m.onnx").exists()
