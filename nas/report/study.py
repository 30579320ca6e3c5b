"""Open a stored study for reading and pick the trial to show.

Shared by `nas report` and `nas dashboard` (which should start fast: no torch imported
here at module level). Opening never creates anything: a journal
file or SQLite database that does not exist is a usage error, not a new empty study.
"""

import math
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from nas.errors import UsageError
from nas.search.records import TrialRecord
from nas.search.results import best_feasible, final_record, result_trial, tally
from nas.search.storage import default_url, open_storage


def _existing_file(url: str) -> Path | None:
    """The local file a journal / SQLite URL names (None for server URLs)."""
    if url.startswith("journal:") or url.endswith(".journal"):
        return Path(url.removeprefix("journal:"))
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///").split("?", 1)[0]
        return Path(path) if path and path != ":memory:" else None
    return None


def open_study(name: str, storage_url: str | None) -> tuple[optuna.Study, object, str]:
    """(study, its storage, storage url). UsageError when the storage or the study does not exist."""
    url = storage_url or default_url(name)
    where = "--storage" if storage_url else f"--study {name!r}"
    path = _existing_file(url)
    if path is not None and not path.is_file():
        hint = "give --storage" if storage_url is None else "check the path"
        here = "" if path.is_absolute() else f" under the current folder {str(Path.cwd())!r}"
        raise UsageError(f"{where}: no storage file {str(path)!r}{here} (looked for {url!r}); "
                         f"run `nas search --study {name}` first, or {hint}")
    storage = open_storage(url)
    try:
        names = optuna.get_all_study_names(storage)
    except Exception as e:  # a file that is not a journal / database
        raise UsageError(f"{where}: cannot read studies from {url!r} "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if name not in names:
        there = ", ".join(repr(n) for n in sorted(names)) or "none"
        raise UsageError(f"--study {name!r}: no such study in {url!r} (studies there: {there})")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=storage), storage, url


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
             "peak_train_mem_bytes": train.get("peak_train_mem_bytes"), "accuracy": accuracy,
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
