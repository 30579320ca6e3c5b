"""`nas bench fidelity`: how well does each fidelity's score rank architectures by the test
accuracy the final recipe gives them?

Samples `--n` distinct architectures of a space (within `--target-mem`, when given) and, for
each, runs what a search runs:
- `subset` fidelity (`--fidelity subset`, the default): the candidate's own short run
  (`--subset` images x `--epochs` at `--batch-size`), scored on the validation subset after
  every epoch, as successive halving sees it;
- `final` fidelity (`--fidelity final`): the final recipe (`--final-subset` x `--final-epochs`
  at `--final-batch-size`), scored at its rungs (`nas.search.config.rung_steps`; with
  `--rung-ema` on a moving average of the weights) and at the end; then the test split, once.
It prints the Spearman rank correlation of every rung's score with that final test accuracy,
with the images each rung costs, and the standard error of one validation score beside the
gaps between the architectures' test accuracies (a score can only rank gaps larger than its
noise). Sizes default to what `nas search` derives from the dataset (`resolve_sizes`).

`--out FILE` appends one JSON line per architecture as it finishes and skips those already
there on a rerun: a long run can be stopped and resumed.
"""

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from nas.search.config import FINAL_RUNG_EMA


def add_arguments(p) -> None:
    p.add_argument("--n", type=int, default=30, help="architectures to sample (default 30)")
    p.add_argument("--space", default="search_spaces/default.yaml", help="search space (default: the default space)")
    p.add_argument("--target-mem", help="sample only architectures within this weight_bytes budget, e.g. 5MB")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir")
    p.add_argument("--seed", type=int, default=0, help="sampling, split and training seed (default 0)")
    for name, what in (("subset", "training images of a candidate's own run"), ("epochs", "its epochs"),
                       ("val-subset", "validation images per score"),
                       ("final-subset", "training images of the final recipe"),
                       ("final-epochs", "epochs of the final recipe")):
        p.add_argument(f"--{name}", type=int, help=f"{what} (default: what `nas search` derives from the dataset)")
    p.add_argument("--rung-ema", action=argparse.BooleanOptionalAction, default=FINAL_RUNG_EMA,
                   help="score the final recipe's rungs on an exponential moving average of the weights "
                        "(nas.train.trainer's rung_ema), as `nas search --fidelity final` does (default); "
                        "--no-rung-ema: on the weights of that step")
    p.add_argument("--jobs", type=int, default=1, help="architectures trained at once, one process each, the "
                                                       "cores shared between them (default 1)")
    p.add_argument("--out", help="JSON lines file: one line per architecture, appended as each finishes; "
                                 "a rerun skips the ones already there")
    p.add_argument("--budget", help="start no architecture after this wall time (e.g. 40m) and summarise the ones "
                                    "done; with --out, the same command resumes")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _measure(arch_str: str, config_dict: dict, threads: int, rung_ema: bool = False) -> dict:
    """One architecture at both fidelities (in a worker process)."""
    import torch

    from nas.blocks.model import build_model
    from nas.cost import arch_cost
    from nas.data import load_dataset
    from nas.search.budgets import Budgets
    from nas.search.config import SearchConfig
    from nas.search.final import final_data, final_train
    from nas.search.objective import final_ladder
    from nas.space import decode
    from nas.train.evaluate import evaluate
    from nas.train.trainer import TrainingDiverged, train

    torch.set_num_threads(threads)
    config = SearchConfig(budgets=Budgets(), **{k: v for k, v in config_dict.items() if k != "budgets"})
    arch = decode(arch_str)
    cost = arch_cost(arch)
    row = {"arch": arch_str, "macs": cost.macs, "weight_bytes": cost.weight_bytes, "rung_ema": rung_ema,
           "errors": []}
    data = load_dataset(config.dataset, config.data_dir, split_seed=config.seed, subset=config.subset,
                        resolution=arch.resolution)
    epochs = []
    torch.manual_seed(config.seed)
    start = time.time()
    try:
        train(build_model(arch), data, epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
              progress=False, measure_inference=False, val_subset=config.val_subset,
              on_epoch_end=lambda e, a: epochs.append(a))
    except TrainingDiverged as e:
        row["errors"].append(f"subset: {e}")
    row["subset_scores"], row["subset_s"] = epochs, round(time.time() - start, 1)

    fdata = final_data(config, arch.resolution)
    rungs, total = final_ladder(config, len(fdata.train))
    scores = []
    torch.manual_seed(config.seed)
    model = build_model(arch)
    start = time.time()
    try:
        result = final_train(model, fdata, config, progress=False, rung_steps=rungs,
                             on_rung=lambda s, a: scores.append(a), rung_ema=rung_ema, measure_inference=False,
                             val_subset=config.val_subset)
        row["final_val"], row["test"] = result.accuracy, evaluate(model, fdata.test)
    except TrainingDiverged as e:
        row["errors"].append(f"final: {e}")
        row["final_val"] = row["test"] = math.nan
    row.update(rungs=rungs, final_steps=total, rung_scores=scores, final_s=round(time.time() - start, 1))
    return row


