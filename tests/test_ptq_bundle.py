"""`nas compress --bundle B --ptq static8` on a bundle with quantized layers (nas.export.ptq):
its 32-bit layers become 8-bit in the export's own integer semantics, calibrated on training
images, and the result is an ordinary `nas export` bundle run by the integer kernels."""

import json

import pytest
import torch

from nas.cli import main
from nas.compress import prune as P

MIXED = ("in_r8_c1-stem_c16_k3_s1_w8_a8-ir_r1_k3_s2_e2_c16_w32_a32-ir_r1_k3_s1_e2_c16_w4_a4-"
         "head_c0_w8_a8-fc_n10_w8_a8")
QUIET = open("/dev/null", "w")


@pytest.fixture(scope="module")
def digits():
    from nas.data import load_dataset
    return load_dataset("digits")


@pytest.fixture(scope="module")
def bundle(digits, tmp_path_factory):
    from nas.blocks.model import build_model
    from nas.export import export_model
    from nas.space import decode
    torch.manual_seed(0)
    net = build_model(decode(MIXED))
    P.retrain(net, digits, 6, lr=3e-3, log=QUIET)
    out = tmp_path_factory.mktemp("b") / "bundle"
    export_model(net, out, digits.test, info={"dataset": "digits"})
    return out


def test_int8_arch_makes_only_the_32_bit_widths_8_bit():
    from nas.export.ptq import int8_arch
    from nas.space import decode, encode
    assert encode(int8_arch(decode(MIXED))) == MIXED.replace("w32_a32", "w8_a8")
    sparse = MIXED.replace("ir_r1_k3_s1_e2_c16_w4_a4", "ir_r1_k3_s1_e2_c16_p50_cb4_w32_a32")
    assert encode(int8_arch(decode(sparse))) == sparse.replace("c16_w32_a32-ir", "c16_w8_a8-ir")


def test_the_weight_surgery_is_doreFa_8_bit_of_the_float_weight(digits, bundle):
    """Each converted conv computes k_c * DoReFa8(atanh(W / k_c)): W on the odd grid of step
    2 max|W_c| / 255, so the largest error is half a step, and the BatchNorm carries k_c."""
    from nas.export.ptq import quantize_bundle_model
    from nas.export.trial import trained_model
    from nas.quant.integer import weight_codes
    from nas.space import decode
    from nas.weights import read_weights
    state, _ = read_weights(str(bundle / "weights.safetensors"), "w")
    model = trained_model(decode(MIXED), state, bundle, MIXED).eval()
    images = digits.train.batch(torch.arange(128))[0]
    new, rows = quantize_bundle_model(model, images, "minmax")
    converted = [r["layer"] for r in rows]
    old = dict(model.named_modules())
    mods = dict(new.named_modules())
    assert converted and all(r["bits_before"] == "w32a32" and r["bits_after"] == "w8a8" for r in rows)
    for name in converted:
        w = old[name].weight.detach()
        codes, scale = weight_codes(mods[name].weight, 8)
        assert bool((codes % 2 != 0).all()) and int(codes.abs().max()) == 255  # odd, full range
        k = 2 * w.abs().amax(dim=(1, 2, 3))
        step = (k / 255).reshape(-1, 1, 1, 1)
        wq = codes.float() * scale.reshape(-1, 1, 1, 1) * k.reshape(-1, 1, 1, 1)
        assert float(((wq - w).abs() / step).max()) <= 0.5 + 1e-3
    assert all(r["weight_sqnr_db"] > 40 for r in rows)
    signed = {r["layer"]: r["act_signed"] for r in rows}
    assert all(r["act_clip"] > 0 and r["act_sqnr_db"] > 25 for r in rows), rows
    assert len(signed) == len(converted)
    with torch.inference_mode():
        x, y = digits.test.batch(torch.arange(len(digits.test)))
        before = (model(x).argmax(1) == y).float().mean()
        after = (new(x).argmax(1) == y).float().mean()
    assert float(before - after) <= 0.02


def test_nas_compress_ptq_static8_writes_an_integer_export_bundle(bundle, tmp_path, capsys):
    from nas.export.bundle import verify_bundle
    out = tmp_path / "ptq"
    assert main(["compress", "--bundle", str(bundle), "--ptq", "static8", "--calibration", "mse",
                 "--calib-images", "128", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "w32a32->w8a8" in text and "points lost" in text
    m = verify_bundle(out)
    assert "w32" not in m["arch"] and m["payload_bytes"] == m["weight_bytes"] == (out / "payload.bin").stat().st_size
    assert m["ptq"]["calibration"] == "mse" and m["ptq"]["source_arch"] == MIXED
    source = json.loads((bundle / "manifest.json").read_text())
    assert m["ptq"]["source_accuracy"] == source["accuracy"]
    assert source["accuracy"] - m["accuracy"] <= 0.02
    assert m["weight_bytes"] < source["weight_bytes"]
    assert {p for layer, p in _paths(m).items() if layer.startswith("blocks.0")} == {"integer"}
    capsys.readouterr()
    assert main(["infer", "--bundle", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == m["accuracy"]


def _paths(manifest) -> dict:
    return {p["name"]: p["path"] for p in manifest["layer_paths"]}


def test_ptq_dynamic8_of_a_quantized_bundle_is_still_refused(bundle, tmp_path, capsys):
    rc = main(["compress", "--bundle", str(bundle), "--ptq", "dynamic8", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "is quantized" in err and "--ptq static8" in err
