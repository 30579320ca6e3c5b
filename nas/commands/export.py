"""`nas export --study S [--storage URL] (--best | --trial N) -o DIR`: a deployable bundle.

The trial's finally-retrained weights (study attribute ``final:<n>``) are exported. A trial
without them is retrained first at the study's final fidelity (`nas.search.final.retrain_one`,
the same function `nas search` uses, so the record lands in the study for next time);
``--no-retrain`` makes that an error instead. The accuracy in the manifest is measured on
the dataset's test split with the same normalisation the weights were trained with.

Refuses (exit 2) when the payload exceeds the study's ``--target-mem``: first on the
predicted size before any retraining, then on the bytes actually packed.
"""

import json
import sys
from pathlib import Path

from nas.errors import UsageError
from nas.units import format_bytes


def add_arguments(p):
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", help="Optuna storage URL (default journal file studies/<study>.journal)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--best", action="store_true", help="the best feasible trained trial")
    which.add_argument("--trial", type=int, help="trial number")
    p.add_argument("-o", "--output", required=True, help="bundle directory to write (must not exist or be empty)")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty output directory")
    p.add_argument("--no-retrain", action="store_true",
                   help="fail instead of retraining a trial that has no final weights")
    p.add_argument("--threads", type=int, help="torch / kernel threads for evaluation and timing (default: torch's)")
    p.add_argument("--json", action="store_true", help="print the manifest as one JSON object on stdout")


def open_study(name: str, storage_url: str | None):
    """Load an existing study (never creates one, nor an empty journal file or SQLite database)."""
    from nas.report.study import open_study as open_existing_study

    study, _, url = open_existing_study(name, storage_url)
    return study, url


def study_config(study):
    """The study's `SearchConfig`, rebuilt from its ``config`` attribute."""
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


def run(args) -> int:
    from nas.blocks.model import build_model
    from nas.cost import arch_cost
    from nas.data import load_dataset
    from nas.export.bundle import check_budget, check_output, export_model, set_threads
    from nas.search.final import retrain_one
    from nas.search.records import StudyRecord, TrialRecord
    from nas.search.results import final_record
    from nas.space import decode

    set_threads(args.threads)
    check_output(args.output, args.force)  # before any retraining
    study, url = open_study(args.study, args.storage)
    config = study_config(study)
    identity = StudyRecord.of(study).identity
    budget = identity.budgets.weight_bytes
    trial = pick_trial(study, args.best, args.trial)
    arch_string = TrialRecord.of(trial).arch
    arch = decode(arch_string)
    check_budget(arch_cost(arch).weight_bytes, budget, "the study's --target-mem (predicted weight_bytes)")

    record = final_record(study, trial.number)
    if record is None:
        if args.no_retrain:
            raise UsageError(f"trial {trial.number}: no final weights (study attribute final:{trial.number}); "
                             f"drop --no-retrain to retrain it at the study's final fidelity")
        print(f"nas: trial {trial.number} has no final weights; retraining at the study's final fidelity",
              file=sys.stderr)
        record = retrain_one(study, config, trial)
    path = _weights_path(record, url, study.study_name)
    from nas.weights import read_weights
    state, metadata = read_weights(path, f"trial {trial.number}'s final weights")
    stored_arch = metadata.get("arch")
    if stored_arch != arch_string:
        raise UsageError(f"{path}: weights of arch {stored_arch!r}; expected trial {trial.number}'s {arch_string!r}")
    model = build_model(arch)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UsageError(f"{path}: not the state dict of {arch_string!r} ({str(e).splitlines()[0]})") from None
    seed = record.seed if record.seed is not None else config.seed
    subset = record.subset if record.subset is not None else config.final_subset
    data = load_dataset(config.dataset, config.data_dir, split_seed=seed, subset=subset, resolution=arch.resolution)
    info = {"study": study.study_name, "storage": url, "trial": trial.number, "dataset": config.dataset,
            "seed": seed, "final_epochs": record.epochs, "final_subset": subset,
            "val_accuracy": record.val_accuracy,
            "search_val_accuracy": trial.values[0] if trial.values else None,
            "retrain_test_accuracy": record.test_accuracy, "weights_source": str(path)}
    manifest = export_model(model, args.output, data.test, space=identity.space,
                            scaling=TrialRecord.of(trial).scaling, budget_bytes=budget, info=info, force=args.force)
    if args.json:
        print(json.dumps({"bundle": str(args.output), **manifest}))
    else:
        print_summary(args.output, manifest)
    return 0


def print_summary(out: str, m: dict) -> None:
    budget = f" (budget {format_bytes(m['budget_mem_bytes'])})" if m.get("budget_mem_bytes") else ""
    latency = f"{m['latency_ms']:.3g} ms" if m.get("latency_ms") is not None else "- (no device profile)"
    print(f"bundle {out}: trial {m.get('trial')} of study {m.get('study')}")
    print(f"  arch      {m['arch']}")
    print(f"  payload   {m['payload_bytes']} bytes written = predicted weight_bytes {m['weight_bytes']}{budget}")
    print(f"  accuracy  {m['accuracy']:.4f} on {m['test_images']} test images (fake-quant model "
          f"{m['fake_quant_accuracy']:.4f}; predictions agree on {100 * m['prediction_agreement']:.2f}%)")
    print(f"  latency   {m['latency_measured_ms']:.3g} ms/image measured (batch 1, {m['threads']} threads, "
          f"kernels {m['kernels']}), predicted {latency}; {m['throughput_ips']:.0f} images/s at batch 256")
    print(f"  cost      {m['params']} params, {m['macs']} macs, peak activations {format_bytes(m['peak_act_bytes'])}")
