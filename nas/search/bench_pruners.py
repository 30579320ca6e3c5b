"""`nas bench pruners`: which successive-halving rule spends a search's epochs best?

Replays recorded learning curves (validation accuracy after every epoch of candidates that
were trained to the end, from studies run without a pruner, e.g. the random-search studies
of `nas bench search`) through Optuna's own pruners. Each repetition draws candidates in a
random order (with replacement) and lets the pruner stop them epoch by epoch until an epoch
budget is spent; a stopped candidate costs the epochs it ran. Printed first, per space:
Spearman's rank correlation of each epoch's accuracy with the last epoch's (how well a
rung ranks). Then per budget and rule:
candidates tried, and the mean over repetitions of the best (and mean of the top three)
last-epoch accuracy among the candidates that finished, which is what the search hands to
its final rung.

Curves come from `--storage URL` (every study in it that has no PRUNED trial; each
architecture once) or from `--curves FILE` (JSON written by `--save-curves`).
"""

import json
import sys
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState
from scipy.stats import spearmanr

from nas.errors import UsageError
from nas.search.records import StudyRecord, TrialRecord


def add_arguments(p):
    p.add_argument("--storage", action="append", default=[], metavar="URL",
                   help="Optuna storage to read learning curves from (repeatable)")
    p.add_argument("--curves", action="append", default=[], metavar="FILE",
                   help="JSON learning curves written by --save-curves (repeatable)")
    p.add_argument("--save-curves", metavar="FILE", help="write the curves read from --storage as JSON")
    p.add_argument("--budget-epochs", default="60,180", help="comma-separated epoch budgets per search")
    p.add_argument("--factors", default="2,3", help="comma-separated successive-halving reduction factors")
    p.add_argument("--reps", type=int, default=300, help="repetitions per budget and rule")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def curves_from_storage(url: str, seen: set) -> dict[str, list[list[float]]]:
    """{space: [[acc after epoch 1, 2, ...], ...]} from unpruned studies, skipping the
    architectures in `seen` (which it extends): each architecture once."""
    from nas.search.storage import open_storage
    storage = open_storage(url)
    out = {}
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        if any(t.state == TrialState.PRUNED for t in trials):
            continue  # its finished curves are the survivors of a pruner: biased
        config = StudyRecord.of(study).config or {}
        epochs = config.get("epochs")
        if not isinstance(epochs, int):
            continue  # not a `nas search` study: no epoch count to check curves against
        space = Path(str(config.get("space", summary.study_name))).stem
        for t in trials:
            arch, iv = TrialRecord.of(t).arch, t.intermediate_values
            if t.state != TrialState.COMPLETE or not iv or arch in seen or sorted(iv) != list(range(1, epochs + 1)):
                continue
            seen.add(arch)
            out.setdefault(space, []).append([float(iv[e]) for e in sorted(iv)])
    return out


def read_curves(path: str) -> dict[str, list[list[float]]]:
    """A `--save-curves` file: {space: [[acc after epoch 1, 2, ...], ...]}."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"--curves {path!r}: {e}") from None
    ok = isinstance(data, dict) and all(
        isinstance(curves, list) and all(isinstance(c, list) and len(c) >= 2 and
                                         all(isinstance(v, (int, float)) for v in c) for c in curves)
        for curves in data.values())
    if not ok:
        raise UsageError(f"--curves {path!r}: expected a JSON object of space name -> list of learning curves "
                         f"(lists of >= 2 accuracies), as written by --save-curves")
    return data


def replay(curves: np.ndarray, budget_epochs: int, pruner: optuna.pruners.BasePruner,
           rng: np.random.Generator) -> tuple[int, list[float]]:
    """One search: candidates in random order until the epoch budget is spent.
    Returns (candidates tried, last-epoch accuracies of those that finished)."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    n_epochs, spent, tried, finished = curves.shape[1], 0, 0, []
    while spent < budget_epochs:
        curve = curves[rng.integers(len(curves))]
        trial, tried = study.ask(), tried + 1
        for epoch in range(1, n_epochs + 1):
            spent += 1
            trial.report(float(curve[epoch - 1]), epoch)
            if spent >= budget_epochs and epoch < n_epochs:
                study.tell(trial, state=TrialState.FAIL)  # out of budget mid-training
                return tried, finished
            if epoch < n_epochs and trial.should_prune():  # the search never prunes a finished candidate
                study.tell(trial, state=TrialState.PRUNED)
                break
        else:
            study.tell(trial, float(curve[-1]))
            finished.append(float(curve[-1]))
    return tried, finished


