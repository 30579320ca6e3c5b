"""`nas bench proxies`: do the zero-cost proxies rank architectures like short training does?

Samples `--n` architectures of a space, scores each untrained network with every proxy on
one real batch, trains it briefly on a Fashion-MNIST subset, and prints the Spearman rank
correlation of each proxy with the trained validation accuracy, plus the time each proxy
takes. Parameter count and MACs are scored the same way as baselines a proxy has to beat
to earn its place. Published anchor: Spearman 0.82 for the best proxy on NAS-Bench-201
(Mellor et al. 2021 report ~0.8 for NASWOT on NAS-Bench-201 CIFAR-10; the NAS-Bench-201
training protocol is 200 epochs, ours is minutes).
"""

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import spearmanr

from nas.train.proxies import PROXIES

ANCHOR = 0.82  # best zero-cost proxy's Spearman rho on NAS-Bench-201 (published)


@dataclass
class ArchScore:
    name: str
    proxies: dict  # proxy name -> score (nan when the proxy failed)
    proxy_ms: dict  # proxy name -> milliseconds for this network
    baselines: dict  # params, macs, ...
    accuracy: float = math.nan  # nan when training diverged
    train_time_s: float = 0.0
    errors: list = field(default_factory=list)


def proxy_batch(dataset, size: int = 128) -> torch.Tensor:
    """A fixed stratified batch of real training images (NASWOT's paper uses 128)."""
    from nas.data.split import stratified_subset

    index = stratified_subset(dataset.labels.numpy(), min(size, len(dataset)), seed=0)
    return dataset.batch(torch.as_tensor(index))[0]


def score_arch(name: str, make_model: Callable[[], torch.nn.Module], data, epochs: int, subset: int | None,
               batch_size: int = 128, baselines: dict | None = None, seed: int = 0,
               val_subset: int | None = None) -> ArchScore:
    """Proxies of the untrained network, then its validation accuracy after brief training."""
    from nas.train.trainer import TrainingDiverged, train

    torch.manual_seed(seed)
    model = make_model()
    x = proxy_batch(data.train, batch_size)
    score = ArchScore(name, {}, {}, dict(baselines or {}))
    score.baselines.setdefault("params", sum(p.numel() for p in model.parameters()))
    for proxy, fn in PROXIES.items():
        t = time.perf_counter()
        try:
            score.proxies[proxy] = fn(model, x)
        except (RuntimeError, ValueError) as e:  # a proxy that cannot score this network
            score.proxies[proxy] = math.nan
            score.errors.append(f"{proxy}: {e}")
        score.proxy_ms[proxy] = (time.perf_counter() - t) * 1000.0
    try:
        result = train(model, data, epochs, subset=subset, seed=seed, progress=False, measure_inference=False,
                       val_subset=val_subset)
        score.accuracy, score.train_time_s = result.accuracy, result.train_time_s
    except TrainingDiverged as e:
        score.errors.append(str(e))
    return score


def correlations(scores: list[ArchScore]) -> dict:
    """Spearman rho (and p) of every proxy and baseline against accuracy, over finite pairs."""
    out = {}
    names = list(scores[0].proxies) + list(scores[0].baselines) if scores else []
    for name in names:
        pairs = [(s.proxies.get(name, s.baselines.get(name)), s.accuracy) for s in scores]
        pairs = [(float(v), a) for v, a in pairs if v is not None and math.isfinite(float(v)) and math.isfinite(a)]
        if len(pairs) < 3 or len({v for v, _ in pairs}) < 2 or len({a for _, a in pairs}) < 2:
            out[name] = {"spearman": None, "p": None, "n": len(pairs)}  # undefined: too few or constant
            continue
        rho, p = spearmanr([v for v, _ in pairs], [a for _, a in pairs])
        ms = [s.proxy_ms[name] for s in scores if name in s.proxy_ms]
        out[name] = {"spearman": float(rho), "p": float(p), "n": len(pairs),
                     "ms_median": float(np.median(ms)) if ms else None, "kind": "proxy" if ms else "baseline"}
    return out


def add_arguments(p) -> None:
    p.add_argument("--n", type=int, default=30, help="architectures to sample (default 30)")
    p.add_argument("--epochs", type=int, default=1, help="training epochs per architecture (default 1)")
    p.add_argument("--subset", type=int, default=2000, help="training images per architecture (default 2000)")
    p.add_argument("--val-subset", type=int, default=2000, help="validation images scored (default 2000)")
    p.add_argument("--space", default="search_spaces/default.yaml", help="search space (default: the default space)")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir")
    p.add_argument("--seed", type=int, default=0, help="sampling and training seed")
    p.add_argument("--batch", type=int, default=128, help="proxy batch size (default 128, as in NASWOT)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run(args) -> int:
    import optuna

    from nas.blocks.model import build_model
    from nas.cost import arch_cost
    from nas.data import load_dataset
    from nas.errors import UsageError
    from nas.space import encode, load_space, random_archs

    if args.n < 3:
        raise UsageError(f"--n {args.n}: expected at least 3 architectures (a rank correlation needs them)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = load_dataset(args.dataset, args.data_dir)
    space = load_space(args.space)
    archs = random_archs(space, args.n, args.seed, in_chs=data.in_chs, num_classes=data.num_classes)
    by_resolution = {}
    scores = []
    for i, arch in enumerate(archs):
        d = by_resolution.setdefault(arch.resolution, data.resized(arch.resolution))
        cost = arch_cost(arch)
        s = score_arch(encode(arch), lambda arch=arch: build_model(arch), d, args.epochs, args.subset,
                       args.batch, {"macs": float(cost.macs), "weight_bytes": float(cost.weight_bytes)},
                       seed=args.seed, val_subset=args.val_subset)
        scores.append(s)
        print(f"[{i + 1}/{len(archs)}] acc {s.accuracy:.4f} train {s.train_time_s:.1f}s "
              + " ".join(f"{k} {v:.4g} ({s.proxy_ms[k]:.0f} ms)" for k, v in s.proxies.items())
              + (f" errors: {s.errors}" if s.errors else ""), file=sys.stderr)
    corr = correlations(scores)
    info = {"n": len(scores), "epochs": args.epochs, "subset": args.subset, "val_subset": args.val_subset,
            "dataset": data.name,
            "space": args.space, "seed": args.seed, "threads": torch.get_num_threads(), "anchor_nb201": ANCHOR,
            "correlations": corr,
            "archs": [{"arch": s.name, "accuracy": s.accuracy, "train_time_s": s.train_time_s, **s.proxies,
                       **s.baselines, "errors": s.errors} for s in scores]}
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"Spearman rank correlation with validation accuracy after {args.epochs} epoch(s) on "
          f"{args.subset} {data.name} images, {len(scores)} archs of {args.space} "
          f"(published anchor: {ANCHOR} on NAS-Bench-201):")
    for name, c in corr.items():
        rho = "n/a" if c["spearman"] is None else f"{c['spearman']:+.3f} (p={c['p']:.2g}, n={c['n']})"
        ms = f"{c['ms_median']:.0f} ms/arch" if c.get("ms_median") is not None else "baseline"
        print(f"  {name:<13} {rho:<28} {ms}")
    return 0
