"""Compressed bundles (`nas.compress.bundle`): `nas compress --bundle` takes a `nas export` bundle,
writes a bundle whose payload is the predicted weight_bytes, and `nas infer` runs the network
decoded from that payload with the compressed model's logits, bit for bit. Real data: sklearn
digits."""

import copy
import json

import pytest
import torch

from nas.cli import main
from nas.compress import prune as P
from nas.compress.bundle import load_compressed_bundle, model_from_payload, payload_index, skeleton
from nas.compress.model import lenet5
from nas.compress.pipeline import CompressConfig, compress
from nas.compress.ptq import PTQConfig

ARCH32 = "in_r8_c1-stem_c16_k3_s1_w32_a32-ir_r1_k3_s2_e2_c16_w32_a32-head_c0_w32_a32-fc_n10_w32_a32"
QUIET = open("/dev/null", "w")


@pytest.fixture(scope="module")
def digits():
    from nas.data import load_dataset
    return load_dataset("digits")


def _export(arch, digits, out):
    from nas.blocks.model import build_model
    from nas.export import export_model
    from nas.space import decode
    torch.manual_seed(0)
    net = build_model(decode(arch))
    P.retrain(net, digits, 8, lr=3e-3, log=QUIET)
    export_model(net, out, digits.test, info={"dataset": "digits"})
    return out


@pytest.fixture(scope="module")
def exported(digits, tmp_path_factory):
    return _export(ARCH32, digits, tmp_path_factory.mktemp("b") / "bundle")


@pytest.fixture(scope="module")
def compressed(exported, tmp_path_factory):
    out = tmp_path_factory.mktemp("c") / "compressed"
    assert main(["compress", "--bundle", str(exported), "--prune", "0.5", "--share", "4", "--retrain-epochs", "3",
                 "--lr", "3e-3", "-o", str(out)]) == 0
    return out


def test_compress_bundle_writes_the_predicted_payload_and_the_table(compressed, exported):
    m = json.loads((compressed / "manifest.json").read_text())
    exported_manifest = json.loads((exported / "manifest.json").read_text())
    assert m["format"] == "nas-compressed/1" and m["arch"] == ARCH32 and m["dataset"] == "digits"
    assert m["source"]["bundle"] == str(exported) and m["source"]["bundle_accuracy"] == exported_manifest["accuracy"]
    size = (compressed / "payload.bin").stat().st_size
    assert size == m["weight_bytes"] == m["payload_bytes"] == sum(e["bytes"] for e in m["payload"]["layers"])
    assert m["fp32_weight_bytes"] / m["weight_bytes"] == m["ratio"] > 3
    assert m["test_accuracy_before"] > 0.8 and m["test_accuracy_after"] > 0.6
    assert [r["layer"] for r in m["layers"]] == [e["layer"] for e in m["payload"]["layers"]]
    assert all(r["sparsity"] >= 0.49 and r["codebook"] == 16 for r in m["layers"])
    assert m["identical_logits"] == m["test_images"] == exported_manifest["test_images"]


def test_infer_runs_the_compressed_bundle_from_its_payload(compressed, capsys):
    capsys.readouterr()
    assert main(["infer", "--bundle", str(compressed), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    m = json.loads((compressed / "manifest.json").read_text())
    assert r["dataset"] == "digits" and r["images"] == m["test_images"]
    assert r["accuracy"] == m["test_accuracy_after"] == m["accuracy"]
    assert r["payload_bytes"] == m["weight_bytes"] and r["layer_paths"] == {"float": len(m["layers"])}


def test_payload_network_gives_the_logits_of_the_saved_compressed_weights(compressed, digits):
    from nas.weights import read_weights
    manifest, loaded = load_compressed_bundle(compressed)
    ref = skeleton(manifest)
    state, _ = read_weights(compressed / "weights.safetensors")
    ref.load_state_dict(state)
    ref.eval()
    x, _ = digits.test.batch(torch.arange(len(digits.test)))
    with torch.no_grad():
        assert torch.equal(loaded(x), ref(x))  # atol = 0


def test_a_compressed_bundle_is_refused_by_compress(compressed, tmp_path, capsys):
    rc = main(["compress", "--bundle", str(compressed), "--prune", "0.5", "-o", str(tmp_path / "again")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "already compressed" in err and str(compressed) in err
    assert not (tmp_path / "again").exists()


def test_a_damaged_compressed_payload_is_one_line(compressed, tmp_path, capsys):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(compressed, bad)
    data = bytearray((bad / "payload.bin").read_bytes())
    data[10] ^= 0xFF
    (bad / "payload.bin").write_bytes(bytes(data))
    rc = main(["infer", "--bundle", str(bad)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "payload.bin does not match" in err


def test_a_bundle_with_quantized_layers_is_refused(digits, tmp_path, capsys):
    bundle = _export(ARCH32.replace("fc_n10_w32_a32", "fc_n10_w8_a8"), digits, tmp_path / "q")
    capsys.readouterr()
    rc = main(["compress", "--bundle", str(bundle), "--prune", "0.5", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "layer fc is quantized (w8 a8)" in err
    assert not (tmp_path / "o").exists()


# ---- every encoding: the network decoded from the payload == the compressed model, atol = 0 ----

@pytest.fixture(scope="module")
def lenet16(digits):
    data = digits.resized(16)
    torch.manual_seed(0)
    net = lenet5(1, 16, 10)
    P.retrain(net, data, 2, lr=3e-3, log=QUIET)
    return net, data


@pytest.mark.parametrize("config", [
    CompressConfig(prune=0.8, share=4, retrain_epochs=1),
    CompressConfig(prune=0.5, structured=True, share=5, retrain_epochs=1),  # channels removed: shapes change
    CompressConfig(prune=0.97, retrain_epochs=0),  # relative / bitmap float32 values
    CompressConfig(pq=(5, 16), retrain_epochs=1),
    CompressConfig(ptq=PTQConfig("static"), calib_images=128),
    CompressConfig(ptq=PTQConfig("dynamic"), calib_images=128),
], ids=["prune-share", "structured-share", "prune-only", "pq", "static8", "dynamic8"])
def test_decoded_network_is_bit_exact_with_the_compressed_model(lenet16, config):
    net, data = copy.deepcopy(lenet16[0]), lenet16[1]
    result = compress(net, data, config, log=QUIET)
    ptq = None if config.ptq is None else {"mode": config.ptq.mode, "bits": 8,
                                           "act_symmetric": config.ptq.act_symmetric}
    manifest = {"source": {"model": "lenet5", "arch": None, "width": None},
                "input": {"in_chs": 1, "resolution": 16}, "num_classes": 10, "ptq": ptq,
                "payload": {"layers": payload_index(net, ptq)}}
    assert sum(e["bytes"] for e in manifest["payload"]["layers"]) == len(result["payload"]) == result["weight_bytes"]
    loaded = model_from_payload(manifest, result["payload"])
    net.eval()
    x, y = data.test.batch(torch.arange(len(data.test)))
    with torch.no_grad():
        ours, theirs = loaded(x), net(x)
    assert torch.equal(ours, theirs)  # atol = 0
    assert int((ours.argmax(1) == y).sum()) / len(y) == result["test_accuracy_after"]
    if config.structured:
        assert [tuple(m.weight.shape) for _, m in P.layers_of(loaded)][0][0] == 10  # 20 -> 10 channels
