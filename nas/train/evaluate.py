"""Accuracy on a dataset; inference time per image is `nas.measure.timing.measure_inference_ms`."""

import torch
import torch.nn as nn

from nas.measure.timing import measure_inference_ms  # noqa: F401  (re-exported by nas.train)
from nas.train.batches import iterate


def evaluate(model: nn.Module, dataset, batch_size: int = 512, channels_last: bool = False) -> float:
    """Top-1 accuracy of `model` on `dataset`, in [0, 1], computed on the device the model's
    parameters are on (batches are moved there). The model's train/eval mode is restored."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        with torch.inference_mode():
            for x, y in iterate(dataset, batch_size, channels_last=channels_last):
                x, y = x.to(device), y.to(device)  # no copy when already there
                correct += int((model(x).argmax(dim=1) == y).sum())
                total += len(y)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluate: the dataset is empty; expected at least one image")
    return correct / total
