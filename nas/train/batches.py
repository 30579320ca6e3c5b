"""Batches from a dataset: the uint8 fast path for `ImageDataset`, a DataLoader otherwise."""

import itertools
from collections.abc import Iterator

import numpy as np
import torch

from nas.data import ImageDataset
from nas.data.split import stratified_subset


def labels_of(dataset) -> torch.Tensor | None:
    """Integer labels of a dataset when it exposes them (`labels` or `targets`)."""
    for name in ("labels", "targets"):
        y = getattr(dataset, name, None)
        if y is not None:
            return torch.as_tensor(np.asarray(y), dtype=torch.int64)
    return None


def subset_of(dataset, n: int | None):
    """A fixed stratified subset of `n` images (seed 0, so every training seed sees the same)."""
    if n is None or n >= len(dataset):
        return dataset
    labels = labels_of(dataset)
    if labels is None:
        raise ValueError(f"subset={n}: the dataset {type(dataset).__name__} exposes no labels/targets to stratify by")
    index = stratified_subset(labels.numpy(), int(n), seed=0)
    if isinstance(dataset, ImageDataset):
        return dataset.subset(index)
    return torch.utils.data.Subset(dataset, index.tolist())


def iterate(dataset, batch_size: int, generator: torch.Generator | None = None,
            channels_last: bool = False, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches; shuffled with `generator` when one is given, in order otherwise.
    `skip`: leave out the first `skip` batches of the same order (a resumed epoch); on an
    `ImageDataset` they are not built.

    A final batch of a single image is dropped when shuffling (BatchNorm cannot train on
    one sample).
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    n = len(dataset)
    if isinstance(dataset, ImageDataset):
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for start in range(skip * batch_size, n, batch_size):
            index = order[start:start + batch_size]
            if generator is not None and len(index) == 1 and n > 1:
                return
            yield dataset.batch(index, memory_format=fmt)
        return
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=generator is not None,
                                         generator=generator, drop_last=False)
    for x, y in itertools.islice(loader, skip, None):  # a DataLoader's batches are made to be skipped
        if generator is not None and len(y) == 1 and n > 1:
            return
        yield x.contiguous(memory_format=fmt), torch.as_tensor(y)
