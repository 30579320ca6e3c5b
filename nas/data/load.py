"""`load_dataset`: a dataset name or path -> a `DataBundle` of uint8 train / val / test splits."""

import functools
from pathlib import Path

import numpy as np
import torch

from nas.data.arrays import load_digits, load_npz
from nas.data.cifar import HOW_TO_GET as CIFAR_HOW_TO_GET, cifar_kind, load_cifar
from nas.data.dataset import DataBundle, ImageDataset
from nas.data.folder import is_image_folder, load_image_folder
from nas.data.idx import EXPECTED as IDX_EXPECTED, is_idx_folder, load_idx_folder
from nas.data.raw import RawSplits
from nas.data.split import split_off, stratified_subset
from nas.errors import UsageError
from nas.limits import check_class_count

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_MNIST_HOW_TO_GET = ("install it with `apt-get install dataset-fashion-mnist` (puts it in "
                            f"{FASHION_MNIST_DIR}) or pass --data-dir with the four IDX files")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
NAMES = {"fashion-mnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "fmnist": "fashion-mnist",
         "digits": "digits", "cifar10": "cifar10", "cifar-10": "cifar10",
         "cifar100": "cifar100", "cifar-100": "cifar100"}
CARVED_TEST_FRACTION = 0.2  # test share carved from sources without a test set (digits, some npz / trees)
CARVED_TEST_SEED = 20_150_302  # fixed, so the carved test set never moves with split_seed


def load_dataset(name_or_path: str | Path, data_dir: str | Path | None = None, split_seed: int = 0,
                 val_fraction: float = 0.1, subset: int | None = None,
                 resolution: int | None = None) -> DataBundle:
    """Load a dataset into memory as uint8 and split it.

    name_or_path: ``fashion-mnist`` (IDX files in `data_dir`, default
        /usr/share/datasets/fashion-mnist), ``digits`` (scikit-learn, 8 x 8),
        ``cifar10`` / ``cifar100`` (python-pickle folder given by `data_dir`), or a path:
        an IDX folder, a CIFAR pickle folder, an ImageFolder tree, or an ``.npz`` file.
    split_seed: seeds the stratified validation split carved from the training data.
    val_fraction: share of the training data held out for validation (0 < f < 1).
    subset: keep a fixed stratified subset of this many *training* images (nested: a
        smaller subset is part of a larger one for the same seed); validation and test
        are untouched.
    resolution: resize every image to resolution x resolution (bilinear) after loading.

    Normalisation: per-channel mean / std of all the dataset's training images (validation
    included, a carved test split excluded), exact, from the uint8 histogram. It is fixed per
    dataset: the same for every subset, split seed and validation fraction, so a deployed
    model's input normalisation is a property of the dataset (Fashion-MNIST: 0.2860 / 0.3530,
    the published figures), not of one study's training subset. Raises `UsageError` (one line: the path, what
    was expected, how to get it) when the data is missing or corrupt.
    """
    raw, name, source = _read(name_or_path, data_dir, resolution)
    return _bundle(raw, name, source, split_seed, val_fraction, subset, resolution)


def _read(name_or_path, data_dir, resolution) -> tuple[RawSplits, str, str]:
    key = str(name_or_path).lower()
    data_dir = Path(data_dir).expanduser() if data_dir is not None else None
    if key in NAMES:
        name = NAMES[key]
        if name == "fashion-mnist":
            folder = data_dir or FASHION_MNIST_DIR
            return _read_idx(folder, FASHION_MNIST_HOW_TO_GET), name, str(folder)
        if name == "digits":
            return load_digits(), name, "sklearn.datasets.load_digits"
        if data_dir is None:
            raise UsageError(f"dataset {name_or_path!r}: needs --data-dir; {CIFAR_HOW_TO_GET[name]}")
        return load_cifar(data_dir, name), name, str(data_dir)
    path = Path(name_or_path).expanduser()
    if data_dir is not None:
        raise UsageError(f"--data-dir {data_dir}: only used with a dataset name "
                         f"({', '.join(sorted(set(NAMES.values())))}); the dataset {name_or_path!r} is already a path")
    if not path.exists():
        raise UsageError(f"dataset {name_or_path!r}: neither a known name ({', '.join(sorted(set(NAMES.values())))}) "
                         f"nor an existing path; expected a name, an IDX / CIFAR / ImageFolder folder, or an .npz file")
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise UsageError(f"dataset file {path}: unknown format; expected an .npz file or a folder")
        return load_npz(path), path.stem, str(path)
    if is_idx_folder(path):
        return _read_idx(path, f"expected {IDX_EXPECTED}"), path.name, str(path)
    kind = cifar_kind(path)
    if kind is not None:
        return load_cifar(path, kind), kind, str(path)
    if is_image_folder(path):
        return load_image_folder(path, resolution), path.name, str(path)
    raise UsageError(f"dataset folder {path}: no known layout; expected IDX files ({IDX_EXPECTED}), "
                     f"CIFAR pickles (data_batch_1 or train + meta), or class sub-folders of images")


