"""`nas bench train`: training throughput of `nas.train.train` against a plain PyTorch loop.

The same module (same init) is trained on the same images by

- the trainer (uint8 data converted per batch, label smoothing, cosine schedule, NaN
  check, memory-format choice), its `images_per_s`;
- a plain loop written the way a tutorial does: the whole subset pre-converted to a
  normalised float32 tensor, a shuffled index, forward / cross-entropy / backward / AdamW
  step, in the default memory format; and the same loop in channels_last, which is what
  an expert would write on CPU.

Runs alternate (trainer, plain, plain NHWC) `--repeats` times after one untimed warm-up,
and the median images/s of each is printed. The "mid-size arch" is the median-MACs one of
11 architectures sampled from the default space (seed 0) unless `--arch` is given.
"""

import json
import statistics
import sys
import time
import types
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from nas.measure.device import add_device_arguments
from nas.train.batches import subset_of


def plain_loop_images_per_s(model: nn.Module, dataset, batch_size: int = 64, lr: float = 5e-3,
                            channels_last: bool = False, seed: int = 0, device=None) -> float:
    """Images/s of a hand-written training loop over `dataset` (one epoch, float32 pre-converted,
    on `device`: a `torch.device`, default the CPU)."""
    device = torch.device("cpu") if device is None else device
    x_all, y_all = dataset.batch(torch.arange(len(dataset)))  # (N, C, H, W) float32, once, untimed
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device).to(memory_format=fmt)
    x_all, y_all = x_all.to(device).contiguous(memory_format=fmt), y_all.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    n = len(y_all)
    start = time.perf_counter()
    perm = torch.randperm(n, generator=g)
    for s in range(0, n - 1, batch_size):
        idx = perm[s:s + batch_size]
        loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    model.to(memory_format=torch.contiguous_format).to("cpu")
    return n / elapsed


def compare(make_model: Callable[[], nn.Module], data, subset: int = 4096, batch_size: int = 64,
            repeats: int = 3, device=None) -> dict:
    """Median images/s of the trainer and of the plain loops, each on a fresh copy of the model,
    all on `device` (a `torch.device`, default the CPU)."""
    from nas.train.trainer import train

    device = torch.device("cpu") if device is None else device
    train_set = subset_of(data.train, subset)

    same_images = types.SimpleNamespace(train=train_set, val=data.val)  # the trainer's view of the same data

    def fresh():
        torch.manual_seed(0)
        return make_model()

    plain_loop_images_per_s(fresh(), subset_of(train_set, min(len(train_set), 4 * batch_size)), batch_size,
                            device=device)  # warm-up
    figures = {"trainer": [], "plain_nchw": [], "plain_nhwc": []}
    channels_last = None
    for _ in range(repeats):
        r = train(fresh(), same_images, 1, batch_size=batch_size, progress=False, measure_inference=False,
                  device=device)
        figures["trainer"].append(r.images_per_s)
        channels_last = r.channels_last
        figures["plain_nchw"].append(plain_loop_images_per_s(fresh(), train_set, batch_size, device=device))
        figures["plain_nhwc"].append(plain_loop_images_per_s(fresh(), train_set, batch_size, channels_last=True,
                                                             device=device))
    med = {k: statistics.median(v) for k, v in figures.items()}
    return {"images_per_s": med, "runs": figures, "trainer_channels_last": channels_last,
            "ratio_vs_best_plain": med["trainer"] / max(med["plain_nchw"], med["plain_nhwc"]),
            "subset": len(train_set), "batch_size": batch_size, "repeats": repeats,
            "threads": torch.get_num_threads(), "device": str(device)}


def mid_size_arch(space_path: str = "search_spaces/default.yaml", in_chs: int = 1, num_classes: int = 10):
    """The median-MACs architecture of 11 sampled from a space with seed 0."""
    from nas.cost import arch_cost
    from nas.space import load_space, random_archs

    archs = random_archs(load_space(space_path), 11, 0, in_chs=in_chs, num_classes=num_classes)
    return sorted(archs, key=lambda a: arch_cost(a).macs)[len(archs) // 2]


def add_arguments(p) -> None:
    p.add_argument("--arch", help="arch string (default: the median-MACs of 11 archs of the default space)")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir")
    p.add_argument("--subset", type=int, default=4096, help="training images per run (default 4096)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="alternating runs per contender (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_device_arguments(p, amp=False)


def run(args) -> int:
    import optuna

    from nas.blocks.model import build_model
    from nas.cost import arch_cost
    from nas.data import load_dataset
    from nas.errors import UsageError
    from nas.space import decode, encode

    from nas.measure.device import resolve_device

    if args.repeats < 1:
        raise UsageError(f"--repeats {args.repeats}: expected a whole number >= 1")
    device = resolve_device(args.device or "auto")  # before any work
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = load_dataset(args.dataset, args.data_dir)
    arch = decode(args.arch) if args.arch else mid_size_arch(in_chs=data.in_chs, num_classes=data.num_classes)
    data = data.resized(arch.resolution)
    print(f"arch {encode(arch)} ({arch_cost(arch).macs / 1e6:.1f} M MACs)", file=sys.stderr)
    info = {"arch": encode(arch), "macs": arch_cost(arch).macs, "dataset": data.name,
            **compare(lambda: build_model(arch), data, args.subset, args.batch_size, args.repeats, device)}
    if args.json:
        print(json.dumps(info))
        return 0
    m = info["images_per_s"]
    print(f"training throughput, {info['subset']} {data.name} images, batch {info['batch_size']}, "
          f"{info['threads']} threads, {info['device']}, median of {info['repeats']}:")
    print(f"  nas.train.train            {m['trainer']:8.0f} images/s (channels_last={info['trainer_channels_last']})")
    print(f"  plain loop, NCHW           {m['plain_nchw']:8.0f} images/s")
    print(f"  plain loop, channels_last  {m['plain_nhwc']:8.0f} images/s")
    print(f"  trainer / best plain loop  {info['ratio_vs_best_plain']:.2f}x")
    return 0
