"""IDX files (the MNIST / Fashion-MNIST format), gzipped or not.

Format (LeCun): two zero bytes, a type byte (0x08 = unsigned byte), a byte giving the
number of dimensions, then one big-endian int32 per dimension, then the data in C order.
"""

import math
import zlib
from pathlib import Path

import numpy as np

from nas import limits
from nas.data.raw import RawSplits
from nas.errors import UsageError

# The four files of an IDX dataset folder, with the names other distributions use too.
_FILES = {
    "x_train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "y_train": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "x_test": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "y_test": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
EXPECTED = ("train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
            "t10k-labels-idx1-ubyte[.gz]")


def is_idx_folder(folder: Path) -> bool:
    """True when `folder` holds at least the training images of an IDX dataset."""
    return _find(folder, "x_train") is not None


def _find(folder: Path, key: str) -> Path | None:
    for stem in _FILES[key]:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def read_idx(path: Path, how_to_get: str) -> np.ndarray:
    """The array stored in one IDX file; `UsageError` naming the file when it is corrupt."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # a gzip bomb: the header first, then no more than it declares
            header, dims = _header(path, limits.gunzip_head(raw, 4 + 4 * 255), how_to_get)
            raw = limits.gunzip_limited(path, raw, header + math.prod(dims),
                                        f"more than its IDX header declares {dims}; {how_to_get}")
    except (OSError, EOFError, zlib.error) as e:
        raise UsageError(f"dataset file {path}: cannot be read or unzipped ({e}); {how_to_get}") from None
    header, dims = _header(path, raw, how_to_get)
    if len(raw) != header + int(np.prod(dims, dtype=np.int64)):
        raise UsageError(
            f"dataset file {path}: truncated or corrupt; header says {dims} = "
            f"{int(np.prod(dims, dtype=np.int64))} bytes of data, file has {len(raw) - header}; {how_to_get}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _header(path: Path, raw: bytes, how_to_get: str) -> tuple[int, tuple[int, ...]]:
    """(header bytes, dims) of IDX data starting at `raw`; the size the dims declare is checked
    against the dataset limit in Python ints (65536**4 does not overflow)."""
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise UsageError(f"dataset file {path}: not an IDX file of unsigned bytes (bad header {raw[:4]!r}); "
                         f"{how_to_get}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    limits.check_dataset_bytes(path, math.prod(dims), "header says it holds")
    return header, dims


def load_idx_folder(folder: Path, how_to_get: str) -> RawSplits:
    """The four IDX files of `folder` as uint8 arrays; images become (N, 1, H, W)."""
    if not folder.is_dir():
        raise UsageError(f"dataset folder {folder}: does not exist; expected a folder with {EXPECTED}; {how_to_get}")
    arrays = {}
    for key in _FILES:
        path = _find(folder, key)
        if path is None:
            raise UsageError(f"dataset folder {folder}: no {_FILES[key][0]}[.gz]; expected {EXPECTED}; {how_to_get}")
        arrays[key] = read_idx(path, how_to_get)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise UsageError(
                f"dataset folder {folder}: {split} images {x.shape} and labels {y.shape} do not match; "
                f"expected (N, H, W) images and (N,) labels; {how_to_get}"
            )
    return RawSplits(arrays["x_train"][:, None], arrays["y_train"], arrays["x_test"][:, None], arrays["y_test"])
