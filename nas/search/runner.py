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
from dataclasses import replace

import optuna
import torch
from optuna.trial import TrialState
from nas import interrupts
from nas.cost.extremes import extreme
from nas.errors import UsageError
from nas.progress import bar as progress_bar
from nas.search import final
from nas.search.budgets import LIMITS, Budgets
from nas.search.config import FINAL_LADDER_FACTOR, FINAL_RUNG_EMA, SearchConfig, first_rung, resolve_sizes
from nas.measure.device import resolve_device
from nas.search.objective import DataCache, Objective, final_ladder
from nas.search.records import Identity, ProfileStamp, StudyRecord, TrialRecord, write_identity, write_profile
from nas.search.results import best_feasible, tally
from nas.search.storage import default_url, fail_dead_local_trials, open_storage
from nas.space import Space, load_space
from nas.units import format_bytes, format_seconds

DEFAULT_BUDGET_S = 600.0  # when none of --trials, --max-trials, --budget is given
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


def make_pruner(config: SearchConfig) -> optuna.pruners.BasePruner:
    """Successive halving on the fidelity's rungs: epochs 1, 2, 4, ... of a candidate's own run
    (`--fidelity subset`, a half goes on), or the final recipe's rungs in optimizer steps
    (`--fidelity final`, a third goes on: `nas.search.config.rung_steps`)."""
    if config.pruner != "sh":
        return optuna.pruners.NopPruner()
    if config.fidelity == "final":
        rungs, _ = final_ladder(config, config.final_subset)
        if not rungs:
            return optuna.pruners.NopPruner()
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=rungs[0], reduction_factor=FINAL_LADDER_FACTOR)
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=first_rung(config.epochs or 1),
                                                  reduction_factor=SH_REDUCTION_FACTOR)


def open_study(config: SearchConfig, worker_index: int = 0) -> optuna.Study:
    storage = open_storage(config.storage or default_url(config.study))
    directions = ["maximize"] + ["minimize"] * (len(config.objective_names) - 1)
    pruner = make_pruner(config)
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


def _tie_study_to_config(study: optuna.Study, config: SearchConfig, profile=None) -> None:
    """A study is tied to its space, dataset, budgets, objectives, fidelity and the device profile
    that prices its latencies; refuse to mix them on resume."""
    record = StudyRecord.of(study)
    stamp = ProfileStamp.of(profile)
    if record.identity is None:
        write_identity(study, config)
        write_profile(study, stamp)
        return
    identity = Identity.of_config(config)
    for key in ("space", "dataset", "budgets", "objectives", "fidelity"):
        stored, value = getattr(record.identity, key), getattr(identity, key)
        if stored != value:
            if key == "budgets":
                stored, value = stored.describe(), value.describe()
            raise UsageError(f"--study {config.study!r} was created with {key}={stored!r}, "
                             f"not {value!r}; use the same options to resume, or another --study")
    if record.profile is None:  # a study from before profiles were recorded: it takes this one
        write_profile(study, stamp)
    elif record.profile.digest != stamp.digest:
        how = (f"--profile {record.profile.path}" if record.profile.path else "--profile none")
        raise UsageError(f"--study {config.study!r} was priced with {record.profile.describe()}, not "
                         f"{stamp.describe()}; resume with {how}, or use another --study")


def check_budgets_reachable(space: Space, config: SearchConfig, in_chs: int, num_classes: int) -> None:
    """Fail before any work when no member of the space can meet a budget."""
    for cost_field, limit in config.budgets.active():
        if cost_field in ("latency_ms", "flash_bytes", "sram_bytes"):
            continue  # latency: the latency model's own predictions; flash / SRAM: per candidate (nas.cost.mcu)
        low = extreme(space, cost_field, in_chs=in_chs, num_classes=num_classes)
        if low.value > limit:
            option, fmt = LIMITS[cost_field]
            raise UsageError(f"{option} {fmt(limit)}: below the cheapest architecture in {config.space} "
                             f"({cost_field} {fmt(low.value)}); expected a budget >= {fmt(low.value)}")


class _Stopper:
    """Optuna callback: stop at the trained-trial target, the deadline, an infeasible streak, or
    a Ctrl-C / SIGTERM that reached optuna as a trial's failure (`nas.interrupts`: a C++ layer
    wrapped its KeyboardInterrupt)."""

    def __init__(self, config: SearchConfig, deadline: float | None):
        self.config, self.deadline, self.streak, self.fail_streak = config, deadline, 0, 0
        self.gave_up = False
        self.signals = len(interrupts.received)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial):
        if len(interrupts.received) > self.signals:
            study.stop()
        self.streak = 0 if TrialRecord.of(trial).feasible else self.streak + 1
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
        if _started_enough(study, self.config):
            study.stop()


