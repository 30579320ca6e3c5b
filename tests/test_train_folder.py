"""`nas train` on an ImageFolder of the user's own with 3 classes (issue 20): the README's arch
ends in fc_n10, so the command refuses in one line that names the fix (fc_n3), and the arch
with fc_n3 trains. The images are real: scikit-learn's digits 0, 1, 2 as PNG files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
README_ARCH = "in_r28_c1-stem_c16_k3_s1_w8_a8-ir_r2_k3_s2_e6_c24_w4_a4-head_c128_w8_a8-fc_n10_w8_a8"


def _image_folder(root: Path) -> Path:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for c in range(3):
        for k, i in enumerate(np.flatnonzero(digits.target == c)):
            d = root / ("val" if k % 5 == 0 else "train") / f"digit{c}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray((digits.images[i] * 15).astype(np.uint8)).resize((28, 28)).save(d / f"{i}.png")
    return root


def _train(arch: str, data: Path, cwd: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "nas.cli", "train", "--arch", arch, "--dataset", str(data),
                           "--epochs", "1", "--quiet", "--json"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_train_on_a_three_class_image_folder(tmp_path):
    data = _image_folder(tmp_path / "mydata")
    r = _train(README_ARCH, data, tmp_path)
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "3 classes" in err and "fc_n3" in err, err
    r = _train(README_ARCH.replace("fc_n10", "fc_n3"), data, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout)
    assert 0.0 <= summary["accuracy"] <= 1.0, summary
