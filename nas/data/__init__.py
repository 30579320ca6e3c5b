"""Datasets for training and evaluation: real data only, kept as uint8 in memory.

`load_dataset(name_or_path, ...)` returns a `DataBundle` whose `train`, `val` and `test`
are `ImageDataset`s; `ImageDataset.batch(index)` gives normalised float32 batches.
"""

from nas.data.dataset import DataBundle, ImageDataset
from nas.data.load import FASHION_MNIST_DIR, load_dataset

__all__ = ["DataBundle", "ImageDataset", "FASHION_MNIST_DIR", "load_dataset"]
