"""Data loading: every source on real images, seeded stratified splits, uint8 storage,
per-batch normalisation, and one-line errors for missing or corrupt data."""

import gzip
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits as sk_digits

from nas.data import FASHION_MNIST_DIR, ImageDataset, load_dataset
from nas.data.idx import read_idx
from nas.data.split import split_off, stratified_order, stratified_subset
from nas.errors import UsageError


@pytest.fixture(scope="module")
def fashion():
    return load_dataset("fashion-mnist")


@pytest.fixture(scope="module")
def fashion_test_arrays():
    """Fashion-MNIST's 10000 test images (N, 28, 28) uint8 and labels, straight from the IDX files."""
    x = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz", "")
    y = read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz", "")
    return x, y


def _digits_u8():
    d = sk_digits()
    return np.rint(d.images * 255.0 / 16.0).astype(np.uint8), d.target


# --- Fashion-MNIST / IDX -------------------------------------------------------------------

def test_fashion_mnist_splits_shapes_and_statistics(fashion):
    assert (len(fashion.train), len(fashion.val), len(fashion.test)) == (54000, 6000, 10000)
    assert (fashion.num_classes, fashion.in_chs, fashion.resolution) == (10, 1, 28)
    assert fashion.train.images.dtype == torch.uint8 and fashion.train.images.shape == (54000, 1, 28, 28)
    assert not fashion.test_carved and fashion.class_names[9] == "Ankle boot"
    # normalisation: the whole training set's well-known figures
    assert round(float(fashion.mean[0]), 4) == 0.2860
    assert round(float(fashion.std[0]), 4) == 0.3530
    # validation is stratified: 600 of each class
    assert torch.bincount(fashion.val.labels).tolist() == [600] * 10


def test_normalisation_is_fixed_per_dataset(fashion):
    """Not a property of one study's subset or split: a deployed model's input is the dataset's."""
    from nas.data import load_dataset

    for kwargs in ({"subset": 500}, {"subset": 5000, "split_seed": 3}, {"val_fraction": 0.2}):
        other = load_dataset("fashion-mnist", **kwargs)
        assert torch.equal(other.mean, fashion.mean) and torch.equal(other.std, fashion.std), kwargs
    small, full = load_dataset("digits", subset=200), load_dataset("digits")
    assert torch.equal(small.mean, full.mean) and torch.equal(small.std, full.std)


def test_batches_are_normalised_uint8_converted_per_batch(fashion):
    idx = torch.arange(0, 54000, 37)
    x, y = fashion.train.batch(idx)
    assert x.dtype == torch.float32 and x.shape == (len(idx), 1, 28, 28) and y.dtype == torch.int64
    expected = (fashion.train.images[idx].double() / 255.0 - float(fashion.mean[0])) / float(fashion.std[0])
    torch.testing.assert_close(x.double(), expected, atol=1e-5, rtol=0)
    assert abs(float(x.mean())) < 0.02 and abs(float(x.std()) - 1.0) < 0.02
    xc, _ = fashion.train.batch(idx[:5], memory_format=torch.channels_last)
    assert xc.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(xc, x[:5], atol=0, rtol=0)
    xi, yi = fashion.train[3]
    torch.testing.assert_close(xi, fashion.train.batch(torch.tensor([3]))[0][0], atol=0, rtol=0)
    assert yi == int(fashion.train.labels[3])


def test_test_split_is_the_idx_test_set(fashion, fashion_test_arrays):
    x, y = fashion_test_arrays
    assert np.array_equal(fashion.test.images[:, 0].numpy(), x)
    assert np.array_equal(fashion.test.labels.numpy(), y)