def _spearman(xs, ys) -> float | None:
    from scipy.stats import spearmanr

    pairs = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None and np.isfinite(x) and np.isfinite(y)]
    if len(pairs) < 3:
        return None
    rho = spearmanr(*zip(*pairs)).statistic
    return None if not np.isfinite(rho) else float(rho)


def summarize(rows: list[dict], config) -> dict:
    """Spearman of every fidelity's scores with the final recipe's test accuracy, their cost in
    images, the noise of one score, and the gaps it has to rank."""
    test = [r["test"] for r in rows]
    out = []
    for e in range(config.epochs):
        out.append({"fidelity": "subset", "rung": f"epoch {e + 1}", "images": config.subset * (e + 1),
                    "spearman": _spearman([r["subset_scores"][e] if len(r["subset_scores"]) > e else None
                                           for r in rows], test)})
    rungs = rows[0]["rungs"] if rows else []
    for k, step in enumerate(rungs):
        out.append({"fidelity": "final", "rung": f"step {step}", "images": step * config.final_batch_size,
                    "spearman": _spearman([r["rung_scores"][k] if len(r["rung_scores"]) > k else None
                                           for r in rows], test)})
    if rows:
        out.append({"fidelity": "final", "rung": f"end (step {rows[0]['final_steps']})",
                    "images": config.final_subset * config.final_epochs,
                    "spearman": _spearman([r["final_val"] for r in rows], test)})
    finite = sorted(t for t in test if np.isfinite(t))
    vals = [r["final_val"] for r in rows if np.isfinite(r["final_val"])]
    p = float(np.median(vals)) if vals else math.nan
    gaps = np.diff(finite) if len(finite) > 1 else np.array([])
    return {"rungs": out, "val_images": config.val_subset,
            "val_standard_error": math.sqrt(p * (1 - p) / config.val_subset) if vals else None,
            "test_range": [finite[0], finite[-1]] if finite else None,
            "median_gap_between_neighbours": float(np.median(gaps)) if len(gaps) else None,
            "median_gap_to_best": float(np.median(finite[-1] - np.array(finite[:-1]))) if len(finite) > 1 else None}


def _record(row: dict, done: dict, out: Path | None, n: int, start: float) -> None:
    done[row["arch"]] = row
    if out is not None:
        with out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
    scores = " ".join(f"{s:.3f}" for s in row["subset_scores"])
    rungs = " ".join(f"{s:.3f}" for s in row["rung_scores"])
    print(f"nas: [{len(done)}/{n}] {row['macs'] / 1e6:.1f}M macs: own run {scores} ({row['subset_s']:.0f} s); "
          f"final rungs {rungs}, end val {row['final_val']:.4f}, test {row['test']:.4f} ({row['final_s']:.0f} s); "
          f"{time.time() - start:.0f} s elapsed", file=sys.stderr, flush=True)