def _ints(text: str, where: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise UsageError(f"{where} {text!r}: expected comma-separated whole numbers >= 1")
    return values


def run(args) -> int:
    budgets, factors = _ints(args.budget_epochs, "--budget-epochs"), _ints(args.factors, "--factors")
    if args.reps < 1:
        raise UsageError(f"--reps {args.reps}: expected a whole number >= 1")
    groups: dict[str, list] = {}
    seen = set()  # architectures already read: the same seed samples the same ones again
    for url in args.storage:
        for space, curves in curves_from_storage(url, seen).items():
            groups.setdefault(space, []).extend(curves)
    for path in args.curves:
        for space, curves in read_curves(path).items():
            groups.setdefault(space, []).extend(curves)
    if not groups:
        raise UsageError("no learning curves: give --storage URL (a study run without a pruner) or --curves FILE")
    for space, curves in groups.items():
        lengths = sorted({len(c) for c in curves})
        if len(lengths) != 1:
            raise UsageError(f"space {space!r}: learning curves of {lengths} epochs; expected one epoch count "
                             f"per space (runs of the same protocol)")
    if args.save_curves:
        Path(args.save_curves).write_text(json.dumps(groups) + "\n", encoding="utf-8")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rules = {"none": lambda: optuna.pruners.NopPruner()}
    for f in factors:
        rules[f"sh rf={f}"] = lambda f=f: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=f)
    rows, ranks = [], {}
    for space, curves in groups.items():
        curves = np.asarray(curves, dtype=float)
        ranks[space] = {epoch: float(spearmanr(curves[:, epoch - 1], curves[:, -1])[0])
                        for epoch in range(1, curves.shape[1])}
        for budget in budgets:
            for name, make in rules.items():
                rng = np.random.default_rng(args.seed)  # the same candidate orders for every rule
                tried, best, top3 = [], [], []
                for _ in range(args.reps):
                    n, finished = replay(curves, budget, make(), rng)
                    finished.sort(reverse=True)
                    tried.append(n)
                    best.append(finished[0] if finished else 0.0)
                    top3.append(float(np.mean(finished[:3])) if finished else 0.0)
                rows.append({"space": space, "curves": len(curves), "budget_epochs": budget, "pruner": name,
                             "tried": float(np.mean(tried)), "best": float(np.mean(best)),
                             "top3": float(np.mean(top3))})
                print(f"nas bench pruners: {space} {budget} epochs {name} done", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"rank_vs_last_epoch": ranks, "rows": rows, "reps": args.reps, "seed": args.seed}))
        return 0
    for space, by_epoch in ranks.items():
        print(f"{space}: Spearman rho with the last epoch's accuracy, " +
              ", ".join(f"epoch {e}: {rho:+.2f}" for e, rho in by_epoch.items()))
    print(f"{'space':<10} {'curves':>6} {'epochs':>6} {'pruner':<8} {'tried':>6} {'best':>7} {'top 3':>7}")
    for r in rows:
        print(f"{r['space']:<10} {r['curves']:>6} {r['budget_epochs']:>6} {r['pruner']:<8} {r['tried']:>6.1f} "
              f"{r['best']:>7.4f} {r['top3']:>7.4f}")
    return 0