def test_split_is_seeded_and_disjoint():
    a = load_dataset("digits", split_seed=3)
    b = load_dataset("digits", split_seed=3)
    c = load_dataset("digits", split_seed=4)
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.labels, b.train.labels)
    assert not torch.equal(a.val.images, c.val.images)
    assert torch.equal(a.test.images, c.test.images)  # the carved test set never moves with split_seed
    # digits has no duplicate images, so rows identify samples: the three splits are disjoint
    rows = lambda ds: {bytes(r) for r in ds.images.reshape(len(ds), -1).numpy()}  # noqa: E731
    train, val, test = rows(a.train), rows(a.val), rows(a.test)
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train) + len(val) + len(test) == 1797


def test_subset_is_stratified_fixed_and_nested(fashion):
    labels = fashion.train.labels.numpy()
    small, large = stratified_subset(labels, 1000, 0), stratified_subset(labels, 5000, 0)
    assert set(small) <= set(large)
    assert np.bincount(labels[large], minlength=10).tolist() == [500] * 10
    assert np.array_equal(small, stratified_subset(labels, 1000, 0))
    b = load_dataset("fashion-mnist", subset=5000)
    assert len(b.train) == 5000 and torch.bincount(b.train.labels).tolist() == [500] * 10
    assert len(b.val) == 6000  # subset touches only the training split


def test_stratified_order_prefixes_are_proportional():
    labels = np.repeat(np.arange(3), [50, 30, 20])  # 50 / 30 / 20 %
    order = stratified_order(labels, seed=1)
    assert sorted(order.tolist()) == list(range(100))
    for n in (10, 20, 37, 64):
        counts = np.bincount(labels[order[:n]], minlength=3)
        assert np.all(np.abs(counts - n * np.array([0.5, 0.3, 0.2])) <= 1), (n, counts)
    kept, split = split_off(labels, 0.2, seed=1)
    assert len(split) == 20 and not set(kept) & set(split) and len(kept) + len(split) == 100


def test_uncompressed_idx_folder_reads_the_same(tmp_path, fashion_test_arrays):
    # An IDX folder given by path, files not gzipped: Fashion-MNIST's test files stand in as both splits.
    for src, dst in (("t10k-images-idx3-ubyte", "train-images-idx3-ubyte"),
                     ("t10k-labels-idx1-ubyte", "train-labels-idx1-ubyte"),
                     ("t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte"),
                     ("t10k-labels-idx1-ubyte", "t10k-labels-idx1-ubyte")):
        (tmp_path / dst).write_bytes(gzip.decompress((FASHION_MNIST_DIR / (src + ".gz")).read_bytes()))
    b = load_dataset(tmp_path)
    x, y = fashion_test_arrays
    assert (len(b.train) + len(b.val), len(b.test)) == (10000, 10000)
    assert np.array_equal(b.test.images[:, 0].numpy(), x) and np.array_equal(b.test.labels.numpy(), y)
    same = load_dataset("fashion-mnist", data_dir=tmp_path)  # a name with --data-dir reads the same folder
    assert torch.equal(same.val.images, b.val.images)


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(UsageError) as e:
        load_dataset("fashion-mnist", data_dir=tmp_path / "nowhere")
    msg = str(e.value)
    assert "\n" not in msg and "nowhere" in msg and "apt-get install dataset-fashion-mnist" in msg


def test_truncated_and_corrupt_idx_files_are_usage_errors(tmp_path):
    for name in os.listdir(FASHION_MNIST_DIR):
        shutil.copy(FASHION_MNIST_DIR / name, tmp_path / name)
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(raw[:-1000], compresslevel=1))  # valid gzip, truncated IDX payload
    with pytest.raises(UsageError, match="truncated or corrupt.*apt-get install"):
        load_dataset("fashion-mnist", data_dir=tmp_path)
    images.write_bytes(images.read_bytes()[:5000])  # truncated gzip stream
    with pytest.raises(UsageError, match="t10k-images-idx3-ubyte.gz: cannot be read or unzipped"):
        load_dataset("fashion-mnist", data_dir=tmp_path)
    images.write_bytes(b"\x00\x00\x0d\x03" + raw[4:])  # float32 type byte, not gzipped: not unsigned bytes
    with pytest.raises(UsageError, match="not an IDX file of unsigned bytes"):
        load_dataset("fashion-mnist", data_dir=tmp_path)
    shutil.copy(FASHION_MNIST_DIR / images.name, images)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UsageError, match="no t10k-labels-idx1-ubyte"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


