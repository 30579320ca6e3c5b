"""Array sources: an `.npz` file (x, y and optional x_test, y_test) and scikit-learn's digits."""

import zipfile
from pathlib import Path

import numpy as np

from nas import limits
from nas.data.raw import RawSplits, to_labels, to_uint8_nchw
from nas.errors import UsageError

NPZ_EXPECTED = "expected an .npz with arrays x (N, H, W[, C]) and y (N,), optionally x_test and y_test"


def load_npz(path: Path) -> RawSplits:
    """Arrays of an `.npz` file, loaded without pickle (object arrays are refused)."""
    if not path.is_file():
        raise UsageError(f"dataset file {path}: does not exist; {NPZ_EXPECTED}")
    limits.check_npz_members(path)  # a zip bomb is refused before numpy expands it
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UsageError(f"dataset file {path}: not a readable .npz ({e}); {NPZ_EXPECTED}") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise UsageError(f"dataset file {path}: arrays {sorted(arrays)} lack {missing}; {NPZ_EXPECTED}")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise UsageError(f"dataset file {path}: has only one of x_test / y_test; {NPZ_EXPECTED}")
    x = to_uint8_nchw(arrays["x"], f"{path} array x")
    y = to_labels(arrays["y"], len(x), f"{path} array y")
    x_test = y_test = None
    if "x_test" in arrays:
        x_test = to_uint8_nchw(arrays["x_test"], f"{path} array x_test")
        y_test = to_labels(arrays["y_test"], len(x_test), f"{path} array y_test")
        if x_test.shape[1:] != x.shape[1:]:
            raise UsageError(f"dataset file {path}: x_test images {x_test.shape[1:]} differ from x {x.shape[1:]}; "
                             f"expected the same (C, H, W)")
    return RawSplits(x, y, x_test, y_test)


def load_digits() -> RawSplits:
    """scikit-learn's digits (1797 images, 8 x 8, 10 classes), kept at 8 x 8.

    Pixel values 0..16 are scaled to 0..255 (x * 255 / 16, rounded). There is no test
    split; the caller carves one. Kept at 8 x 8 because its job is tiny, fast tests; pass
    `resolution=` to `load_dataset` to upsample.
    """
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    return RawSplits(x, d.target.astype(np.int64), class_names=tuple(str(n) for n in d.target_names))
