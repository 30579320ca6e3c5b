"""`nas bench search`: the search against random search and hand-designed nets, same budget.

For each weight budget (default 5MB on search_spaces/default.yaml and 100KB on
search_spaces/mcu.yaml), on Fashion-MNIST:
(a) `ladder`: the default search (TPE, successive halving over epochs, the best distinct
    finalists retrained on the final recipe and the best final validation accuracy kept);
(b) `random`: Optuna's RandomSampler, no proxy, no pruning, each candidate trained fully,
    its best one retrained; it searches for the budget plus the wall-clock the ladder spent
    retraining its extra finalists, so both spend the same time in all;
    both use the same per-candidate fidelity (`--fidelity`: with `final` every candidate runs the
    final recipe itself, scored at its rungs, and no finalist is retrained);
(c) hand-designed baselines that fit the budget, in fp32 (what hand-tuning ships):
    a width-scaled timm MobileNetV3-small and a ResNet-20-like CIFAR net, width grown in
    steps of 1/16 until the next step would exceed the budget (or `--hand-fit SIZE`,
    e.g. the search's result for an equal-size comparison).
Every method's best model gets the same final recipe (`nas.search.final.final_train`:
epochs, images, batch size, seed) and is tested once on the test split. Printed: best
feasible validation accuracy of the search, final validation and test accuracy,
weight_bytes of the model, per method.
"""

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

from nas.compress.model import resnet20_like  # a hand baseline; compress uses it too
from nas.errors import UsageError
from nas.search.budgets import Budgets
from nas.search.config import FIDELITIES, SearchConfig
from nas.units import format_bytes, format_seconds, parse_bytes, parse_seconds

SPACE_FOR = {"default": "search_spaces/default.yaml", "mcu": "search_spaces/mcu.yaml"}
METHODS = ("ladder", "random", "hand")
# the bench's dataset (Fashion-MNIST): the hand nets are built for it
FASHION_MNIST_CHANNELS, FASHION_MNIST_CLASSES, FASHION_MNIST_RESOLUTION = 1, 10, 28