# --- digits, npz -----------------------------------------------------------------------------

def test_digits_kept_at_8x8_with_carved_test_set():
    b = load_dataset("digits")
    x, y = _digits_u8()
    assert (b.resolution, b.in_chs, b.num_classes) == (8, 1, 10) and b.test_carved
    assert len(b.train) + len(b.val) + len(b.test) == 1797 and len(b.test) == 359
    assert int(b.train.images.max()) == 255 and b.train.images.dtype == torch.uint8
    up = load_dataset("digits", resolution=16)
    assert up.train.images.shape[1:] == (1, 16, 16) and up.resolution == 16
    assert torch.equal(up.train.labels, b.train.labels)


def test_npz_sources(tmp_path):
    x, y = _digits_u8()
    np.savez(tmp_path / "plain.npz", x=x, y=y)
    np.savez(tmp_path / "split.npz", x=x[:1500], y=y[:1500], x_test=x[1500:], y_test=y[1500:])
    np.savez(tmp_path / "float_nhwc.npz", x=(x / 255.0)[..., None].astype(np.float32), y=y)
    plain = load_dataset(tmp_path / "plain.npz")
    assert plain.test_carved and plain.name == "plain" and plain.train.images.shape[1:] == (1, 8, 8)
    split = load_dataset(tmp_path / "split.npz")
    assert not split.test_carved and np.array_equal(split.test.images[:, 0].numpy(), x[1500:])
    nhwc = load_dataset(tmp_path / "float_nhwc.npz")
    assert torch.equal(nhwc.train.images, plain.train.images)  # [0, 1] floats scale back to the same bytes


