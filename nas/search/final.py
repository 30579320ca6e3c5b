"""The final recipe: retrain the best feasible trials longer, test each once, keep the weights.

The top rung of the fidelity ladder. With `--fidelity subset` the `final_top` best distinct
architectures of the search are retrained on the final recipe; with `--fidelity final` a
candidate that survives every rung has already run the recipe (`nas.search.objective`) and is
recorded here as it stands (`record_final`), not trained again. The one with the best
*validation* accuracy after the recipe is the search's result (`chosen`); the test split is
never used to choose, and is touched here and nowhere else in a search. Weights go to
``studies/<study>/trial_<n>.safetensors``; the record goes to the study's user attribute
``final:<n>`` (`nas.search.records.FinalRecord`; finished trials are immutable in Optuna),
which `report` and `export` read.
"""

import sys
import time
from pathlib import Path

import optuna
import torch
from safetensors.torch import save_file

from nas import fsio
from nas.blocks.model import build_model
from nas.measure.timing import example_input, time_forward
from nas.data import load_dataset
from nas.search.config import SearchConfig, resolve_sizes
from nas.search.records import FinalRecord, TrialRecord, write_final
from nas.search.results import by_final_val, final_record
from nas.search.storage import STUDIES_DIR
from nas.space import decode
from nas.train.evaluate import evaluate
from nas.train.trainer import train


def artifacts_dir(study_name: str) -> Path:
    return STUDIES_DIR / study_name


def checkpoint_path(study_name: str, number: int) -> Path:
    """Where a final-fidelity candidate that the search's deadline stopped keeps its training
    state (`nas.train.trainer.train`'s `checkpoint`), so that it can be continued, not restarted."""
    return artifacts_dir(study_name) / f"trial_{number}.ckpt"


def discard_checkpoints(study: optuna.Study, study_name: str) -> None:
    """Remove the checkpoints of trials that are no longer running (their search is over)."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
    for path in artifacts_dir(study_name).glob("trial_*.ckpt"):
        number = path.stem.removeprefix("trial_")
        if not (number.isdigit() and int(number) in running):
            path.unlink(missing_ok=True)


def distinct_archs(trials: list, k: int) -> list:
    """The first `k` trials of `trials` (best first) with different architectures."""
    out, seen = [], set()
    for t in trials:
        arch = TrialRecord.of(t).arch
        if arch not in seen:
            seen.add(arch)
            out.append(t)
        if len(out) == k:
            break
    return out


def retrain_best(study: optuna.Study, config: SearchConfig, trials: list) -> list[FinalRecord]:
    """Retrain `trials` (already retrained ones are read back); records, the chosen one first."""
    records = [final_record(study, t.number) or retrain_one(study, config, t) for t in trials]
    return by_final_val(records)


def final_data(config: SearchConfig, resolution: int):
    """The final recipe's data: a fixed stratified `final_subset` of the training split (`seed`)."""
    return load_dataset(config.dataset, config.data_dir, split_seed=config.seed, subset=config.final_subset,
                        resolution=resolution)


def final_train(model, data, config: SearchConfig, progress: bool = True, **kwargs):
    """The final recipe, defined once for the search's finalists and for `nas bench search`'s
    hand-designed nets: `final_epochs` epochs at batch `final_batch_size`, seeded by `seed`, on
    `device`; the model comes back on the CPU. `final_two_stage` > 0: Bi-Real's two stages
    (`nas.train.methods`), stage 2's result returned."""
    if config.final_two_stage:
        from nas.train.methods import Methods, train_with_methods

        return train_with_methods(model, data, config.final_epochs, Methods(two_stage=config.final_two_stage),
                                  batch_size=config.final_batch_size, seed=config.seed, progress=progress,
                                  device=config.device, amp=config.amp, **kwargs)[0]
    return train(model, data, epochs=config.final_epochs, batch_size=config.final_batch_size, seed=config.seed,
                 progress=progress, device=config.device, amp=config.amp, **kwargs)


def retrain_one(study: optuna.Study, config: SearchConfig, trial: optuna.trial.FrozenTrial,
                resume: Path | None = None) -> FinalRecord:
    """The final recipe on `trial`'s architecture, from the start, or continued from `resume` (a
    checkpoint of that same run, `checkpoint_path`), which ends with the same weights."""
    searched = TrialRecord.of(trial)
    arch = decode(searched.arch)
    if config.final_subset is None or config.final_epochs is None:  # a config written before its sizes resolved
        full = load_dataset(config.dataset, config.data_dir, split_seed=config.seed)
        config = resolve_sizes(config, len(full.train), len(full.val), full.num_classes, full.name)
    data = final_data(config, arch.resolution)
    print(f"nas: final training of trial {trial.number} ({config.final_epochs} epochs on "
          f"{config.final_subset or len(data.train)} images{', continued from ' + str(resume) if resume else ''}): "
          f"{searched.arch}", file=sys.stderr)
    torch.manual_seed(config.seed)
    model = build_model(arch)
    start = time.time()
    result = final_train(model, data, config, weight_bytes=searched.costs["weight_bytes"], resume=resume)
    search_val = searched.values[0] if searched.values else None
    return record_final(study, config, trial.number, searched.arch, model, data, result, searched.costs,
                        search_val, time.time() - start)


def record_final(study: optuna.Study, config: SearchConfig, number: int, arch: str, model, data, result,
                 costs: dict, search_val_accuracy: float | None, wall_s: float) -> FinalRecord:
    """A model the final recipe trained (`result`): tested once on the test split, its weights
    saved beside the study, its latency measured, the `FinalRecord` written. One home for both
    fidelities: the retraining above, and a final-fidelity candidate that ran the whole recipe
    (`nas.search.objective`)."""
    test_accuracy = evaluate(model, data.test)
    out = artifacts_dir(config.study)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"trial_{number}.safetensors"
    with fsio.atomic_file(weights) as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp),
                  metadata={"arch": arch})
    # measured the way `nas calibrate` measures what the latency model predicts: batch 1, eval
    # mode, 1-bit layers on the packed kernels (the training's own figure is the fake-quant path)
    measured = time_forward(model.eval().use_kernels(True), example_input(decode(arch))).median_ms
    record = FinalRecord(
        trial=number, arch=arch, search_val_accuracy=search_val_accuracy,
        val_accuracy=result.accuracy, test_accuracy=test_accuracy, weights=str(weights),
        latency_ms=costs.get("latency_ms"),  # predicted
        latency_measured_ms=measured,
        epochs=config.final_epochs, subset=config.final_subset, batch_size=config.final_batch_size,
        seed=config.seed,
        train={k: v for k, v in result.to_dict().items() if k != "val_history"},
        wall_s=round(wall_s, 1), costs=costs, fidelity=config.fidelity,
    )
    write_final(study, record)
    return record
