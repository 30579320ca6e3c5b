"""The Optuna objective: the fidelity ladder for one candidate.

For each trial, cheapest check first:
1. sample the architecture (`nas.space.sample_arch`, the one decoder) and cost it
   analytically; record costs and constraint values on the trial;
2. infeasible -> COMPLETE with accuracy 0, `trained=False`: never built, never trained;
3. an architecture already trained in this study -> its result is reused, not retrained;
   one being trained right now by another worker, or stopped early before -> PRUNED
   (`duplicate_of` names the trial either way);
4. zero-cost proxy on one real batch -> PRUNED when below the `proxy_keep` quantile of the
   earlier candidates' proxies (after a few warm-up candidates);
5. quantization-aware training, scored on the validation subset at successive halving's
   rungs, where Optuna's pruner stops the weak ones: `--fidelity subset` trains a short run of
   its own (rungs at epochs); `--fidelity final` runs the final recipe itself (rungs at
   fractions of it) and a candidate that passes them all is a finalist as it stands.
Training that diverges (NaN) raises `TrainingDiverged`: the trial is FAIL and the search
goes on.
"""

import time
from dataclasses import asdict

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from nas.blocks.model import build_model
from nas.cost import arch_cost
from nas.cost.latency import Profile, predict_latency_ms
from nas.cost.mcu import mcu_cost
from nas.data import load_dataset
from nas.search.budgets import feasible
from nas.search import final
from nas.search.config import FINAL_RUNG_EMA, SearchConfig, rung_steps
from nas.search.records import TrialRecord, write_constraints, write_trial
from nas.search.storage import worker_id
from nas.space import Space, encode, sample_arch
from nas.train import proxies
from nas.train.trainer import steps_in_epoch, train

PROXY_WARMUP = 6  # candidates that train unconditionally before the proxy gate opens


class DataCache:
    """Datasets loaded once per (resolution, subset) in this process."""

    def __init__(self, config: SearchConfig):
        self.config = config
        self._cache = {}

    def get(self, resolution: int, subset: int | None):
        key = (resolution, subset)
        if key not in self._cache:
            c = self.config
            self._cache[key] = load_dataset(c.dataset, c.data_dir, split_seed=c.seed, subset=subset,
                                            resolution=resolution)
        return self._cache[key]


def trial_costs(arch, profile: Profile | None, mcu: bool = False) -> dict:
    """Analytic costs recorded on a trial (vocabulary names; no per-layer list), with the
    `latency_ms` predicted on `profile` (the search's device profile), None without one;
    `mcu`: also the C package's `flash_bytes` / `sram_bytes` (`nas.cost.mcu`; None when the C
    export refuses the arch, `c_refused` ops)."""
    cost = arch_cost(arch)
    costs = {k: v for k, v in cost.to_dict().items() if k != "layers"}
    costs["latency_ms"] = None if profile is None else predict_latency_ms(arch, profile, cost)
    if mcu:
        costs.update(mcu_cost(arch, cost.weight_bytes).to_dict())
    return costs