def _started_enough(study: optuna.Study, config: SearchConfig) -> bool:
    """--max-trials: trials started in the whole study (any state) reached the bound."""
    return config.max_trials is not None and len(study.get_trials(deepcopy=False)) >= config.max_trials


def run_worker(config: SearchConfig, worker_index: int, deadline: float | None, threads: int,
               callbacks=(), profile=None) -> bool:
    """One worker's loop (in this process), pricing latency on `profile` (a `nas.cost.latency.
    Profile`, None: not priced). Returns False when it gave up on infeasibility."""
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(config, worker_index)
    fail_dead_local_trials(study)
    space = load_space(config.space)
    data = DataCache(config)
    probe = data.get(space.resolution, config.subset)
    objective = Objective(config, space, data, probe.in_chs, probe.num_classes, deadline, profile)
    stopper = _Stopper(config, deadline)
    if (config.trials is not None and _trained(study) >= config.trials) or _started_enough(study, config):
        return True
    timeout = None if deadline is None else max(0.0, deadline - time.time())
    study.optimize(objective, timeout=timeout, callbacks=[stopper, *callbacks], catch=(Exception,),
                   gc_after_trial=True)
    return not stopper.gave_up


def _worker_main(config_dict: dict, worker_index: int, deadline: float | None, threads: int, profile) -> None:
    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    budgets = Budgets.from_dict(config_dict.pop("budgets"))
    try:
        run_worker(SearchConfig(budgets=budgets, **config_dict), worker_index, deadline, threads, profile=profile)
    except KeyboardInterrupt:
        pass


