"""The final recipe's extras over a plain training loop: batch augmentation, an exponential
moving average (EMA) of the weights, and BatchNorm recalibration.

- `Augment`: random crop with zero padding (in pixel space: the pad is the image's black,
  whatever the normalisation), a horizontal flip where the dataset's labels survive it,
  and optional random erasing. Each image of a batch draws its own offsets, flip and
  rectangle. torchvision's v2 transforms draw one set of parameters per call, so on a
  batch tensor every image would get the same crop; a per-image loop over them costs more
  than the training step on these small nets. Hence the few vectorised lines here.
- EMA: `torch.optim.swa_utils.AveragedModel` with `get_ema_multi_avg_fn`; BatchNorm
  statistics are recomputed afterwards with `torch.optim.swa_utils.update_bn`, which is
  also the recalibration low-bit and binary nets get before they are scored.

`flip_valid(name)` says where a flip keeps the label: Fashion-MNIST's garments and
CIFAR's objects, not digits (a mirrored 2 or 7 is not a digit).
"""

from dataclasses import dataclass

import torch

FLIP_VALID = frozenset({"fashion-mnist", "cifar10", "cifar100"})


def flip_valid(dataset_name: str | None) -> bool:
    """Whether a horizontal flip keeps the label on this dataset (unknown datasets: no)."""
    return dataset_name in FLIP_VALID


def default_augment(dataset_name: str | None, resolution: int, erasing: float = 0.0) -> "Augment":
    """The final recipe's augmentation: pad by an eighth of the side (28 px: 3, 32 px: 4 as in
    the CIFAR recipes, 8 px: 1), flip where `flip_valid`."""
    return Augment(pad=max(1, resolution // 8), flip=flip_valid(dataset_name), erasing=erasing)


@dataclass(frozen=True)
class Augment:
    """Per-image random crop (`pad` pixels each side), flip and random erasing.

    `fill`: the normalised value of a black pixel, per channel ((0 - mean) / std), so that the
    padding is black as in torchvision's RandomCrop on uint8 images."""

    pad: int = 2
    flip: bool = False
    erasing: float = 0.0  # probability of erasing one rectangle of 2%..20% of the image

    def __post_init__(self):
        if self.pad < 0:
            raise ValueError(f"Augment: pad={self.pad}; expected >= 0")
        if not 0.0 <= self.erasing <= 1.0:
            raise ValueError(f"Augment: erasing={self.erasing}; expected a probability in [0, 1]")

    def __call__(self, x: torch.Tensor, fill: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        fill = fill.reshape(1, c, 1, 1).to(x.device, x.dtype)  # random draws stay on the CPU generator
        if self.pad:
            p = self.pad
            padded = fill.expand(n, c, h + 2 * p, w + 2 * p).clone()
            padded[:, :, p:p + h, p:p + w] = x
            dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
            dy, dx = dy.to(x.device), dx.to(x.device)
            rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(n, c, h, w + 2 * p)
            x = padded.gather(2, rows)
            cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(n, c, h, w)
            x = x.gather(3, cols)
        if self.flip:
            flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if self.erasing:
            x = _erase(x, fill, self.erasing, generator)
        return x


def _erase(x, fill, p, generator):
    """Random erasing (Zhong et al.): with probability p one rectangle of 2%..20% of the area,
    aspect ratio 0.3..3.3, set to black."""
    n, _, h, w = x.shape
    area = h * w * (0.02 + 0.18 * torch.rand(n, generator=generator))
    log_ratio = torch.empty(n).uniform_(-1.2, 1.2, generator=generator)
    ratio = torch.exp(log_ratio)
    eh = torch.sqrt(area * ratio).round().clamp(1, h).long()
    ew = torch.sqrt(area / ratio).round().clamp(1, w).long()
    top = (torch.rand(n, generator=generator) * (h - eh + 1)).long()
    left = (torch.rand(n, generator=generator) * (w - ew + 1)).long()
    rows = torch.arange(h)[None, :]
    cols = torch.arange(w)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])
    chosen = torch.rand(n, generator=generator) < p
    mask = ((in_rows[:, :, None] & in_cols[:, None, :]) & chosen[:, None, None]).to(x.device)
    return torch.where(mask[:, None], fill.expand_as(x), x)


def ema_model(model: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An EMA of `model`'s parameters and buffers (updated by `.update_parameters(model)`)."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema decay={decay}: expected 0 < decay < 1")
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def recalibrate_batchnorm(model: torch.nn.Module, batches) -> None:
    """Recompute every BatchNorm's running mean / variance over `batches` ((x, y) pairs) with
    the weights as they are (cumulative average, `torch.optim.swa_utils.update_bn`)."""
    from torch.optim.swa_utils import update_bn

    if has_batchnorm(model):
        update_bn(batches, model)