def run(args) -> int:
    import optuna
    import torch

    from nas.cost import arch_cost
    from nas.data import load_dataset
    from nas.errors import UsageError
    from nas.search.config import SearchConfig, resolve_sizes
    from nas.space import encode, load_space, random_archs
    from nas.units import parse_bytes, parse_seconds

    if args.n < 3:
        raise UsageError(f"--n {args.n}: expected at least 3 architectures (a rank correlation needs them)")
    if args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: expected a whole number >= 1")
    limit = parse_bytes(args.target_mem, "--target-mem") if args.target_mem else None
    budget_s = parse_seconds(args.budget, "--budget") if args.budget else None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = SearchConfig(space=args.space, dataset=args.dataset, data_dir=args.data_dir, seed=args.seed,
                          subset=args.subset, epochs=args.epochs, val_subset=args.val_subset,
                          final_subset=args.final_subset, final_epochs=args.final_epochs)
    data = load_dataset(config.dataset, config.data_dir, split_seed=config.seed)
    config = resolve_sizes(config, len(data.train), len(data.val), data.num_classes, data.name)
    space = load_space(args.space)
    archs, seen = [], set()
    for arch in random_archs(space, 20 * args.n, args.seed, in_chs=data.in_chs, num_classes=data.num_classes):
        name = encode(arch)
        if name not in seen and (limit is None or arch_cost(arch).weight_bytes <= limit):
            seen.add(name)
            archs.append(name)
        if len(archs) == args.n:
            break
    if len(archs) < args.n:
        raise UsageError(f"--n {args.n}: only {len(archs)} distinct architectures of {args.space} within "
                         f"--target-mem {args.target_mem} in {20 * args.n} draws; expected a larger budget or --n")

    out = Path(args.out) if args.out else None
    done = {}
    if out is not None and out.is_file():
        for number, line in enumerate(out.read_text().splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    row["arch"]
                except (ValueError, TypeError, KeyError):
                    raise UsageError(f"{out}:{number}: {line[:60]!r} is not a row of `nas bench fidelity --out`; "
                                     f"expected one JSON object per line, as this command writes") from None
                done[row["arch"]] = row
        for row in done.values():  # rows written before the option existed were measured without it
            if row.get("rung_ema", False) != args.rung_ema:
                how = "--rung-ema" if row.get("rung_ema") else "--no-rung-ema"
                raise UsageError(f"--out {out}: holds architectures measured with {how}; expected that option "
                                 f"or another file for this run")
    todo = [a for a in archs if a not in done]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // args.jobs)
    print(f"nas: bench fidelity: {len(archs)} archs of {args.space} on {data.name} ({len(done)} already in "
          f"{out}); own run {config.subset} images x {config.epochs} epochs; final recipe {config.final_subset} "
          f"images x {config.final_epochs} epochs at batch {config.final_batch_size}; scored on {config.val_subset} "
          f"validation images; {args.jobs} job(s) x {threads} thread(s)", file=sys.stderr, flush=True)
    config_dict = asdict(replace(config, budgets=None))
    start = time.time()
    deadline = None if budget_s is None else start + budget_s
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        queue, running = list(todo), set()
        while queue or running:
            while queue and len(running) < args.jobs and (deadline is None or time.time() < deadline):
                running.add(pool.submit(_measure, queue.pop(0), config_dict, threads, args.rung_ema))
            if not running:
                break  # the budget ended: the rest waits for a rerun
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                _record(f.result(), done, out, len(archs), start)
    rows = [done[a] for a in archs if a in done]
    if len(rows) < len(archs):
        print(f"nas: bench fidelity: {len(rows)} of {len(archs)} archs done within --budget {args.budget}; "
              f"the same command{' resumes' if out else ' with --out FILE can resume'}", file=sys.stderr)
    if len(rows) < 3:
        raise UsageError(f"--budget {args.budget}: {len(rows)} architectures done; expected at least 3 for a "
                         f"rank correlation")
    summary = summarize(rows, config)
    info = {"n": len(rows), "sampled": len(archs), "space": args.space, "dataset": data.name, "target_mem": limit,
            "seed": args.seed,
            "subset": config.subset, "epochs": config.epochs, "batch_size": config.batch_size,
            "val_subset": config.val_subset, "final_subset": config.final_subset,
            "final_epochs": config.final_epochs, "final_batch_size": config.final_batch_size,
            "rung_ema": args.rung_ema, "threads": threads, "jobs": args.jobs,
            "torch_threads_here": torch.get_num_threads(), **summary,
            "archs": rows}
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"Spearman with the final recipe's test accuracy ({config.final_subset} images x {config.final_epochs} "
          f"epochs, {len(rows)} archs of {args.space}, test accuracies {summary['test_range'][0]:.4f} .. "
          f"{summary['test_range'][1]:.4f}):")
    print(f"  {'fidelity':<8} {'rung':<16} {'images':>8} {'spearman':>9}")
    for r in summary["rungs"]:
        rho = "n/a" if r["spearman"] is None else f"{r['spearman']:+.3f}"
        print(f"  {r['fidelity']:<8} {r['rung']:<16} {r['images']:>8} {rho:>9}")
    se = summary["val_standard_error"]
    print(f"one validation score's standard error: {se:.4f} ({config.val_subset} images); median gap between "
          f"neighbouring test accuracies {summary['median_gap_between_neighbours']:.4f}, to the best "
          f"{summary['median_gap_to_best']:.4f}")
    return 0