def run_search(config: SearchConfig, profile=None, show_progress: bool = True) -> dict:
    """The whole `nas search`: checks, workers, final retraining, summary dict. `profile`: the
    device profile (`nas.cost.latency.Profile`) that prices latency_ms, loaded by the command;
    None prices no latency, and a search with a latency budget or objective refuses to start."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = replace(config, device=str(resolve_device(config.device)))  # before any work
    space = load_space(config.space)
    from nas.data import load_dataset
    probe = load_dataset(config.dataset, config.data_dir, split_seed=config.seed, resolution=space.resolution)
    # every size checked against the splits, and the ones not given derived from them, before any work
    config = resolve_sizes(config, len(probe.train), len(probe.val), probe.num_classes, probe.name)
    if config.needs_latency and profile is None:
        option = "--target-latency" if config.budgets.latency_ms is not None else f"--objectives {config.objectives}"
        raise UsageError(f"{option}: needs a device profile, none was given; run `nas calibrate` on this "
                         f"device, or pass --profile FILE")
    check_budgets_reachable(space, config, probe.in_chs, probe.num_classes)
    study = open_study(config)
    _tie_study_to_config(study, config, profile)

    budget_s = config.budget_s
    if budget_s is None and config.trials is None and config.max_trials is None:
        budget_s = DEFAULT_BUDGET_S
    start = time.time()
    deadline = None if budget_s is None else start + budget_s
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // config.workers)  # the cores this process may use (taskset, cgroups)
    _log(f"study {config.study!r} in {config.storage or default_url(config.study)}: {config.space} on "
         f"{probe.name}, {config.budgets.describe()}, "
         + ", ".join(x for x in (f"budget {format_seconds(budget_s)}" if budget_s else "",
                                 f"{config.trials} trained trials" if config.trials else "",
                                 f"at most {config.max_trials} trials started" if config.max_trials else "") if x)
         + f", {config.workers} worker(s) x {threads} thread(s) on {config.device}")
    recipe = f"{config.final_subset} images x {config.final_epochs} epochs at batch {config.final_batch_size}"
    if config.fidelity == "final":
        rungs, total = final_ladder(config, config.final_subset)
        averaged = " (a moving average of the weights)" if FINAL_RUNG_EMA else ""
        _log(f"candidates run the final recipe ({recipe}, {total} steps), scored{averaged} on {config.val_subset} "
             f"validation images after steps {', '.join(map(str, rungs)) or '(none)'}, a third going on at each")
    else:
        _log(f"candidates: {config.subset} images x {config.epochs} epochs at batch {config.batch_size} "
             f"(first rung after epoch {first_rung(config.epochs)}), scored on {config.val_subset} validation "
             f"images; final recipe: {recipe}")

    bar = _ProgressBar(config, budget_s, start, show_progress)
    interrupted, gave_up, procs = False, False, []
    signals_before = len(interrupts.received)
    try:
        if config.workers == 1:
            gave_up = not run_worker(config, 0, deadline, threads, callbacks=[lambda s, t: bar.update(s)],
                                     profile=profile)
        else:
            ctx = mp.get_context("spawn")
            procs = [ctx.Process(target=_worker_main, args=(config.to_dict(), i, deadline, threads, profile),
                                 daemon=False)
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
    if not interrupted and len(interrupts.received) > signals_before:
        # a Ctrl-C / SIGTERM whose KeyboardInterrupt a C++ layer wrapped, so that optuna
        # recorded it as one failed trial: still an interrupted search
        interrupted = True
        _log("interrupted: finished trials are kept; run the same command again to resume")

    trials = study.get_trials(deepcopy=False)
    counts, ranked = tally(trials), best_feasible(trials)
    summary = {"study": config.study, "storage": config.storage or default_url(config.study),
               "space": config.space, "dataset": probe.name, "budgets": config.budgets.to_dict(),
               "device_profile": StudyRecord.of(study).profile.describe(),
               "trained": counts.trained, "infeasible": counts.infeasible, "pruned": counts.pruned,
               "duplicates": counts.duplicates, "failed": counts.failed,
               "elapsed_s": round(time.time() - start, 1), "interrupted": interrupted,
               "final": [], "best": []}  # one JSON shape: empty lists when interrupted or nothing feasible
    if gave_up and not ranked:
        low = extreme(space, "weight_bytes", in_chs=probe.in_chs, num_classes=probe.num_classes)
        raise UsageError(f"{MAX_INFEASIBLE_STREAK} infeasible candidates in a row for {config.budgets.describe()}; "
                         f"the cheapest found has weight_bytes {format_bytes(low.value)}")
    if not interrupted:
        if ranked:
            top = final.distinct_archs(ranked, config.final_top)
            summary["final"] = [r.to_dict() for r in final.retrain_best(study, config, top)]
        elif config.fidelity == "final":  # the deadline came before any candidate reached the top rung
            record = finish_furthest(study, config, trials)
            if record is not None:
                summary["final"] = [record.to_dict()]
        final.discard_checkpoints(study, config.study)  # deadline-stopped candidates' (final fidelity)
    if not ranked:
        if "final" not in summary:
            _log("no feasible trained trial yet: give a larger --budget or --trials")
        return summary
    summary["best"] = [trial_summary(t) for t in ranked[:5]]
    return summary


def finish_furthest(study: optuna.Study, config: SearchConfig, trials: list):
    """Final fidelity, when no candidate reached the top rung: the furthest one (`_furthest_candidate`)
    runs the recipe to the end, continued from its checkpoint where the deadline left one; its
    `FinalRecord`, or None when no candidate reached a rung."""
    furthest = _furthest_candidate(trials)
    if furthest is None:
        return None
    saved = final.checkpoint_path(config.study, furthest.number)
    resume = saved if saved.is_file() else None
    how = (f"continued from its checkpoint ({saved})" if resume
           else "from step 0 (no checkpoint: the pruner stopped it, or its searched sparsity is not saved)")
    _log(f"no candidate finished the final recipe within the budget; running trial {furthest.number} "
         f"(the best at the furthest rung, step {furthest.last_step}) to the end, {how}")
    return final.retrain_one(study, config, furthest, resume=resume)


def _furthest_candidate(trials: list) -> optuna.trial.FrozenTrial | None:
    """Final fidelity: among feasible candidates stopped before the top rung (not duplicates),
    the best score at the furthest rung any reached. It continues from its checkpoint when the
    deadline stopped it (`nas.search.final.checkpoint_path`), and restarts otherwise: the training
    is seeded and deterministic on the CPU, so either way the weights are those of a run never
    stopped."""
    stopped = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values
               and TrialRecord.of(t).within_budgets and TrialRecord.of(t).duplicate_of is None]
    if not stopped:
        return None
    return max(stopped, key=lambda t: (t.last_step, t.intermediate_values[t.last_step], -t.number))


def trial_summary(t: optuna.trial.FrozenTrial) -> dict:
    r = TrialRecord.of(t)
    return {"trial": r.number, "arch": r.arch, "accuracy": r.values[0],
            "weight_bytes": r.costs["weight_bytes"], "peak_act_bytes": r.costs["peak_act_bytes"],
            "macs": r.costs["macs"], "params": r.costs["params"], "latency_ms": r.cost("latency_ms")}


class _ProgressBar:
    """Trials done, best feasible accuracy and its size, time left (stderr)."""

    def __init__(self, config: SearchConfig, budget_s: float | None, start: float, enabled: bool):
        self.config, self.budget_s, self.start = config, budget_s, start
        total = config.trials if config.trials is not None else None
        # a bar on a terminal; in a pipe one line each time a trial finishes training
        self.bar = progress_bar(total, "search", "trained trial", enabled=enabled)
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
            post["best"] = f"{best.values[0]:.4f} @ {format_bytes(TrialRecord.of(best).costs['weight_bytes'])}"
        if self.budget_s:
            post["left"] = format_seconds(max(0.0, self.start + self.budget_s - time.time()))
        self.bar.set_postfix(post, refresh=True)

    def close(self):
        self.bar.close()


def _log(message: str) -> None:
    print(f"nas: {message}", file=sys.stderr, flush=True)