class Objective:
    def __init__(self, config: SearchConfig, space: Space, data: DataCache, in_chs: int, num_classes: int,
                 deadline: float | None = None, profile: Profile | None = None):
        self.config = config
        self.profile = profile  # the device profile that prices latency_ms (None: not priced)
        self.space = space
        self.data = data
        self.in_chs = in_chs
        self.num_classes = num_classes
        self.deadline = deadline
        self.multi = len(config.objective_names) > 1

    def _values(self, accuracy: float, costs: dict):
        if not self.multi:
            return accuracy
        return accuracy, float(costs[self.config.objective_names[1]])

    def __call__(self, trial: optuna.Trial):
        c = self.config
        write_trial(trial, worker=worker_id())
        sample = sample_arch(self.space, trial, self.in_chs, self.num_classes)
        arch = encode(sample.arch)
        costs = trial_costs(sample.arch, self.profile, c.budgets.needs_mcu)
        constraints = c.budgets.constraint_values(costs)
        write_trial(trial, arch=arch, scaling=asdict(sample.scaling), costs=costs, constraints=constraints)
        write_constraints(trial, c.budgets, constraints)  # what Optuna's samplers and the dashboard read
        write_trial(trial, feasible=feasible(constraints), trained=False)
        if not feasible(constraints):
            return self._values(0.0, costs)

        duplicate = self._find_duplicate(trial, arch)
        if duplicate is not None:
            write_trial(trial, duplicate_of=duplicate.number)
            if duplicate.state == TrialState.RUNNING:
                raise optuna.TrialPruned(f"architecture is being trained by trial {duplicate.number}")
            carried = {key: getattr(duplicate, key) for key in ("accuracy", "train", "proxy")}
            write_trial(trial, **{k: v for k, v in carried.items() if v is not None})
            if duplicate.state == TrialState.PRUNED:
                raise optuna.TrialPruned(f"architecture was stopped early in trial {duplicate.number}")
            write_trial(trial, trained=True)
            return duplicate.values[0] if not self.multi else tuple(duplicate.values)

        # final fidelity: seeded as the final recipe is, so the candidate's run is the recipe's
        torch.manual_seed(c.seed if c.fidelity == "final" else c.seed + trial.number)
        data = self.data.get(sample.arch.resolution, c.final_subset if c.fidelity == "final" else c.subset)
        model = build_model(sample.arch)
        if c.proxy != "none":
            score = self._proxy(model, data)
            write_trial(trial, proxy=score)
            if not self._proxy_passes(trial, score):
                raise optuna.TrialPruned(f"{c.proxy} proxy {score:.4g} below the {c.proxy_keep:.0%} quantile")
        if c.fidelity == "final":
            return self._run_final_recipe(trial, arch, model, data, costs)

        def on_epoch_end(epoch: int, val_accuracy: float):
            if self.multi:
                return  # Optuna prunes single-objective studies only
            trial.report(val_accuracy, epoch)
            if epoch < c.epochs and trial.should_prune():  # a fully trained candidate is never pruned
                write_trial(trial, accuracy=val_accuracy)
                raise optuna.TrialPruned(f"successive halving after epoch {epoch}")

        max_seconds = None if self.deadline is None else max(1.0, self.deadline - time.time())
        result = train(model, data, epochs=c.epochs, batch_size=c.batch_size, seed=c.seed + trial.number,
                       max_seconds=max_seconds, progress=False, on_epoch_end=on_epoch_end,
                       measure_inference=False, weight_bytes=costs["weight_bytes"], val_subset=c.val_subset,
                       device=c.device, amp=c.amp)
        if result.stopped_early == "max_seconds":  # the search's deadline cut it short: not a full score
            write_trial(trial, accuracy=result.accuracy, train=_train_record(result))
            raise optuna.TrialPruned(f"the search's time budget ended after {result.epochs_completed:.2f} of "
                                     f"{c.epochs} epochs")
        write_trial(trial, trained=True, accuracy=result.accuracy, train=_train_record(result))
        return self._values(result.accuracy, costs)

    def _run_final_recipe(self, trial: optuna.Trial, arch: str, model, data, costs: dict):
        """Final fidelity: the candidate runs the final recipe, scored on the validation subset at
        each rung (`final_ladder`); successive halving stops the weaker two thirds there. A
        candidate that passes the last rung finishes the recipe even past the search's deadline
        (it is a finalist then), is tested once and recorded as the final training
        (`nas.search.final.record_final`): the search's result is this run, not a new one."""
        c = self.config
        rungs, total = final_ladder(c, len(data.train))

        def on_rung(step: int, val_accuracy: float):
            if self.multi:
                return  # Optuna prunes single-objective studies only
            trial.report(val_accuracy, step)
            if trial.should_prune():
                write_trial(trial, accuracy=val_accuracy)
                raise optuna.TrialPruned(f"successive halving after {step} of the final recipe's {total} steps")

        def stop(step: int) -> str | None:  # the deadline stops a candidate only below the top rung
            before_top = not rungs or step < rungs[-1]
            return "deadline" if before_top and self.deadline is not None and time.time() > self.deadline else None

        start = time.time()
        result = final.final_train(model, data, c, progress=False, rung_steps=rungs, on_rung=on_rung,
                                   rung_ema=FINAL_RUNG_EMA, stop=stop, measure_inference=False,
                                   weight_bytes=costs["weight_bytes"], val_subset=c.val_subset,
                                   checkpoint=final.checkpoint_path(c.study, trial.number))
        if result.stopped_early is not None:
            write_trial(trial, accuracy=result.accuracy, train=_train_record(result))
            raise optuna.TrialPruned(f"the search's time budget ended after {result.steps} of the final recipe's "
                                     f"{total} steps, before its last rung")
        final.record_final(trial.study, c, trial.number, arch, model, data, result, costs, result.accuracy,
                           time.time() - start)
        write_trial(trial, trained=True, accuracy=result.accuracy, train=_train_record(result))
        return self._values(result.accuracy, costs)

    def _proxy(self, model, data) -> float:
        n = min(64, len(data.train))
        x, y = data.train.batch(torch.arange(n))
        fn = {"naswot": proxies.naswot, "synflow": proxies.synflow}[self.config.proxy]
        return float(fn(model, x))

    def _proxy_passes(self, trial, score: float) -> bool:
        records = map(TrialRecord.of, trial.study.get_trials(deepcopy=False))
        earlier = [r.proxy for r in records if r.number != trial.number and r.proxy is not None and np.isfinite(r.proxy)]
        if len(earlier) < PROXY_WARMUP:
            return True
        return bool(np.isfinite(score) and score >= np.quantile(earlier, self.config.proxy_keep))

    @staticmethod
    def _find_duplicate(trial, arch: str) -> TrialRecord | None:
        """The trial that trained (or is training, or stopped early) `arch` before, if any.
        Trials that were themselves duplicates, failed ones and infeasible ones do not count."""
        states = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.PRUNED)
        for r in map(TrialRecord.of, trial.study.get_trials(deepcopy=False, states=states)):
            if r.number == trial.number or r.arch != arch or r.duplicate_of is not None:
                continue
            if r.state != TrialState.COMPLETE or r.trained:
                return r
        return None


def final_ladder(config: SearchConfig, train_images: int) -> tuple[list[int], int]:
    """Final fidelity: (the rungs' optimizer steps, the recipe's steps) for a final recipe on
    `train_images` images (`nas.search.config.rung_steps`)."""
    total = steps_in_epoch(train_images, config.final_batch_size) * config.final_epochs
    return rung_steps(config, total), total


def _train_record(result) -> dict:
    """The seed's five metrics and friends, JSON-friendly."""
    d = result.to_dict() if hasattr(result, "to_dict") else dict(vars(result))
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool)) or v is None}
