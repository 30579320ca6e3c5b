"""ImageFolder trees (``root/<class>/<image>``), read once into uint8 arrays.

A root with ``train/`` and ``test/`` (or ``val/``) sub-trees uses those as the splits;
otherwise the whole root is the training data and the test split is carved from it.
Images are decoded with PIL through torchvision's `ImageFolder`. All-grayscale trees stay
one channel, anything else becomes RGB. When `resolution` is given, or the images do not
all share one square size, each image is resized (shorter side) and centre-cropped to
`resolution` (default `DEFAULT_RESOLUTION`).
"""

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torchvision import transforms
from torchvision.datasets import ImageFolder

from nas import limits
from nas.data.raw import RawSplits
from nas.errors import UsageError

DEFAULT_RESOLUTION = 32
HOW_TO_GET = "expected an ImageFolder tree: <root>/<class name>/<image file>, optionally under train/ and test/"


def is_image_folder(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_dir() for p in folder.iterdir())


def _tree(root: Path, class_to_idx: dict | None = None) -> ImageFolder:
    try:
        tree = ImageFolder(str(root), loader=lambda path: path)  # paths only; decoded below
    except (FileNotFoundError, OSError) as e:
        raise UsageError(f"dataset folder {root}: {e}; {HOW_TO_GET}") from None
    if class_to_idx is not None and not set(tree.class_to_idx) <= set(class_to_idx):
        extra = sorted(set(tree.class_to_idx) - set(class_to_idx))
        raise UsageError(f"dataset folder {root}: classes {extra} are not in the training tree; {HOW_TO_GET}")
    return tree


def _probe(tree: ImageFolder) -> list[tuple[str, tuple[int, int]]]:
    """(mode, size) of every image, reading headers only."""
    info = []
    for path, _ in tree.samples:
        try:
            with Image.open(path) as im:
                info.append((im.mode, im.size))
        except Image.DecompressionBombError:  # Pillow's own limit: read the real size from the header alone
            info.append(("", _header_size(path)))
        except (UnidentifiedImageError, OSError) as e:
            raise UsageError(f"dataset file {path}: not a readable image ({e}); {HOW_TO_GET}") from None
        width, height = info[-1][1]
        if width * height > limits.MAX_IMAGE_PIXELS:  # refused from its header, before decoding
            raise limits.LimitExceeded(f"dataset file {path}: {width}x{height} pixels, over the limit of "
                                       f"{limits.MAX_IMAGE_PIXELS} per image (docs/limits.md)")
    return info


def _header_size(path) -> tuple[int, int]:
    """(width, height) from an image's header, past Pillow's decompression-bomb refusal (only
    the header is read: nothing is decoded)."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError):
        return (limits.MAX_IMAGE_PIXELS + 1, 1)
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _decode(tree: ImageFolder, mode: str, resize) -> np.ndarray:
    out = []
    for path, _ in tree.samples:
        try:
            with Image.open(path) as im:
                im = im.convert(mode)
        except OSError as e:
            raise UsageError(f"dataset file {path}: truncated or corrupt image ({e}); {HOW_TO_GET}") from None
        if resize is not None:
            im = resize(im)
        a = np.asarray(im, dtype=np.uint8)
        out.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))  # (C, H, W)
    return np.stack(out)


def load_image_folder(root: Path, resolution: int | None = None) -> RawSplits:
    """Train (and test, when present) arrays of an ImageFolder tree."""
    test_root = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    train_root = root / "train" if (root / "train").is_dir() and test_root is not None else root
    train = _tree(train_root)
    test = _tree(test_root, train.class_to_idx) if test_root is not None else None
    info = _probe(train) + (_probe(test) if test is not None else [])
    mode = "L" if all(m in ("L", "1") for m, _ in info) else "RGB"
    sizes = {size for _, size in info}
    resize = None
    if resolution is not None or len(sizes) > 1 or next(iter(sizes))[0] != next(iter(sizes))[1]:
        resolution = resolution or DEFAULT_RESOLUTION
        resize = transforms.Compose([transforms.Resize(resolution), transforms.CenterCrop(resolution)])
    x_train = _decode(train, mode, resize)
    y_train = np.asarray(train.targets, dtype=np.int64)
    x_test = y_test = None
    if test is not None:
        x_test = _decode(test, mode, resize)
        # map the test tree's class indices onto the training tree's
        remap = {i: train.class_to_idx[c] for c, i in test.class_to_idx.items()}
        y_test = np.asarray([remap[t] for t in test.targets], dtype=np.int64)
    return RawSplits(x_train, y_train, x_test, y_test, tuple(train.classes))
