"""Shared fixtures: a real batch of Fashion-MNIST images (never random tensors in place of data)."""

import numpy as np
import pytest

import nas  # noqa: F401, I001  (before torch: nas defaults OMP_WAIT_POLICY=PASSIVE, as every `nas` command has it)
import torch

from nas.data.idx import read_idx
from nas.data.load import FASHION_MNIST_DIR, FASHION_MNIST_HOW_TO_GET

FASHION_MEAN, FASHION_STD = 0.2860, 0.3530  # per-pixel statistics of the training images


@pytest.fixture(scope="session")
def fashion_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 8 training images, normalised, (8, 1, 28, 28) float32, and their labels (8,)."""
    x = read_idx(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz", FASHION_MNIST_HOW_TO_GET)[:8]
    y = read_idx(FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz", FASHION_MNIST_HOW_TO_GET)[:8]
    x = (x.astype(np.float32) / 255.0 - FASHION_MEAN) / FASHION_STD
    return torch.from_numpy(x[:, None].copy()), torch.from_numpy(y.astype(np.int64))


def pytest_terminal_summary(terminalreporter):
    """Print the size of the bad-input suite (tests/test_bad_input.py) when it ran."""
    counts = {}
    for outcome in ("passed", "failed"):
        counts[outcome] = sum(1 for r in terminalreporter.stats.get(outcome, [])
                              if "test_bad_input_fails_with_one_line_and_exit_2" in r.nodeid and r.when == "call")
    if sum(counts.values()):
        terminalreporter.write_line(f"bad-input suite: {sum(counts.values())} cases tried, "
                                    f"{counts['passed']} passed, {counts['failed']} failed")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    small batches gain nothing from more, and OpenMP threads waiting on each other slow down
    tenfold when other processes share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