def _read_idx(folder: Path, how_to_get: str) -> RawSplits:
    """An IDX folder, re-read only when its files change (a search loads the data per trial)."""
    mtime = max((f.stat().st_mtime_ns for f in folder.iterdir()), default=0) if folder.is_dir() else -1
    return _read_idx_cached(folder, how_to_get, mtime)


@functools.lru_cache(maxsize=2)
def _read_idx_cached(folder: Path, how_to_get: str, mtime: int) -> RawSplits:
    return load_idx_folder(folder, how_to_get)


def _mean_std(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Exact per-channel mean and std of uint8 images in [0, 1] units, via histograms."""
    levels = np.arange(256, dtype=np.float64) / 255.0
    mean, std = [], []
    for c in range(x.shape[1]):
        hist = np.bincount(x[:, c].reshape(-1), minlength=256).astype(np.float64)
        p = hist / hist.sum()
        m = float((p * levels).sum())
        mean.append(m)
        std.append(max(float(np.sqrt((p * (levels - m) ** 2).sum())), 1e-3))
    return mean, std


def _bundle(raw: RawSplits, name: str, source: str, split_seed: int, val_fraction: float,
            subset: int | None, resolution: int | None) -> DataBundle:
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"val_fraction={val_fraction!r}: expected a number between 0 and 1 (exclusive)")
    x, y = raw.x_train, raw.y_train
    x_test, y_test, carved = raw.x_test, raw.y_test, raw.x_test is None
    needed = 3 if carved else 2  # one image each for train, val (and the carved test split)
    if len(x) < needed or (not carved and len(x_test) == 0):
        held = f"{len(x)} training" + ("" if carved else f" and {len(x_test)} test") + " images"
        raise UsageError(f"dataset {source}: {held}; expected at least {needed} training images (train, "
                         f"validation{', test' if carved else ''}) and one test image")
    if carved:
        keep, test = split_off(y, CARVED_TEST_FRACTION, CARVED_TEST_SEED)
        x, y, x_test, y_test = x[keep], y[keep], x[test], y[test]
    if x.shape[2] != x.shape[3] and resolution is None:
        raise UsageError(f"dataset {source}: images are {x.shape[2]}x{x.shape[3]}; expected square images "
                         f"(pass a resolution to resize them)")
    num_classes = int(max(y.max(), y_test.max())) + 1
    check_class_count(num_classes, f"dataset {source}")
    mean, std = _mean_std(x)  # before the validation split and the subset: fixed per dataset
    train_idx, val_idx = split_off(y, val_fraction, split_seed)
    if subset is not None:
        n = len(train_idx)
        if not isinstance(subset, (int, np.integer)) or not num_classes <= subset <= n:
            raise UsageError(f"subset={subset!r}: expected an integer from {num_classes} (one per class) "
                             f"to {n} (the training split of {name})")
        train_idx = train_idx[stratified_subset(y[train_idx], int(subset), split_seed)]

    def make(xs, ys):
        # np.array copies: the cached source arrays are read-only and must stay untouched
        ds = ImageDataset(torch.from_numpy(np.array(xs)), torch.from_numpy(np.array(ys)), mean, std)
        return ds.resized(resolution) if resolution is not None else ds

    train, val, test = make(x[train_idx], y[train_idx]), make(x[val_idx], y[val_idx]), make(x_test, y_test)
    class_names = raw.class_names or (FASHION_MNIST_CLASSES if name == "fashion-mnist" else ())
    return DataBundle(name=name, train=train, val=val, test=test, num_classes=num_classes,
                      in_chs=int(x.shape[1]), resolution=int(train.images.shape[2]), source=source,
                      class_names=tuple(class_names), test_carved=carved)
