"""`nas search` end to end on real data (a Fashion-MNIST subset), with a real journal storage."""

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nas.cli import main
from nas.search.storage import open_storage

FAST = ["--dataset", "fashion-mnist", "--space", "search_spaces/mcu.yaml", "--subset", "500", "--val-subset", "1000",
        "--epochs", "1", "--final-epochs", "1", "--final-subset", "500", "--no-progress", "--seed", "3"]


def _study(name, storage):
    return optuna.load_study(study_name=name, storage=open_storage(storage))


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in a temporary folder that sees the repo's search spaces (studies/ goes there)."""
    import pathlib
    repo = pathlib.Path(__file__).resolve().parents[1]
    (tmp_path / "search_spaces").symlink_to(repo / "search_spaces")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_short_search_trains_only_feasible_candidates(in_tmp, capsys):
    storage = f"journal:{in_tmp / 'studies' / 's.journal'}"
    budget = 40_000
    rc = main(["search", "--target-mem", "40KB", "--trials", "4", "--study", "s", "--storage", storage,
               "--json", *FAST])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    study = _study("s", storage)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert summary["trained"] >= 4
    for t in complete:
        feasible = all(c <= 0 for c in t.user_attrs["constraints"])
        assert t.user_attrs["feasible"] == feasible
        assert t.user_attrs["constraints"] == [(t.user_attrs["costs"]["weight_bytes"] - budget) / budget]
        # where Optuna's samplers and optuna-dashboard read them: once each, as numbers
        assert t.system_attrs["constraints"] == t.user_attrs["constraints"]
        assert list(t.constraints.values()) == t.user_attrs["constraints"]
        assert t.user_attrs["cost.weight_bytes"] == t.user_attrs["costs"]["weight_bytes"]
        if not feasible:  # recorded with its constraint values, never trained
            assert t.user_attrs["trained"] is False and "train" not in t.user_attrs and "proxy" not in t.user_attrs
            assert t.values[0] == 0.0
        else:
            assert t.user_attrs["trained"] is True
    best = summary["best"][0]
    assert best["weight_bytes"] <= budget
    # the final rung: the best distinct architectures (3 by default) retrained, best final val first
    finals = summary["final"]
    distinct = list(dict.fromkeys(b["arch"] for b in summary["best"]))[:3]
    assert sorted(f["arch"] for f in finals) == sorted(distinct)
    assert [f["val_accuracy"] for f in finals] == sorted((f["val_accuracy"] for f in finals), reverse=True)
    for f in finals:
        assert f["costs"]["weight_bytes"] <= budget and 0.0 <= f["test_accuracy"] <= 1.0
        assert (in_tmp / f["weights"]).is_file()
    # resuming with the same command adds trials up to the new target and keeps the old ones
    before = {t.number for t in complete}
    rc = main(["search", "--target-mem", "40KB", "--trials", "5", "--study", "s", "--storage", storage, *FAST])
    assert rc == 0
    after = _study("s", storage)
    assert before <= {t.number for t in after.trials if t.state == TrialState.COMPLETE}
    assert sum(1 for t in after.trials if t.state == TrialState.COMPLETE and t.user_attrs["trained"]) >= 5


