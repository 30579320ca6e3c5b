"""In-memory image datasets kept as uint8 and normalised one batch at a time.

Images live as a uint8 tensor ``(N, C, H, W)``, a quarter of float32's memory; the
trainer asks for whole batches (`ImageDataset.batch`) so conversion to normalised float32
is one vectorised op per batch instead of one Python call per image. `__getitem__` exists
too, so any `torch.utils.data.DataLoader` works on these datasets as well.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


class ImageDataset(torch.utils.data.Dataset):
    """uint8 images ``(N, C, H, W)`` with int64 labels ``(N,)`` and per-channel mean/std.

    `mean` and `std` are in [0, 1] units (the image divided by 255); a batch comes out as
    ``(x / 255 - mean) / std`` in float32.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images: expected a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or len(labels) != len(images):
            raise ValueError(f"labels: expected shape ({len(images)},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if self.mean.numel() != images.shape[1] or self.std.numel() != images.shape[1]:
            raise ValueError(f"mean/std: expected {images.shape[1]} values (one per channel)")
        # x_norm = (x_u8 - 255 * mean) * (1 / (255 * std)), broadcast over (N, C, H, W)
        self._shift = (self.mean * 255.0).reshape(1, -1, 1, 1)
        self._scale = (1.0 / (self.std * 255.0)).reshape(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x, y = self.batch(torch.as_tensor([i]))
        return x[0], int(y[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])

    def batch(self, index: torch.Tensor, memory_format=torch.contiguous_format) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float32 images ``(B, C, H, W)`` and int64 labels ``(B,)`` for `index`.

        One gather and one conversion; `memory_format=torch.channels_last` lays the batch out
        NHWC in that same copy.
        """
        index = index.to(self.images.device)  # no copy on the CPU
        x = self.images[index].to(torch.float32, memory_format=memory_format)
        x.sub_(self._shift).mul_(self._scale)
        return x, self.labels[index]

    def to(self, device) -> "ImageDataset":
        """This dataset held on `device` (a GPU keeps its training images there, still uint8);
        its batches come out on that device."""
        out = ImageDataset(self.images.to(device), self.labels.to(device), self.mean, self.std)
        out._shift, out._scale = out._shift.to(device), out._scale.to(device)
        return out

    def subset(self, index) -> "ImageDataset":
        """A new dataset holding the rows `index` (copied), same normalisation."""
        index = torch.as_tensor(index, dtype=torch.int64)
        return ImageDataset(self.images[index], self.labels[index], self.mean, self.std)

    def resized(self, resolution: int, chunk: int = 4096) -> "ImageDataset":
        """Square-resized copy (bilinear, antialiased when shrinking), still uint8."""
        n, c, h, w = self.images.shape
        if (h, w) == (resolution, resolution):
            return self
        out = torch.empty((n, c, resolution, resolution), dtype=torch.uint8)
        shrink = resolution < max(h, w)
        for s in range(0, n, chunk):
            x = self.images[s:s + chunk].to(torch.float32)
            x = F.interpolate(x, size=(resolution, resolution), mode="bilinear",
                              align_corners=False, antialias=shrink)
            out[s:s + chunk] = x.round_().clamp_(0, 255).to(torch.uint8)
        return ImageDataset(out, self.labels, self.mean, self.std)


@dataclass
class DataBundle:
    """Train / validation / test splits of one dataset, and what a model needs to know.

    `val` is carved from the training data (seeded, stratified); `test` is the source's
    own test set, or a carved split when the source has none (`test_carved`), and is meant
    for final figures only.
    """

    name: str
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset
    num_classes: int
    in_chs: int
    resolution: int
    source: str = ""
    class_names: tuple = ()
    test_carved: bool = False
    notes: list = field(default_factory=list)

    @property
    def mean(self) -> torch.Tensor:
        return self.train.mean

    @property
    def std(self) -> torch.Tensor:
        return self.train.std

    def resized(self, resolution: int) -> "DataBundle":
        """The same bundle with every split resized to ``resolution x resolution``."""
        if resolution == self.resolution:
            return self
        return DataBundle(self.name, self.train.resized(resolution), self.val.resized(resolution),
                          self.test.resized(resolution), self.num_classes, self.in_chs, resolution,
                          self.source, self.class_names, self.test_carved,
                          self.notes + [f"resized {self.resolution} -> {resolution} (bilinear)"])

    def describe(self) -> str:
        """One line: name, sizes and shape, for logs."""
        return (f"{self.name}: train {len(self.train)}, val {len(self.val)}, test {len(self.test)}"
                f"{' (carved)' if self.test_carved else ''}, {self.in_chs}x{self.resolution}x{self.resolution}, "
                f"{self.num_classes} classes")