def test_bad_npz_files_are_usage_errors(tmp_path):
    x, y = _digits_u8()
    np.savez(tmp_path / "no_y.npz", x=x)
    with pytest.raises(UsageError, match=r"lack \['y'\]"):
        load_dataset(tmp_path / "no_y.npz")
    np.savez(tmp_path / "objects.npz", x=np.array([x[0], "a"], dtype=object), y=y[:2])
    with pytest.raises(UsageError, match="not a readable .npz"):
        load_dataset(tmp_path / "objects.npz")
    np.savez(tmp_path / "range.npz", x=x.astype(np.float32), y=y)  # floats 0..255, not [0, 1]
    with pytest.raises(UsageError, match=r"expected uint8, integers in \[0, 255\] or floats in \[0, 1\]"):
        load_dataset(tmp_path / "range.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(UsageError, match="junk.npz: not a readable .npz"):
        load_dataset(tmp_path / "junk.npz")


# --- CIFAR pickles ---------------------------------------------------------------------------

def _cifar_rows(x28: np.ndarray) -> np.ndarray:
    """Real Fashion-MNIST images laid out as CIFAR rows: padded to 32x32, 3 equal channels."""
    x = np.pad(x28, ((0, 0), (2, 2), (2, 2)))
    return np.repeat(x[:, None], 3, axis=1).reshape(len(x), 3072)


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the official files are protocol-2 pickles


def test_cifar10_and_cifar100_folders(tmp_path, fashion_test_arrays):
    x, y = fashion_test_arrays
    rows = _cifar_rows(x[:600])
    c10 = tmp_path / "cifar-10-batches-py"
    c10.mkdir()
    for i in range(5):
        _dump(c10 / f"data_batch_{i + 1}", {"data": rows[i * 100:(i + 1) * 100],
                                            "labels": y[i * 100:(i + 1) * 100].tolist()})
    _dump(c10 / "test_batch", {"data": rows[500:], "labels": y[500:600].tolist()})
    _dump(c10 / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    b = load_dataset("cifar10", data_dir=c10)
    assert (b.in_chs, b.resolution, len(b.test), len(b.train) + len(b.val)) == (3, 32, 100, 500)
    assert np.array_equal(b.test.images[:, 1, 2:30, 2:30].numpy(), x[500:600])
    assert b.class_names[3] == "class3" and load_dataset(c10).name == "cifar10"

    c100 = tmp_path / "cifar-100-python"
    c100.mkdir()
    _dump(c100 / "train", {"data": rows[:500], "fine_labels": y[:500].tolist(), "coarse_labels": [0] * 500})
    _dump(c100 / "test", {"data": rows[500:], "fine_labels": y[500:600].tolist(), "coarse_labels": [0] * 100})
    _dump(c100 / "meta", {"fine_label_names": [f"fine{i}" for i in range(10)]})
    b = load_dataset(c100)
    assert b.name == "cifar100" and len(b.test) == 100 and b.class_names[0] == "fine0"


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_cifar_pickles_cannot_run_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"
    _dump(folder / "data_batch_1", _Exploit(marker))
    with pytest.raises(UsageError, match="not a readable CIFAR pickle.*system"):
        load_dataset("cifar10", data_dir=folder)
    assert not marker.exists()


def test_cifar_needs_a_folder():
    with pytest.raises(UsageError, match="needs --data-dir; download .*cifar-10-python.tar.gz"):
        load_dataset("cifar10")


# --- ImageFolder -----------------------------------------------------------------------------

def test_image_folder_tree_with_train_and_test(tmp_path):
    x, y = _digits_u8()
    for split, rows in (("train", range(0, 300)), ("test", range(300, 400))):
        for i in rows:
            d = tmp_path / split / f"digit{y[i]}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(d / f"{i}.png")
    b = load_dataset(tmp_path)
    assert (b.in_chs, b.resolution, len(b.test), len(b.train) + len(b.val)) == (1, 8, 100, 300)
    assert b.class_names == tuple(f"digit{i}" for i in range(10))
    # PNG is lossless: the test images come back byte for byte (ImageFolder orders by class, then name)
    order = sorted(range(300, 400), key=lambda i: (y[i], f"{i}.png"))
    assert np.array_equal(b.test.images[:, 0].numpy(), x[order])
    assert np.array_equal(b.test.labels.numpy(), y[order])


def test_image_folder_mixed_sizes_are_resized_and_corrupt_files_named(tmp_path):
    x, y = _digits_u8()
    for i in range(40):
        d = tmp_path / f"c{y[i] % 2}"
        d.mkdir(exist_ok=True)
        Image.fromarray(x[i]).resize((8 + i % 3, 8)).convert("RGB").save(d / f"{i}.png")
    b = load_dataset(tmp_path, resolution=12)
    assert b.test_carved and b.in_chs == 3 and b.train.images.shape[1:] == (3, 12, 12)
    (tmp_path / "c0" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(UsageError, match="broken.png: not a readable image"):
        load_dataset(tmp_path)


# --- bad names and arguments -----------------------------------------------------------------

def test_unknown_name_and_bad_arguments(tmp_path):
    with pytest.raises(UsageError, match="'mnistt': neither a known name"):
        load_dataset("mnistt")
    with pytest.raises(UsageError, match="only used with a dataset name"):
        load_dataset(tmp_path, data_dir=tmp_path)
    with pytest.raises(UsageError, match="subset=5: expected an integer from 10"):
        load_dataset("digits", subset=5)
    with pytest.raises(UsageError, match="val_fraction=1.5"):
        load_dataset("digits", val_fraction=1.5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no known layout"):
        load_dataset(tmp_path / "empty")


def test_image_dataset_rejects_float_storage():
    with pytest.raises(ValueError, match="expected a uint8"):
        ImageDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64), [0.5], [0.5])
