"""Export as a library call: `export_trial(study, ...)` -> the bundle's manifest.

The use case `nas export` wraps: pick a trial of a study (the best feasible one, or by
number), take its finally-retrained weights (study attribute ``final:<n>``; a trial without
them is retrained first at the study's final fidelity by `nas.search.final.retrain_one`, the
function `nas search` uses, unless `retrain=False`), and write the bundle
(`nas.export.bundle.export_model`). The arch is costed once: the predicted size check before
any retraining, the payload check and the manifest's figures all read that one cost.

The device profile that prices the manifest's `latency_ms` is an argument (`profile`), loaded
once by the command; nothing here looks one up.

Refuses (UsageError, exit 2 at the CLI) when the payload exceeds the study's ``--target-mem``:
first on the predicted size before any retraining, then on the bytes actually packed.
"""

import sys
from pathlib import Path

from nas.errors import UsageError


def open_study(name: str, storage_url: str | None):
    """Load an existing study (never creates one, nor an empty journal file or SQLite database)."""
    from nas.search.storage import open_study as open_existing_study

    study, _, url = open_existing_study(name, storage_url)
    return study, url


def study_config(study):
    """The study's `SearchConfig`, rebuilt from its ``config`` attribute (`nas.search.records`)."""
    from nas.search.records import StudyRecord

    config, dropped = StudyRecord.of(study).search_config()
    if dropped:  # written by another version of nas: say so, keep what this version knows
        print(f"nas: note: study config keys unknown to this version ignored: {dropped}", file=sys.stderr)
    return config


def pick_trial(study, best: bool, number: int | None):
    from optuna.trial import TrialState

    from nas.search.records import TrialRecord
    from nas.search.results import best_feasible, result_trial

    trials = study.get_trials(deepcopy=False)
    if best:
        ranked = best_feasible(trials)
        if not ranked:
            raise UsageError(f"--best: study {study.study_name!r} has no trained feasible trial yet; "
                             f"run `nas search --study {study.study_name}` longer, or pass --trial N")
        return result_trial(study, trials)
    match = [t for t in trials if t.number == number]
    if not match:
        raise UsageError(f"--trial {number}: no such trial in study {study.study_name!r}; "
                         f"expected 0..{len(trials) - 1}")
    t = match[0]
    if t.state != TrialState.COMPLETE or TrialRecord.of(t).arch is None:
        raise UsageError(f"--trial {number}: the trial is {t.state.name} without a recorded architecture; "
                         f"expected a COMPLETE trial")
    return t


def _weights_path(record, url: str, study_name: str) -> Path:
    p = Path(record.weights)
    if p.is_file():
        return p
    journal = Path(url.removeprefix("journal:"))
    alt = journal.parent / study_name / p.name  # studies/<study>.journal beside studies/<study>/
    if not p.is_absolute() and alt.is_file():
        return alt
    raise UsageError(f"trial {record.trial}: final weights {record.weights} not found (relative paths are "
                     f"relative to where `nas search` ran); expected the file written by the final retraining")


def check_mcu_budgets(arch, weight_bytes: int, budgets, trial: int) -> None:
    """The study's --target-flash / --target-sram against the trial's C package as `nas.cost.mcu`
    prices it (what the search constrained): a UsageError, before any work, when it does not fit
    or the C export refuses the architecture."""
    if not budgets.needs_mcu:
        return
    from nas.cost.mcu import mcu_cost
    from nas.units import format_bytes

    m = mcu_cost(arch, weight_bytes)
    if m.refused:
        raise UsageError(f"trial {trial}: the study has --target-flash / --target-sram, but the C export refuses "
                         f"this architecture ({', '.join(m.refused[:3])}); refusing to export")
    for field, option, value in (("flash_bytes", "--target-flash", m.flash_bytes),
                                 ("sram_bytes", "--target-sram", m.sram_bytes)):
        limit = getattr(budgets, field)
        if limit is not None and value > limit:
            raise UsageError(f"trial {trial}: predicted {field} {value} ({format_bytes(value)}) exceeds the study's "
                             f"{option} {format_bytes(limit)} ({limit} bytes); refusing to export")


