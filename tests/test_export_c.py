"""`nas export --format c`: the C99 package built with the host's gcc gives `nas infer`'s
logits bit for bit (atol=0) on real test images (scikit-learn's digits), for an integer model
with residual adds and a binary (1-bit) model; layers C cannot hold are one-line errors."""

import json
import shutil

import numpy as np
import pytest
import torch

from nas.blocks.model import build_model
from nas.cli import main
from nas.data import load_dataset
from nas.errors import UsageError
from nas.export import export_model
from nas.export.bundle import payload_of
from nas.export.deploy import packed_model
from nas.space import decode

INTEGER = "in_r8_c1-stem_c8_k3_s1_w8_a8-ir_r2_k3_s2_e2_c16_w4_a4-ir_r1_k3_s1_e2_c16_w8_a8-head_c32_w8_a8-fc_n10_w8_a8"
# 2/4-bit codes packed per pixel, pixels that end mid-byte (1 channel at 4 bits, 10 at 2), signed and unsigned
SUB_BYTE = "in_r8_c1-stem_c6_k3_s1_w4_a4-ir_r2_k3_s2_e2_c10_w2_a2-ir_r1_k3_s1_e3_c12_w4_a4-head_c24_w8_a2-fc_n10_w8_a8"
BINARY = "in_r8_c1-stem_c16_k3_s1_w8_a8-grouped_r1_k3_s1_g1_c16_w1_a1-grouped_r1_k3_s2_g1_c16_w1_a1-head_c0_w8_a8-fc_n10_w8_a8"
FLOAT_HEAD = "in_r8_c1-stem_c8_k3_s1_w8_a8-ir_r1_k3_s1_e2_c8_w8_a8-head_c16_w32_a32-fc_n10_w8_a8"

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(shutil.which("gcc") is None, reason="no host gcc")]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def trained(arch: str, data):
    from nas.train.trainer import train

    torch.manual_seed(0)
    model = build_model(decode(arch))
    train(model, data, epochs=1, batch_size=32, progress=False, measure_inference=False, val_subset=100)
    return model.eval()


@pytest.mark.parametrize("arch", [INTEGER, SUB_BYTE, BINARY], ids=["integer", "sub-byte", "binary"])
def test_c_logits_equal_nas_infer_bit_for_bit(arch, digits, tmp_path, capsys):
    model = trained(arch, digits)
    out = tmp_path / "bundle"
    manifest = export_model(model, out, digits.test, info={"dataset": "digits"}, formats=("c",))
    c = manifest["c"]
    assert c["host"]["prediction_agreement"] == 1.0
    assert c["payload_bytes"] == manifest["payload_bytes"]
    assert (out / "c" / "model.c").is_file() and (out / "c" / "Makefile").is_file()
    assert main(["infer", "--bundle", str(out), "--c", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["c"]["images"] == len(digits.test) == r["c"]["identical_logits"]
    assert r["c"]["accuracy"] == r["accuracy"]


def test_fixed_order_pool_logits_against_direct_packed_run(digits):
    """The logits compared above come from the packed model itself: check them once more
    directly, array_equal, with the generated package built from the payload."""
    from nas.export import c as cexp

    model = trained(INTEGER, digits)
    payload, _ = payload_of(model)
    packed = packed_model(model.arch, payload)
    gen = cexp.generate(packed, payload)
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp())
    for f, t in gen["files"].items():
        (d / f).write_text(t)
    images = cexp.images_f32(digits.test)[:100]
    got = cexp.host_logits(d, images, 10)
    with torch.inference_mode():
        ref = packed(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    assert np.array_equal(got, ref)
    assert gen["arena_bytes"] > 0


def test_float_layer_is_refused_naming_it(digits, tmp_path):
    model = build_model(decode(FLOAT_HEAD)).eval()
    with pytest.raises(UsageError, match=r"--format c: layer head\.conv .*runs in float"):
        export_model(model, tmp_path / "b", digits.test.subset(torch.arange(20)), info={"dataset": "digits"},
                     formats=("c",))
    assert not (tmp_path / "b").exists()


MCU = shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")


@pytest.mark.skipif(not MCU, reason="no arm-none-eabi-gcc / qemu-system-arm (Debian: gcc-arm-none-eabi "
                                    "libnewlib-arm-none-eabi qemu-system-arm)")
def test_cortex_m4_logits_equal_the_hosts_under_qemu(digits, tmp_path, capsys):
    model = trained(BINARY, digits)
    out = tmp_path / "bundle"
    export_model(model, out, digits.test, info={"dataset": "digits"}, formats=("c",))
    assert main(["infer", "--bundle", str(out), "--c", "--mcu", "--json"]) == 0
    m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["c"]["mcu"]
    assert m["identical_logits"] == m["images"] == 10
    assert m["flash_bytes"] > m["payload_bytes"] + m["kernel_code_bytes"] > m["payload_bytes"]
    assert m["bss_bytes"] >= m["arena_bytes"] and m["stack_peak_bytes"] > 0
    assert m["instructions_per_inference"] > 0


def test_missing_cross_compiler_names_the_debian_packages(digits, tmp_path, capsys, monkeypatch):
    model = trained(INTEGER, digits)
    out = tmp_path / "bundle"
    export_model(model, out, digits.test.subset(torch.arange(30)), info={"dataset": "digits"}, formats=("c",))
    capsys.readouterr()  # the export's own stderr (e.g. a busy-machine timing warning) is not the command's
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["infer", "--bundle", str(out), "--c", "--mcu"]) == 2
    err = capsys.readouterr().err
    assert "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm" in err and len(err.strip().splitlines()) == 1
