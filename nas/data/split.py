"""Seeded, stratified and nested selections of rows.

`stratified_order` ranks every row so that any prefix of the ranking holds each class in
proportion to its frequency (within one row per class). Splits and subsets are prefixes of
that ranking, which makes them deterministic for a seed and *nested*: the 1000-image
subset is contained in the 5000-image subset, so successive fidelities of a search see
more of the same data rather than different data.
"""

import numpy as np


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """Row indices ranked so that every prefix is a stratified sample.

    Within each class the rows are shuffled with `seed`; the row at position r of a class
    of size n gets the key (r + 0.5) / n, its quantile inside the class. Sorting all rows
    by that key (stable, ties by class) interleaves the classes proportionally.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keys = np.empty(len(labels), dtype=np.float64)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        rows = rows[rng.permutation(len(rows))]
        keys[rows] = (np.arange(len(rows)) + 0.5) / len(rows)
    return np.lexsort((labels, keys))


def split_off(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, split) row indices, `split` a stratified `fraction` of the rows; both sorted."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction={fraction!r}: expected 0 < fraction < 1")
    order = stratified_order(labels, seed)
    k = max(1, int(round(fraction * len(order))))
    return np.sort(order[k:]), np.sort(order[:k])


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a fixed stratified subset of `n` rows (nested in larger `n`)."""
    return np.sort(stratified_order(labels, seed)[:n])
