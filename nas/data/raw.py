"""What every source reader returns, and the checks that turn arrays into uint8 NCHW."""

from dataclasses import dataclass

import numpy as np

from nas.errors import UsageError


@dataclass
class RawSplits:
    """uint8 images (N, C, H, W) and integer labels (N,); test arrays None when absent."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    class_names: tuple = ()


def to_uint8_nchw(x: np.ndarray, where: str) -> np.ndarray:
    """Images as uint8 (N, C, H, W) from (N, H, W), (N, H, W, C) or (N, C, H, W) arrays.

    uint8 is kept; floats in [0, 1] are scaled by 255 and rounded; integers in [0, 255]
    are cast. Channels-last is recognised by a last axis of 1, 3 or 4 (and a second axis
    that is not). Anything else is a `UsageError` naming `where`.
    """
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
            x = x.transpose(0, 3, 1, 2)
    else:
        raise UsageError(f"{where}: images of shape {x.shape}; expected (N, H, W), (N, H, W, C) or (N, C, H, W)")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if len(x) == 0:
        raise UsageError(f"{where}: no images; expected at least one")
    lo, hi = float(x.min()), float(x.max())
    if np.issubdtype(x.dtype, np.floating) and 0.0 <= lo and hi <= 1.0:
        return np.ascontiguousarray(np.rint(x * 255.0).astype(np.uint8))
    if np.issubdtype(x.dtype, np.integer) and 0 <= lo and hi <= 255:
        return np.ascontiguousarray(x.astype(np.uint8))
    raise UsageError(
        f"{where}: {x.dtype} images with values in [{lo:g}, {hi:g}]; expected uint8, "
        f"integers in [0, 255] or floats in [0, 1]"
    )


def to_labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    """Integer labels (N,) >= 0; `UsageError` naming `where` otherwise."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n:
        raise UsageError(f"{where}: labels of shape {y.shape}; expected ({n},), one integer per image")
    if not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
        raise UsageError(f"{where}: labels of dtype {y.dtype}; expected non-negative integers (class indices)")
    return y.astype(np.int64)
