"""Run a search: open (or resume) the study, run workers, retrain the best, summarise.

A study is resumed by running the same command again: finished trials are kept, dead
workers' RUNNING trials are failed and their architectures re-enqueued, and `--trials`
counts the distinct candidates trained in the whole study (a trial that proposes an
architecture trained before reuses its result and does not count). Ctrl-C stops after
recording what finished; the final retraining is skipped then (run the command again to
finish).
"""

import multiprocessing as mp
import os
import signal
import sys
import time
import warnings

import optuna
import torch
from optuna.trial import TrialState
from tqdm import tqdm

from nas.cost.extremes import extreme
from nas.errors import UsageError
from nas.search import final
from nas.search.config import SearchConfig
from nas.search.objective import DataCache, Objective
from nas.search.results import best_feasible, tally
from nas.search.storage import default_url, fail_dead_local_trials, open_storage
from nas.space import Space, load_space
from nas.units import format_bytes, format_count, format_seconds

DEFAULT_BUDGET_S = 600.0  # when neither --trials nor --budget is given
MAX_INFEASIBLE_STREAK = 500  # consecutive infeasible samples before a worker gives up
MAX_FAIL_STREAK = 5  # consecutive failed trials (errors, NaN) before a worker stops: likely a bug


def _trained(study: optuna.Study) -> int:
    """Distinct candidates trained so far in the whole study: what `--trials` counts."""
    return tally(study.get_trials(deepcopy=False)).trained


def make_sampler(config: SearchConfig, worker_index: int):
    seed = config.seed + 1000 * worker_index
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if config.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    # multivariate + group: the space is conditional (each block kind has its own parameters),
    # and widths, depths and bits interact; constant_liar keeps parallel workers apart.
    # Constraints reach the sampler through trial.set_constraint.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=10, multivariate=True, group=True,
                                          constant_liar=True)


# Successive halving keeps the better half at epochs 1, 2, 4, ...: the first epoch ranks
# candidates loosely (Spearman +0.70 with epoch 3 on the default space's recorded curves,
# epoch 2: +0.81), so keeping a third after epoch 1 threw away nets that start slowly
# (`nas bench pruners` replays recorded learning curves under both rules; docs/results.md).
SH_REDUCTION_FACTOR = 2


def open_study(config: SearchConfig, worker_index: int = 0) -> optuna.Study:
    storage = open_storage(config.storage or default_url(config.study))
    directions = ["maximize"] + ["minimize"] * (len(config.objective_names) - 1)
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=SH_REDUCTION_FACTOR) \
        if config.pruner == "sh" else optuna.pruners.NopPruner()
    sampler = make_sampler(config, worker_index)
    try:  # load first: create_study(load_if_exists=True) appends a create-study record on every resume
        study = optuna.load_study(study_name=config.study, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        study = optuna.create_study(study_name=config.study, storage=storage, directions=directions,
                                    sampler=sampler, pruner=pruner, load_if_exists=True)
    if len(study.directions) != len(directions):
        raise UsageError(f"--study {config.study!r} exists with {len(study.directions)} objective(s); "
                         f"--objectives {config.objectives!r} needs {len(directions)}; use another --study")
    return study


def _tie_study_to_config(study: optuna.Study, config: SearchConfig) -> None:
    """A study is tied to its space, dataset and budgets; refuse to mix them on resume."""
    identity = {"space": config.space, "dataset": config.dataset, "budgets": config.budgets.to_dict(),
                "objectives": config.objectives}
    stored = study.user_attrs.get("identity")
    if stored is None:
        study.set_user_attr("identity", identity)
        study.set_user_attr("config", config.to_dict())
        study.set_metric_names(["val accuracy", *config.objective_names[1:]])  # shown by optuna-dashboard
        return
    for key, value in identity.items():
        if stored.get(key) != value:
            raise UsageError(f"--study {config.study!r} was created with {key}={stored.get(key)!r}, "
                             f"not {value!r}; use the same options to resume, or another --study")


def check_budgets_reachable(space: Space, config: SearchConfig, in_chs: int, num_classes: int) -> None:
    """Fail before any work when no member of the space can meet a budget."""
    for name, cost_field, limit in config.budgets.active():
        if cost_field == "latency_ms":
            continue  # checked by the latency model's own predictions
        low = extreme(space, cost_field, in_chs=in_chs, num_classes=num_classes)
        if low.value > limit:
            fmt = format_bytes if cost_field.endswith("bytes") else format_count
            option = {"mem": "--target-mem", "act_mem": "--target-act-mem", "macs": "--target-macs"}[name]
            raise UsageError(f"{option} {fmt(limit)}: below the cheapest architecture in {config.space} "
                             f"({cost_field} {fmt(low.value)}); expected a budget >= {fmt(low.value)}")


class _Stopper:
    """Optuna callback: stop at the trained-trial target, the deadline, or an infeasible streak."""

    def __init__(self, config: SearchConfig, deadline: float | None):
        self.config, self.deadline, self.streak, self.fail_streak = config, deadline, 0, 0
        self.gave_up = False

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial):
        self.streak = 0 if trial.user_attrs.get("feasible") else self.streak + 1
        self.fail_streak = self.fail_streak + 1 if trial.state == TrialState.FAIL else 0
        if self.streak >= MAX_INFEASIBLE_STREAK:
            self.gave_up = True
            study.stop()
        if self.fail_streak >= MAX_FAIL_STREAK:
            _log(f"{MAX_FAIL_STREAK} trials failed in a row (see the warnings above); stopping this worker")
            study.stop()
        if self.deadline is not None and time.time() >= self.deadline:
            study.stop()
        if self.config.trials is not None and _trained(study) >= self.config.trials:
            study.stop()


