"""Accuracy on a dataset and inference time per image."""

import statistics
import time

import torch
import torch.nn as nn

from nas.train.batches import iterate


def evaluate(model: nn.Module, dataset, batch_size: int = 512, channels_last: bool = False) -> float:
    """Top-1 accuracy of `model` on `dataset`, in [0, 1]. The model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        with torch.inference_mode():
            for x, y in iterate(dataset, batch_size, channels_last=channels_last):
                correct += int((model(x).argmax(dim=1) == y).sum())
                total += len(y)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluate: the dataset is empty; expected at least one image")
    return correct / total


def measure_inference_ms(model: nn.Module, example: torch.Tensor, repeats: int = 30, warmup: int = 5,
                         channels_last: bool = False) -> float:
    """Median milliseconds per image of ``model(example)`` in eval mode, over `repeats` runs.

    `example` is a real input batch (B, C, H, W); B = 1 measures latency, a larger B
    throughput per image. `warmup` untimed runs come first (allocator, oneDNN kernels).
    Uses the calling thread settings (`torch.get_num_threads()`).
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats!r}: expected >= 1")
    if channels_last:
        example = example.contiguous(memory_format=torch.channels_last)
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.inference_mode():
            for i in range(warmup + repeats):
                t = time.perf_counter()
                model(example)
                if i >= warmup:
                    times.append(time.perf_counter() - t)
    finally:
        model.train(was_training)
    return statistics.median(times) * 1000.0 / example.shape[0]