def add_arguments(p):
    p.add_argument("--targets", default="5MB:default,100KB:mcu",
                   help="comma-separated BUDGET:SPACE pairs (space: default or mcu)")
    p.add_argument("--budget", default="6m", help="wall-clock search budget per method and target")
    p.add_argument("--subset", type=int, default=6000, help="training images per search candidate")
    p.add_argument("--epochs", type=int, default=3, help="epochs per search candidate")
    p.add_argument("--fidelity", choices=FIDELITIES, default="subset",
                   help="how both searches score a candidate (`nas search --fidelity`): its own run of --subset x "
                        "--epochs (default), or the final recipe itself, scored at rungs")
    p.add_argument("--final-epochs", type=int, default=5, help="epochs of the common final recipe")
    p.add_argument("--final-subset", type=int, default=20000, help="training images of the final recipe")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated subset of {','.join(METHODS)} (the hand nets do not depend on --budget)")
    p.add_argument("--hand-fit", metavar="SIZE",
                   help="fit the hand nets to this many weight bytes instead of the target (e.g. the search's "
                        "result, for an equal-size comparison)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def fp32_payload_bytes(model: nn.Module) -> int:
    """Deployable fp32 bytes of a plain float model: conv/linear weights, BN folded into a bias."""
    total = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            total += 4 * (m.weight.numel() + m.weight.shape[0])  # weights + (folded or own) bias
    return total


def mobilenetv3_small(width: float, in_chs: int, num_classes: int) -> nn.Module:
    from timm.models.mobilenetv3 import _gen_mobilenet_v3
    from timm.layers import make_divisible
    model = _gen_mobilenet_v3("mobilenetv3_small_100", channel_multiplier=width, pretrained=False,
                              num_classes=num_classes, in_chans=in_chs)
    features = make_divisible(1024 * width)  # timm keeps the 1024-wide head fixed; scale it with the rest
    model.conv_head = nn.Conv2d(model.conv_head.in_channels, features, 1, bias=True)
    model.classifier = nn.Linear(features, num_classes)
    return model


def widest_fitting(make, budget: int, in_chs: int, num_classes: int):
    """The largest width in steps of 1/16 whose fp32 payload fits the budget (None if none does)."""
    best = None
    for step in range(1, 65):
        model = make(step / 16, in_chs, num_classes)
        if fp32_payload_bytes(model) > budget:
            break
        best = (step / 16, model)
    return best


def _final(model, config: SearchConfig) -> dict:
    """The search's final recipe (`nas.search.final.final_train`), applied to a hand-designed model."""
    from nas.search.final import final_data, final_train
    from nas.train.evaluate import evaluate
    data = final_data(config, FASHION_MNIST_RESOLUTION)
    result = final_train(model, data, config, measure_inference=False)
    return {"val_accuracy": result.accuracy, "test_accuracy": evaluate(model, data.test),
            "train_time_s": round(result.train_time_s, 1), "batch_size": result.batch_size, "steps": result.steps}


def run(args) -> int:
    from nas.cost.latency import find_profile
    from nas.search.final import artifacts_dir
    from nas.search.runner import run_search

    profile = find_profile()  # this device's profile, if calibrated: the searches record latency_ms
    budget_s = parse_seconds(args.budget, "--budget")
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UsageError(f"--methods {args.methods!r}: unknown {unknown}; expected a subset of {list(METHODS)}")
    hand_fit = parse_bytes(args.hand_fit, "--hand-fit") if args.hand_fit else None
    rows, workdir = [], Path(tempfile.mkdtemp(prefix="nas-bench-search-"))
    # the hand nets' final recipe: the search's own (`nas.search.final.final_train`)
    final_recipe = SearchConfig(seed=args.seed, final_epochs=args.final_epochs, final_subset=args.final_subset)
    for pair in args.targets.split(","):
        target_text, _, space_name = pair.partition(":")
        target = parse_bytes(target_text, "--targets")
        space = SPACE_FOR.get(space_name or "default")
        if space is None:
            raise UsageError(f"--targets {pair!r}: unknown space {space_name!r}; expected one of {list(SPACE_FOR)}")
        extra_final_s = 0.0  # wall-clock the ladder spent retraining more than one finalist
        for method in [m for m in ("ladder", "random") if m in methods]:
            search_s = budget_s + (extra_final_s if method == "random" else 0.0)
            _log(f"{format_bytes(target)}: {method} search for {format_seconds(search_s)}")
            config = SearchConfig(
                # a name of this run's own: the studies' weights go to studies/<name>/ (`nas.search.final`), and
                # benches side by side in one folder must not overwrite each other's; removed below
                study=f"bench-{workdir.name}-{space_name}-{method}",
                storage=f"journal:{workdir / f'{space_name}-{method}.journal'}",
                space=space, budgets=Budgets(weight_bytes=target), sampler="tpe" if method == "ladder" else "random",
                proxy="none", pruner="sh" if method == "ladder" else "none",
                budget_s=search_s, seed=args.seed, subset=args.subset, epochs=args.epochs, fidelity=args.fidelity,
                final_top=SearchConfig.final_top if method == "ladder" else 1,
                final_epochs=args.final_epochs, final_subset=args.final_subset)
            start = time.time()
            try:
                summary = run_search(config, profile, show_progress=True)
            finally:  # the bench keeps figures, not models
                shutil.rmtree(artifacts_dir(config.study), ignore_errors=True)
            row = {"target": target, "space": space, "method": method, "search_s": round(search_s, 1),
                   "trained": summary["trained"], "infeasible": summary["infeasible"], "pruned": summary["pruned"]}
            if summary.get("final"):
                result = summary["final"][0]  # the final rung's choice: best validation accuracy
                row.update(arch=result["arch"], weight_bytes=result["costs"]["weight_bytes"],
                           search_val_accuracy=result["search_val_accuracy"], finalists=len(summary["final"]),
                           val_accuracy=result["val_accuracy"], test_accuracy=result["test_accuracy"])
                if method == "ladder" and args.fidelity == "subset":  # final: finalists trained within the search
                    extra_final_s = sum(f["wall_s"] for f in summary["final"]) - summary["final"][0]["wall_s"]
            row["wall_s"] = round(time.time() - start, 1)
            rows.append(row)
        hand = (("mobilenetv3_small", mobilenetv3_small), ("resnet20_like", resnet20_like))
        for name, make in hand if "hand" in methods else ():
            fit_bytes = hand_fit or target
            fit = widest_fitting(make, fit_bytes, FASHION_MNIST_CHANNELS, FASHION_MNIST_CLASSES)
            row = {"target": target, "space": space, "method": f"{name} (hand)", "fitted_to": fit_bytes}
            if fit is None:
                row["note"] = f"no width fits {format_bytes(fit_bytes)}"
            else:
                width, model = fit
                _log(f"{format_bytes(target)}: {name} width {width} ({format_bytes(fp32_payload_bytes(model))} fp32)")
                row.update(width=width, weight_bytes=fp32_payload_bytes(model), **_final(model, final_recipe))
            rows.append(row)
    out = {"rows": rows, "budget_per_method": args.budget, "fidelity": args.fidelity, "final_epochs": args.final_epochs,
           "final_subset": args.final_subset, "final_batch_size": SearchConfig.final_batch_size,
           "subset": args.subset, "epochs": args.epochs, "seed": args.seed, "threads": torch.get_num_threads()}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"\nsearch budget {args.budget} per method, {args.fidelity} fidelity; final recipe "
              f"{args.final_epochs} epochs on "
              f"{args.final_subset} images at batch {SearchConfig.final_batch_size}, seed {args.seed}; "
              f"Fashion-MNIST, {torch.get_num_threads()} threads")
        print(f"{'budget':>8} {'method':<26} {'weight':>9} {'search val':>10} {'final val':>9} {'test':>7} "
              f"{'trained':>7} {'finalists':>9}")
        for r in rows:
            sv = f"{r['search_val_accuracy']:.4f}" if "search_val_accuracy" in r else "-"
            fv = f"{r['val_accuracy']:.4f}" if "val_accuracy" in r else "-"
            te = f"{r['test_accuracy']:.4f}" if "test_accuracy" in r else "-"
            wb = format_bytes(r["weight_bytes"]) if "weight_bytes" in r else "-"
            print(f"{format_bytes(r['target']):>8} {r['method']:<26} {wb:>9} {sv:>10} {fv:>9} {te:>7} "
                  f"{r.get('trained', '-'):>7} {r.get('finalists', '-'):>9}")
    return 0


def _log(message: str) -> None:
    print(f"nas bench search: {message}", file=sys.stderr, flush=True)