def test_trials_count_distinct_trainings_not_duplicates(in_tmp, capsys):
    """A resumed random search replays its seeded proposals; the replays reuse stored results
    and must not count towards --trials, so the resumed run trains one new candidate."""
    storage = f"journal:{in_tmp / 'studies' / 'd.journal'}"
    argv = ["search", "--target-mem", "40KB", "--study", "d", "--storage", storage, "--sampler", "random",
            "--final-top", "1", "--json", *FAST]
    assert main([*argv, "--trials", "2"]) == 0
    capsys.readouterr()
    assert main([*argv, "--trials", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    study = _study("d", storage)
    own = [t for t in study.trials if t.state == TrialState.COMPLETE and t.user_attrs["trained"]
           and "duplicate_of" not in t.user_attrs]
    replays = [t for t in study.trials if "duplicate_of" in t.user_attrs]
    assert len({t.user_attrs["arch"] for t in own}) == len(own) == 3
    assert replays and summary["duplicates"] == len(replays) and summary["trained"] == 3
    for t in replays:
        original = study.trials[t.user_attrs["duplicate_of"]]
        assert t.user_attrs["arch"] == original.user_attrs["arch"] and t.values == original.values


def test_max_trials_bounds_the_trials_started(in_tmp, capsys):
    """--max-trials counts every trial the study starts (infeasible and duplicates too)."""
    storage = f"journal:{in_tmp / 'studies' / 'm.journal'}"
    argv = ["search", "--target-mem", "12KB", "--study", "m", "--storage", storage, "--sampler", "random",
            "--final-top", "1", "--json", "--max-trials", "4", *FAST]
    assert main(argv) == 0
    assert len(_study("m", storage).trials) == 4
    assert main(argv) == 0  # resumed: the bound holds for the study, not the run
    assert len(_study("m", storage).trials) == 4
    capsys.readouterr()


@pytest.mark.parametrize("argv, needle", [
    (["--target-mem", "5 M"], "--target-mem"),
    (["--target-mem", "5MB", "--max-trials", "0"], "--max-trials"),
    (["--target-mem", "1KB"], "below the cheapest architecture"),
    (["--target-mem", "5MB", "--sampler", "annealing"], "unknown sampler"),
    (["--target-mem", "5MB", "--dataset", "fashion-mnist", "--data-dir", "/nonexistent/fm"], "/nonexistent/fm"),
    (["--target-mem", "5MB", "--space", "nope.yaml"], "nope.yaml"),
    (["--target-mem", "5MB", "--storage", "mysql+nodriver://x"], "--storage"),
])
def test_bad_search_input_is_one_line_exit_2(in_tmp, capsys, argv, needle):
    rc = main(["search", *argv, "--trials", "1", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert needle in err and len(err.splitlines()) == 1, err


def test_budget_error_names_the_cheapest_size(in_tmp, capsys):
    assert main(["search", "--target-mem", "1KB", "--space", "search_spaces/mcu.yaml", "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert "weight_bytes" in err and "KB" in err


def test_diverging_trial_is_failed_and_the_search_goes_on(in_tmp, monkeypatch, capsys):
    import nas.search.objective as objective
    from nas.train.trainer import TrainingDiverged

    real_train, calls = objective.train, []

    def train_that_diverges_once(*args, **kwargs):  # fault injection around the real trainer
        calls.append(1)
        if len(calls) == 1:
            raise TrainingDiverged(epoch=1, step=3, loss=float("nan"))
        return real_train(*args, **kwargs)

    monkeypatch.setattr(objective, "train", train_that_diverges_once)
    storage = f"journal:{in_tmp / 'd.journal'}"
    rc = main(["search", "--target-mem", "5MB", "--trials", "2", "--study", "d", "--storage", storage,
               "--proxy", "none", *FAST])
    assert rc == 0
    study = _study("d", storage)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.FAIL) == 1
    assert sum(1 for t in study.trials if t.state == TrialState.COMPLETE and t.user_attrs["trained"]) >= 2


def test_successive_halving_stops_the_weaker_half_and_never_a_finished_candidate(in_tmp, capsys):
    storage = f"journal:{in_tmp / 'h.journal'}"
    argv = [a for a in FAST]
    argv[argv.index("--epochs") + 1] = "2"
    rc = main(["search", "--target-mem", "100KB", "--trials", "3", "--study", "h", "--storage", storage,
               "--final-top", "1", *argv])
    assert rc == 0
    study = _study("h", storage)
    halved = [t for t in study.trials if t.state == TrialState.PRUNED and "duplicate_of" not in t.user_attrs]
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE and t.user_attrs["trained"]]
    assert halved, "no candidate was stopped after its first epoch"
    for t in halved:  # stopped at the first rung: one epoch reported, never the last
        assert sorted(t.intermediate_values) == [1]
    for t in finished:
        if "duplicate_of" not in t.user_attrs:
            assert sorted(t.intermediate_values) == [1, 2]
            assert t.values[0] == t.intermediate_values[2]

    # the same architecture proposed again is not trained a second time: stopped early again
    # at once, naming the trial that was halved (and a resumed search trains one new candidate)
    first, last = halved[0], max(t.number for t in study.trials)
    study.enqueue_trial(first.params, skip_if_exists=False)
    assert main(["search", "--target-mem", "100KB", "--trials", "4", "--study", "h", "--storage", storage,
                 "--final-top", "1", *argv]) == 0
    again = _study("h", storage).trials[last + 1]
    assert again.params == first.params and again.state == TrialState.PRUNED
    assert again.user_attrs["duplicate_of"] == first.number and not again.intermediate_values


def test_hand_nets_and_finalists_share_the_final_recipe(in_tmp, capsys):
    """`nas bench search` trains its hand nets exactly as the search retrains its finalists."""
    from nas.search.bench import _final, resnet20_like
    from nas.search.config import SearchConfig
    config = SearchConfig(seed=3, final_epochs=1, final_subset=500)
    hand = _final(resnet20_like(0.25, 1, 10), config)
    storage = f"journal:{in_tmp / 'f.journal'}"
    assert main(["search", "--target-mem", "40KB", "--trials", "1", "--study", "f", "--storage", storage,
                 "--final-top", "1", "--json", *FAST]) == 0
    finalist = json.loads(capsys.readouterr().out)["final"][0]
    assert finalist["batch_size"] == finalist["train"]["batch_size"] == hand["batch_size"] == config.final_batch_size
    assert finalist["train"]["steps"] == hand["steps"] and finalist["subset"] == 500


@pytest.mark.parametrize("size", [126_092, 5_000_000])
def test_hand_nets_are_the_widest_that_fit_the_size(size):
    """`nas bench search` fits its hand baselines to the budget or to `--hand-fit SIZE`."""
    from nas.search.bench import fp32_payload_bytes, mobilenetv3_small, resnet20_like, widest_fitting
    for make in (resnet20_like, mobilenetv3_small):
        width, model = widest_fitting(make, size, 1, 10)
        assert fp32_payload_bytes(model) <= size
        assert fp32_payload_bytes(make(width + 1 / 16, 1, 10)) > size


def test_the_readme_study_config_loads():
    """`nas search --config studies/fm-100k.yaml` (README): the shipped file parses into the
    options it states."""
    from nas.search.config import build_config, read_config_file

    root = Path(__file__).resolve().parents[1]
    config = build_config({}, read_config_file(str(root / "studies" / "fm-100k.yaml")))
    assert config.study == "fm-100k" and config.space == "search_spaces/mcu.yaml"
    assert config.budgets.weight_bytes == 100_000 and config.budget_s == 1800


def test_sizes_follow_the_dataset_when_none_is_given():
    """Fashion-MNIST keeps the sizes `make search` always used; digits (1,294 training images)
    gets its whole split and more epochs, so its candidates see about as many images."""
    from nas.data import load_dataset
    from nas.search.config import Sizes, SearchConfig, default_sizes, first_rung, resolve_sizes

    fm = load_dataset("fashion-mnist")
    assert default_sizes(len(fm.train), len(fm.val)) == Sizes(subset=4000, epochs=3, val_subset=6000,
                                                              final_subset=20000, final_epochs=4)
    digits = load_dataset("digits")
    n_train, n_val = len(digits.train), len(digits.val)
    sizes = default_sizes(n_train, n_val)
    assert sizes == Sizes(subset=n_train, epochs=9, val_subset=n_val, final_subset=n_train, final_epochs=10)
    assert sizes.epochs * sizes.subset >= 0.9 * 3 * 4000  # images seen per candidate, as on Fashion-MNIST
    assert [first_rung(e) for e in (2, 3, 9)] == [1, 1, 3]
    notes = []
    config = resolve_sizes(SearchConfig(subset=5000, final_subset=20000, val_subset=999, epochs=2), n_train,
                           n_val, 10, "digits", notes)
    assert (config.subset, config.final_subset, config.val_subset, config.epochs) == (n_train, n_train, n_val, 2)
    assert config.final_epochs == 10
    assert notes == [f"--subset 5000: capped to {n_train}, the training split of digits",
                     f"--val-subset 999: capped to {n_val}, the validation split of digits",
                     f"--final-subset 20000: capped to {n_train}, the training split of digits"]


def test_oversized_subsets_are_capped_with_a_note_before_the_search(in_tmp, capsys):
    """The issue's case: --subset and --final-subset over digits' split cap, the search runs."""
    storage = f"journal:{in_tmp / 'c.journal'}"
    rc = main(["search", "--target-mem", "200KB", "--dataset", "digits", "--space", "search_spaces/mcu.yaml",
               "--subset", "4000", "--final-subset", "20000", "--epochs", "1", "--final-epochs", "1",
               "--trials", "1", "--final-top", "1", "--study", "c", "--storage", storage, "--no-progress",
               "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    notes = [line for line in captured.err.splitlines() if line.startswith("nas: note:")]
    assert notes[:2] == ["nas: note: --subset 4000: capped to 1294, the training split of digits",
                         "nas: note: --final-subset 20000: capped to 1294, the training split of digits"]
    final = json.loads(captured.out)["final"][0]
    assert final["subset"] == 1294 and final["train"]["train_images"] == 1294


def test_a_candidate_the_deadline_cuts_short_is_pruned_not_a_finalist(in_tmp, capsys):
    """A candidate whose training the search's time budget stops mid-way has no full score: it
    is recorded PRUNED (accuracy and training record kept), never COMPLETE, never retrained."""
    storage = f"journal:{in_tmp / 'studies' / 'cut.journal'}"
    rc = main(["search", "--target-mem", "200KB", "--dataset", "digits", "--budget", "4s", "--epochs", "60",
               "--subset", "500", "--val-subset", "100", "--study", "cut", "--storage", storage, "--no-progress",
               "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    trials = _study("cut", storage).trials
    cut = [t for t in trials if t.state == TrialState.PRUNED and "train" in t.user_attrs]
    assert cut, [(t.state, sorted(t.user_attrs)) for t in trials]
    for t in cut:
        assert t.user_attrs["train"]["stopped_early"] == "max_seconds"
        assert t.user_attrs["train"]["epochs_completed"] < 60
        assert t.user_attrs.get("trained") is not True
    assert not [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("trained")]
    assert not summary.get("final")  # nothing retrained