def run_worker(config: SearchConfig, worker_index: int, deadline: float | None, threads: int,
               callbacks=()) -> bool:
    """One worker's loop (in this process). Returns False when it gave up on infeasibility."""
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(config, worker_index)
    fail_dead_local_trials(study)
    space = load_space(config.space)
    data = DataCache(config)
    probe = data.get(space.resolution, config.subset)
    objective = Objective(config, space, data, probe.in_chs, probe.num_classes, deadline)
    stopper = _Stopper(config, deadline)
    if config.trials is not None and _trained(study) >= config.trials:
        return True
    timeout = None if deadline is None else max(0.0, deadline - time.time())
    study.optimize(objective, timeout=timeout, callbacks=[stopper, *callbacks], catch=(Exception,),
                   gc_after_trial=True)
    return not stopper.gave_up


def _worker_main(config_dict: dict, worker_index: int, deadline: float | None, threads: int) -> None:
    from nas.search.budgets import Budgets
    from nas.search.config import SearchConfig

    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    budgets = Budgets(**config_dict.pop("budgets"))
    try:
        run_worker(SearchConfig(budgets=budgets, **config_dict), worker_index, deadline, threads)
    except KeyboardInterrupt:
        pass


def run_search(config: SearchConfig, show_progress: bool = True) -> dict:
    """The whole `nas search`: checks, workers, final retraining, summary dict."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(config.space)
    from nas.data import load_dataset
    probe = load_dataset(config.dataset, config.data_dir, split_seed=config.seed, subset=config.subset,
                         resolution=space.resolution)
    if config.budgets.latency_ms is not None or "latency_ms" in config.objective_names:
        from nas.cost.latency import require_profile
        require_profile()
    check_budgets_reachable(space, config, probe.in_chs, probe.num_classes)
    study = open_study(config)
    _tie_study_to_config(study, config)

    budget_s = config.budget_s
    if budget_s is None and config.trials is None:
        budget_s = DEFAULT_BUDGET_S
    start = time.time()
    deadline = None if budget_s is None else start + budget_s
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // config.workers)  # the cores this process may use (taskset, cgroups)
    _log(f"study {config.study!r} in {config.storage or default_url(config.study)}: {config.space} on "
         f"{probe.name}, {config.budgets.describe()}, "
         + (f"budget {format_seconds(budget_s)}" if budget_s else f"{config.trials} trained trials")
         + f", {config.workers} worker(s) x {threads} thread(s)")

    bar = _ProgressBar(config, budget_s, start, show_progress)
    interrupted, gave_up, procs = False, False, []
    try:
        if config.workers == 1:
            gave_up = not run_worker(config, 0, deadline, threads, callbacks=[lambda s, t: bar.update(s)])
        else:
            ctx = mp.get_context("spawn")
            procs = [ctx.Process(target=_worker_main, args=(config.to_dict(), i, deadline, threads), daemon=False)
                     for i in range(config.workers)]
            for p in procs:
                p.start()
            while any(p.is_alive() for p in procs):
                bar.update(study)
                time.sleep(2.0)
            for p in procs:
                p.join()
    except KeyboardInterrupt:
        interrupted = True
        for p in procs:  # SIGTERM: each worker records its in-flight trial as failed and exits
            p.terminate()
        for p in procs:
            p.join(timeout=30)
        _log("interrupted: finished trials are kept; run the same command again to resume")
    finally:
        bar.update(study)
        bar.close()

    trials = study.get_trials(deepcopy=False)
    counts, ranked = tally(trials), best_feasible(trials)
    summary = {"study": config.study, "storage": config.storage or default_url(config.study),
               "space": config.space, "dataset": probe.name, "budgets": config.budgets.to_dict(),
               "trained": counts.trained, "infeasible": counts.infeasible, "pruned": counts.pruned,
               "duplicates": counts.duplicates, "failed": counts.failed,
               "elapsed_s": round(time.time() - start, 1), "interrupted": interrupted}
    if gave_up and not ranked:
        low = extreme(space, "weight_bytes", in_chs=probe.in_chs, num_classes=probe.num_classes)
        raise UsageError(f"{MAX_INFEASIBLE_STREAK} infeasible candidates in a row for {config.budgets.describe()}; "
                         f"the cheapest found has weight_bytes {format_bytes(low.value)}")
    if not ranked:
        summary["best"] = []
        _log("no feasible trained trial yet: give a larger --budget or --trials")
        return summary
    if not interrupted:
        top = final.distinct_archs(ranked, config.final_top)
        summary["final"] = final.retrain_best(study, config, top)
    summary["best"] = [trial_summary(t) for t in ranked[:5]]
    return summary


def trial_summary(t: optuna.trial.FrozenTrial) -> dict:
    costs = t.user_attrs["costs"]
    return {"trial": t.number, "arch": t.user_attrs["arch"], "accuracy": t.values[0],
            "weight_bytes": costs["weight_bytes"], "peak_act_bytes": costs["peak_act_bytes"],
            "macs": costs["macs"], "params": costs["params"], "latency_ms": costs.get("latency_ms")}


class _ProgressBar:
    """Trials done, best feasible accuracy and its size, time left (stderr)."""

    def __init__(self, config: SearchConfig, budget_s: float | None, start: float, enabled: bool):
        self.config, self.budget_s, self.start = config, budget_s, start
        total = config.trials if config.trials is not None else None
        self.bar = tqdm(total=total, desc="search", unit="trial", file=sys.stderr, disable=not enabled,
                        dynamic_ncols=True)
        self.last = 0.0

    def update(self, study: optuna.Study) -> None:
        if time.time() - self.last < 1.0:
            return
        self.last = time.time()
        trials = study.get_trials(deepcopy=False)
        counts, ranked = tally(trials), best_feasible(trials)
        self.bar.n = counts.trained
        post = {"infeasible": counts.infeasible, "pruned": counts.pruned, "duplicates": counts.duplicates}
        if ranked:
            best = ranked[0]
            post["best"] = f"{best.values[0]:.4f} @ {format_bytes(best.user_attrs['costs']['weight_bytes'])}"
        if self.budget_s:
            post["left"] = format_seconds(max(0.0, self.start + self.budget_s - time.time()))
        self.bar.set_postfix(post, refresh=True)

    def close(self):
        self.bar.close()


def _log(message: str) -> None:
    print(f"nas: {message}", file=sys.stderr, flush=True)
