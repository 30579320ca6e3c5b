"""A stored study for reading (`open_study`, from `nas.search.storage`) and the trial to show.

Shared by `nas report` and `nas dashboard` (which should start fast: no torch imported
here at module level). Opening never creates anything: a journal
file or SQLite database that does not exist is a usage error, not a new empty study.
"""

import math

import optuna
from optuna.trial import FrozenTrial

from nas.errors import UsageError
from nas.search.records import TrialRecord
from nas.search.results import best_feasible, final_record, result_trial, tally
from nas.search.storage import open_study  # noqa: F401 (its home: the storage; report, dashboard and export open studies with it)


def pick_trial(study: optuna.Study, trials: list[FrozenTrial], number: int | None) -> FrozenTrial:
    """The trial to show: `number`, or the search's result (`nas.search.results.result_trial`)."""
    ranked = best_feasible(trials)
    if not ranked:
        raise UsageError(f"--study {study.study_name!r}: no trained trial yet ({tally(trials).describe()}); "
                         f"run `nas search --study {study.study_name}` longer")
    if number is None:
        return result_trial(study, trials)
    by_number = {t.number: t for t in trials}
    if number not in by_number:
        raise UsageError(f"--trial {number}: no such trial in study {study.study_name!r} "
                         f"(trial numbers 0..{max(by_number)})")
    trial = by_number[number]
    record = TrialRecord.of(trial)
    if record.arch is None or record.costs is None:
        raise UsageError(f"--trial {number}: records no architecture ({trial.state.name}); "
                         f"expected a trial that got past sampling, e.g. {ranked[0].number}")
    return trial


def search_accuracy(t: FrozenTrial) -> float | None:
    """Validation accuracy of the search's short training (None when never trained)."""
    r = TrialRecord.of(t)
    if r.trained_complete:
        return float(r.values[0])
    return float(r.accuracy) if r.accuracy is not None else None  # pruned trials keep their last one


def seed_metrics(study: optuna.Study, trial: FrozenTrial) -> dict:
    """The seed's five metrics plus Information Density and NetScore, for the search's short
    training (`search`) and, when the trial was retrained, the final training (`final`).

    Accuracy is validation accuracy for `search` and test accuracy for `final`; Information
    Density and NetScore use that column's accuracy (Wong's units: %, M params, M macs)."""
    from nas.cost.metrics import information_density, netscore

    searched = TrialRecord.of(trial)
    costs = searched.costs

    def column(accuracy, train: dict) -> dict:
        d = {"weight_bytes": costs["weight_bytes"], "train_time_s": train.get("train_time_s"),
             "infer_ms_per_image": train.get("infer_ms_per_image"),
             "peak_train_mem_bytes": train.get("peak_train_mem_bytes"),
             "peak_mem_method": train.get("peak_mem_method"), "accuracy": accuracy,
             "information_density": None, "netscore": None}
        if accuracy is not None:
            d["information_density"] = information_density(accuracy, costs["params"])
            score = netscore(accuracy, costs["params"], costs["macs"])
            d["netscore"] = score if math.isfinite(score) else None
        return d

    out = {"search": column(search_accuracy(trial), searched.train or {})}
    record = final_record(study, trial.number)
    if record is not None:
        out["final"] = column(record.test_accuracy, record.train or {})
        out["final"]["val_accuracy"] = record.val_accuracy
        out["final"]["weights"] = record.weights
        out["final"]["epochs"] = record.epochs
    return out
