"""CIFAR-10 / CIFAR-100 in their python-pickle format (the `cifar-10-batches-py` and
`cifar-100-python` folders of the official archives).

The batches are pickles, and unpickling runs whatever callables a file names; so they are
read with an unpickler that only resolves the numpy names an array needs and refuses
everything else (nothing in a data file gets executed).
"""

import pickle
from pathlib import Path

import numpy as np

from nas.data.raw import RawSplits, to_labels
from nas.errors import UsageError

HOW_TO_GET = {
    "cifar10": "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, extract it and "
               "pass the cifar-10-batches-py folder as --data-dir",
    "cifar100": "download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz, extract it and "
                "pass the cifar-100-python folder as --data-dir",
}
_LAYOUT = {  # kind -> (training files, test file, meta file, label key, label-names key)
    "cifar10": ([f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta", "labels", "label_names"),
    "cifar100": (["train"], "test", "meta", "fine_labels", "fine_label_names"),
}
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes (str -> bytes only)
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refers to {module}.{name}, which a CIFAR batch never does")


def cifar_kind(folder: Path) -> str | None:
    """'cifar10' or 'cifar100' when `folder` looks like one of the official folders."""
    if (folder / "data_batch_1").is_file():
        return "cifar10"
    if (folder / "train").is_file() and (folder / "meta").is_file():
        return "cifar100"
    return None


def _unpickle(path: Path, how_to_get: str) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise UsageError(f"dataset file {path}: missing; {how_to_get}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, OSError) as e:
        raise UsageError(f"dataset file {path}: not a readable CIFAR pickle ({e}); {how_to_get}") from None
    if not isinstance(obj, dict):
        raise UsageError(f"dataset file {path}: holds a {type(obj).__name__}; expected a CIFAR dict; {how_to_get}")
    return obj


def _batch(path: Path, label_key: str, how_to_get: str) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path, how_to_get)
    if "data" not in d or label_key not in d:
        raise UsageError(f"dataset file {path}: keys {sorted(d)}; expected 'data' and {label_key!r}; {how_to_get}")
    x = np.asarray(d["data"])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        raise UsageError(f"dataset file {path}: data {x.dtype} {x.shape}; expected uint8 (N, 3072) rows "
                         f"(3 x 32 x 32, channel-major); {how_to_get}")
    try:
        y = np.asarray(d[label_key])
    except (ValueError, TypeError) as e:  # ragged or mixed lists
        raise UsageError(f"dataset file {path}: {label_key!r} is not a list of integers ({e}); {how_to_get}") from None
    y = to_labels(y, len(x), f"dataset file {path}: {label_key!r}")
    return x.reshape(-1, 3, 32, 32), y  # (N, 3, 32, 32): rows are R plane, G plane, B plane


def load_cifar(folder: Path, kind: str) -> RawSplits:
    """Train and test arrays of a CIFAR-10 (`kind='cifar10'`) or CIFAR-100 folder."""
    how_to_get = HOW_TO_GET[kind]
    if not folder.is_dir():
        raise UsageError(f"dataset folder {folder}: does not exist; {how_to_get}")
    train_files, test_file, meta_file, label_key, names_key = _LAYOUT[kind]
    parts = [_batch(folder / name, label_key, how_to_get) for name in train_files]
    x_test, y_test = _batch(folder / test_file, label_key, how_to_get)
    names = ()
    if (folder / meta_file).is_file():
        names = tuple(_unpickle(folder / meta_file, how_to_get).get(names_key, ()))
    return RawSplits(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                     x_test, y_test, names)