def export_trial(study_name: str, output, *, storage: str | None = None, trial: int | None = None,
                 retrain: bool = True, force: bool = False, formats: tuple[str, ...] = (), profile=None) -> dict:
    """Write the bundle of trial `trial` (None: the best feasible trained trial) of study
    `study_name` to `output`; return its manifest (with ``bundle``: the output path).
    formats: extra targets (`nas.export.formats.parse_formats`), e.g. ("c",).
    profile: the device profile (`nas.cost.latency.Profile`) that prices the manifest's
    `latency_ms`, loaded by the caller (`nas export --profile`); None: no prediction."""
    from nas.cost import arch_cost
    from nas.data import load_dataset
    from nas.export.bundle import check_budget, check_output, export_model
    from nas.search.final import retrain_one
    from nas.search.records import StudyRecord, TrialRecord
    from nas.search.results import final_record
    from nas.space import decode
    from nas.weights import read_weights

    check_output(output, force)  # before any retraining
    study, url = open_study(study_name, storage)
    config = study_config(study)
    identity = StudyRecord.of(study).identity
    budget = identity.budgets.weight_bytes
    chosen = pick_trial(study, trial is None, trial)
    arch_string = TrialRecord.of(chosen).arch
    arch = decode(arch_string)
    cost = arch_cost(arch)
    check_budget(cost.weight_bytes, budget, "the study's --target-mem (predicted weight_bytes)")
    check_mcu_budgets(arch, cost.weight_bytes, identity.budgets, chosen.number)

    record = final_record(study, chosen.number)
    if record is None:
        if not retrain:
            raise UsageError(f"trial {chosen.number}: no final weights (study attribute final:{chosen.number}); "
                             f"drop --no-retrain to retrain it at the study's final fidelity")
        print(f"nas: trial {chosen.number} has no final weights; retraining at the study's final fidelity",
              file=sys.stderr)
        record = retrain_one(study, config, chosen)
    path = _weights_path(record, url, study.study_name)
    state, metadata = read_weights(path, f"trial {chosen.number}'s final weights")
    stored_arch = metadata.get("arch")
    if stored_arch != arch_string:
        raise UsageError(f"{path}: weights of arch {stored_arch!r}; expected trial {chosen.number}'s {arch_string!r}")
    model = trained_model(arch, state, path, arch_string)
    seed = record.seed if record.seed is not None else config.seed
    subset = record.subset if record.subset is not None else config.final_subset
    data = load_dataset(config.dataset, config.data_dir, split_seed=seed, subset=subset, resolution=arch.resolution)
    info = {"study": study.study_name, "storage": url, "trial": chosen.number, "dataset": config.dataset,
            "seed": seed, "final_epochs": record.epochs, "final_subset": subset,
            "val_accuracy": record.val_accuracy,
            "search_val_accuracy": chosen.values[0] if chosen.values else None,
            "retrain_test_accuracy": record.test_accuracy, "weights_source": str(path)}
    manifest = export_model(model, output, data.test, space=identity.space,
                            scaling=TrialRecord.of(chosen).scaling, budget_bytes=budget, info=info, force=force,
                            cost=cost, formats=formats, calibration=calibration_images(data, formats),
                            profile=profile)
    return {"bundle": str(output), **manifest}


def calibration_images(data, formats, images: int = 256):
    """A fixed stratified subset of the training split for formats that calibrate (None without any format)."""
    if not formats:
        return None
    import torch

    from nas.data import ImageDataset
    from nas.data.split import stratified_subset

    idx = stratified_subset(data.train.labels, min(images, len(data.train)), seed=0)
    return ImageDataset(data.train.images[torch.as_tensor(idx)], data.train.labels[torch.as_tensor(idx)],
                        data.test.mean, data.test.std)


def trained_model(arch, state: dict, path: Path, arch_string: str):
    """The fake-quant network of `arch` (encoded `arch_string`) holding `state`, the final
    weights read from `path`."""
    from nas.blocks.model import build_model

    model = build_model(arch)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UsageError(f"{path}: not the state dict of {arch_string!r} ({str(e).splitlines()[0]})") from None
    return model
