"""`--fidelity final`: candidates run the final recipe itself, scored at rungs that are fractions
of it; the one that passes every rung is the search's result as it stands (issue 19, item 1).
Real data (digits, a Fashion-MNIST subset), a real journal storage, Optuna's own pruner."""

import json

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from safetensors.torch import load_file

from nas.blocks.model import build_model
from nas.cli import main
from nas.data import load_dataset
from nas.search import final
from nas.search.config import FINAL_LADDER_FACTOR, SearchConfig, resolve_sizes, rung_steps
from nas.search.objective import final_ladder
from nas.search.runner import _furthest_candidate, make_pruner
from nas.search.storage import open_storage
from nas.space import decode
from nas.train import train
from nas.train.trainer import steps_in_epoch

from test_search import in_tmp  # noqa: F401  (the fixture: a temporary folder that sees search_spaces/)
from test_trainer import small_cnn

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_ladder_on_fashion_mnist_defaults():
    """FM's defaults: a candidate's own run is 4,000 images x 3 epochs = 12,000 images (188 steps
    at batch 64); the final recipe 20,000 x 4 at batch 64 = 313 x 4 = 1,252 steps, 6.7 times
    that: two rungs below the top, at a ninth (140 steps, 8,960 images) and a third (420)."""
    config = resolve_sizes(SearchConfig(fidelity="final"), 54_000, 6_000, 10, "fashion-mnist", notes=[])
    assert (config.subset, config.epochs, config.final_subset, config.final_epochs) == (4000, 3, 20_000, 4)
    rungs, total = final_ladder(config, config.final_subset)
    assert total == steps_in_epoch(20_000, 64) * 4 == 1252
    assert rungs == [140, 420]


@pytest.mark.parametrize("subset, epochs, total, expected", [
    (4000, 3, 1252, [140, 420]),
    (500, 1, 94, [11, 33]),  # 8 steps' worth: 94 / 8 = 11.75 = 3^2.2 -> two rungs
    (4000, 3, 188 * 81, [188, 564, 1692, 5076]),  # the recipe 81 = 3^4 times a candidate's run: four rungs
    (10_000, 9, 300, [100]),  # a candidate's own run costs more than the recipe: one rung, at a third
    (1, 1, 2, []),  # too short for a rung: the whole recipe only
])
def test_rungs_grow_by_the_factor_and_stay_below_the_recipe(subset, epochs, total, expected):
    config = SearchConfig(fidelity="final", subset=subset, epochs=epochs)
    rungs = rung_steps(config, total)
    assert rungs == expected
    assert all(b == a * FINAL_LADDER_FACTOR for a, b in zip(rungs, rungs[1:]))
    assert all(r < total for r in rungs)


def test_the_pruner_halves_on_the_same_ladder():
    config = resolve_sizes(SearchConfig(fidelity="final"), 54_000, 6_000, 10, "fashion-mnist", notes=[])
    pruner = make_pruner(config)
    assert isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner)
    assert (pruner._min_resource, pruner._reduction_factor) == (140, FINAL_LADDER_FACTOR)


def test_scoring_at_rungs_does_not_change_the_training():
    """Rungs score the validation split mid-run; the weights after the run are the same as
    without them (atol=0), and each rung's score is that of the model at that step."""
    data = load_dataset("digits")
    seen = []
    models = []
    for rungs, ema in (((), False), ((3, 9, 20), False), ((3, 9, 20), True)):
        torch.manual_seed(0)
        model = small_cnn(8)
        result = train(model, data, epochs=2, batch_size=64, seed=0, progress=False, measure_inference=False,
                       rung_steps=rungs, on_rung=lambda s, a: seen.append((s, a)), rung_ema=ema)
        models.append(model)
    assert [s for s, _ in seen] == [3, 9, 20] * 2  # raw, then on the moving average
    assert all(0.0 <= a <= 1.0 for _, a in seen)
    assert [h[0] for h in result.val_history[:3]] == [s / steps_in_epoch(len(data.train), 64) for s in (3, 9, 20)]
    a = models[0].state_dict()
    for other in models[1:]:
        b = other.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_stop_ends_the_run_with_its_reason():
    data = load_dataset("digits")
    torch.manual_seed(0)
    result = train(small_cnn(8), data, epochs=3, batch_size=64, seed=0, progress=False, measure_inference=False,
                   stop=lambda step: "deadline" if step >= 5 else None)
    assert result.stopped_early == "deadline" and result.steps == 5


def test_a_stopped_run_resumes_from_its_checkpoint_to_the_same_weights(tmp_path):
    """A run the deadline stops mid-epoch saves a checkpoint; resuming it gives the weights, the
    weight average and the rung scores of a run never stopped, at atol=0 (dropout, augmentation,
    the EMA and the rung shadow included); a checkpoint of another recipe is refused in one line."""
    from nas.errors import UsageError
    from nas.train.recipe import Augment

    data = load_dataset("digits")
    kwargs = dict(epochs=3, batch_size=64, seed=5, progress=False, measure_inference=False, ema_decay="auto",
                  augment=Augment(pad=1, erasing=0.5), rung_steps=(10, 40), rung_ema=True)

    def fresh():
        torch.manual_seed(0)
        return torch.nn.Sequential(small_cnn(8), torch.nn.Dropout(0.3))  # dropout draws from the global RNG

    whole, whole_scores = fresh(), {}
    train(whole, data, on_rung=whole_scores.__setitem__, **kwargs)
    part, scores, ckpt = fresh(), {}, tmp_path / "run.ckpt"
    stopped = train(part, data, on_rung=scores.__setitem__, checkpoint=ckpt,
                    stop=lambda step: "deadline" if step == 30 else None, **kwargs)
    assert stopped.stopped_early == "deadline" and stopped.steps == 30 and ckpt.is_file()
    assert 30 % steps_in_epoch(len(data.train), 64) != 0  # mid-epoch
    resumed = fresh()
    result = train(resumed, data, on_rung=scores.__setitem__, resume=ckpt, **kwargs)
    assert result.steps == 3 * steps_in_epoch(len(data.train), 64) and result.stopped_early is None
    assert scores == whole_scores and set(scores) == {10, 40}
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    with pytest.raises(UsageError, match=r"resume=.*run.ckpt.*another recipe.*'epochs': \(3, 4\)"):
        train(fresh(), data, resume=ckpt, **{**kwargs, "epochs": 4})


def test_the_search_result_is_the_candidates_own_run_of_the_final_recipe(in_tmp, capsys):
    """With --fidelity final a candidate that passes every rung is not trained again: its saved
    weights equal a fresh run of the final recipe on its architecture (atol=0), its record says
    so, its rungs were scored on the moving average of the weights (`FINAL_RUNG_EMA`), and the
    candidates the pruner stopped were stopped at rungs of the ladder. A checkpoint left by an
    earlier run's deadline-stopped trial is removed when the search ends."""
    storage = f"journal:{in_tmp / 'studies' / 'f.journal'}"
    stale = final.checkpoint_path("f", 99)
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"a checkpoint of a trial that is not running")
    rc = main(["search", "--target-mem", "40KB", "--space", "search_spaces/mcu.yaml", "--dataset", "fashion-mnist",
               "--fidelity", "final", "--subset", "200", "--epochs", "1", "--val-subset", "500",
               "--final-subset", "600", "--final-epochs", "1", "--trials", "2", "--final-top", "2",
               "--study", "f", "--storage", storage, "--seed", "3", "--no-progress", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "candidates run the final recipe (600 images x 1 epochs at batch 64, 10 steps)" in out.err
    summary = json.loads(out.out)
    study = optuna.load_study(study_name="f", storage=open_storage(storage))
    config = resolve_sizes(SearchConfig(fidelity="final", subset=200, epochs=1, val_subset=500, final_subset=600,
                                        final_epochs=1, seed=3, study="f"), 54_000, 6_000, 10, "fashion-mnist",
                           notes=[])
    rungs, _ = final_ladder(config, 600)
    assert rungs == [4]
    for t in study.get_trials(states=(TrialState.PRUNED,)):
        assert set(t.intermediate_values) <= set(rungs), t.intermediate_values
    assert summary["final"] and all(f["fidelity"] == "final" for f in summary["final"])
    chosen = summary["final"][0]
    searched = study.trials[chosen["trial"]]
    assert searched.state == TrialState.COMPLETE and searched.values[0] == chosen["val_accuracy"]
    assert chosen["train"]["steps"] == 10 and chosen["train"]["stopped_early"] is None
    assert not stale.exists()

    arch = decode(chosen["arch"])
    data = final.final_data(config, arch.resolution)
    torch.manual_seed(config.seed)
    again = build_model(arch)
    scores = {}
    final.final_train(again, data, config, progress=False, measure_inference=False, val_subset=config.val_subset,
                      rung_steps=rungs, on_rung=scores.__setitem__, rung_ema=True)
    assert searched.intermediate_values == scores  # its rung was scored on the moving average of the weights
    saved = load_file(in_tmp / chosen["weights"])
    fresh = again.state_dict()
    assert set(saved) == set(fresh)
    assert all(torch.equal(saved[k], fresh[k]) for k in saved)


def test_the_furthest_candidate_continues_from_where_the_deadline_stopped_it(in_tmp, capsys):
    """When no candidate reached the top rung, the furthest is continued from the checkpoint its
    stopped run left (not restarted): its weights equal an uninterrupted run of the final recipe
    at atol=0, its record counts every step, and its checkpoint goes with the others at the search's
    end (`final.discard_checkpoints`: the trial is no longer running)."""
    from nas.search.objective import trial_costs
    from nas.search.runner import finish_furthest
    from nas.space import encode, load_space, random_archs

    config = resolve_sizes(SearchConfig(study="c", fidelity="final", subset=200, epochs=1, val_subset=500,
                                        final_subset=600, final_epochs=2, seed=3), 54_000, 6_000, 10,
                           "fashion-mnist", notes=[])
    arch = next(iter(random_archs(load_space("search_spaces/mcu.yaml"), 1, 0, in_chs=1, num_classes=10)))
    data = final.final_data(config, arch.resolution)
    total = 2 * steps_in_epoch(600, config.final_batch_size)
    torch.manual_seed(config.seed)
    stopped = final.final_train(build_model(arch), data, config, progress=False, measure_inference=False,
                                checkpoint=final.checkpoint_path("c", 0),
                                stop=lambda step: "deadline" if step == 7 else None)
    assert stopped.steps == 7 < total and final.checkpoint_path("c", 0).is_file()
    study = optuna.create_study(study_name="c", direction="maximize")
    costs = trial_costs(arch, None)
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"x": 0.5},
                                 distributions={"x": FloatDistribution(0, 1)}, intermediate_values={4: 0.5},
                                 user_attrs={"arch": encode(arch), "costs": costs, "constraints": [-1.0]}))

    record = finish_furthest(study, config, study.get_trials())
    assert "continued from its checkpoint" in capsys.readouterr().err
    assert record.trial == 0 and record.train["steps"] == total and record.fidelity == "final"
    final.discard_checkpoints(study, "c")
    assert not final.checkpoint_path("c", 0).exists()
    torch.manual_seed(config.seed)
    whole = build_model(arch)
    final.final_train(whole, data, config, progress=False, measure_inference=False)
    saved, fresh = load_file(record.weights), whole.state_dict()
    assert set(saved) == set(fresh) and all(torch.equal(saved[k], fresh[k]) for k in saved)


def test_with_no_finished_candidate_the_furthest_one_is_run_to_the_end():
    def stopped(number, values, weight_bytes=10_000):
        return create_trial(state=TrialState.PRUNED, params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                            intermediate_values=values,
                            user_attrs={"feasible": True, "constraints": [-0.5], "costs": {"weight_bytes": weight_bytes}})
    trials = [stopped(0, {3: 0.6}), stopped(1, {3: 0.5, 9: 0.55}), stopped(2, {3: 0.7, 9: 0.58}), stopped(3, {})]
    for i, t in enumerate(trials):
        t.number = i
    assert _furthest_candidate(trials).number == 2
    assert _furthest_candidate([trials[3]]) is None


@pytest.mark.parametrize("argv, needle", [
    (["--fidelity", "full"], "--fidelity"),
    (["--fidelity", "final", "--final-two-stage", "0.5"], "--final-two-stage"),
])
def test_bad_fidelity_is_one_line_exit_2(in_tmp, capsys, argv, needle):
    rc = main(["search", "--target-mem", "5MB", *argv, "--trials", "1", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert needle in err and len(err.splitlines()) == 1, err


def test_a_study_keeps_its_fidelity(in_tmp):
    """Scores of the two fidelities are not comparable: a resume with the other one is refused;
    a study recorded before the option existed is a subset-fidelity study."""
    from nas.errors import UsageError
    from nas.search.records import Identity
    from nas.search.runner import _tie_study_to_config

    study = optuna.create_study(study_name="x", storage=open_storage(f"journal:{in_tmp / 'x.journal'}"))
    _tie_study_to_config(study, SearchConfig(study="x"))
    _tie_study_to_config(study, SearchConfig(study="x", fidelity="subset"))
    with pytest.raises(UsageError, match="fidelity='subset', not 'final'"):
        _tie_study_to_config(study, SearchConfig(study="x", fidelity="final"))
    assert Identity.from_attr({"space": "s", "dataset": "d", "budgets": {}, "objectives": "accuracy"}, "x").fidelity \
        == "subset"


def test_bench_fidelity_ranks_each_rung_against_the_final_test_accuracy(in_tmp, capsys):
    """`nas bench fidelity` on real data: every architecture runs both fidelities; each rung's
    Spearman is that of its scores with the final recipe's test accuracies; --out resumes."""
    from scipy.stats import spearmanr

    argv = ["bench", "fidelity", "--n", "3", "--dataset", "digits", "--space", "search_spaces/mcu.yaml",
            "--subset", "300", "--epochs", "2", "--val-subset", "144", "--final-subset", "400", "--final-epochs", "2",
            "--out", "f.jsonl", "--json"]
    assert main(argv) == 0
    info = json.loads(capsys.readouterr().out)
    rows = info["archs"]
    assert info["n"] == 3 and len(rows) == 3 and len((in_tmp / "f.jsonl").read_text().splitlines()) == 3
    total = steps_in_epoch(400, 64) * 2
    assert rows[0]["final_steps"] == total and rows[0]["rungs"] == [5]  # 600 images = 10 steps; 14 / 10 -> one rung
    assert all(len(r["subset_scores"]) == 2 and len(r["rung_scores"]) == 1 for r in rows)
    test = [r["test"] for r in rows]
    by_rung = {(r["fidelity"], r["rung"]): r["spearman"] for r in info["rungs"]}
    expected = spearmanr([r["subset_scores"][1] for r in rows], test).statistic
    assert by_rung[("subset", "epoch 2")] == (None if expected != expected else pytest.approx(expected))
    expected = spearmanr([r["final_val"] for r in rows], test).statistic
    assert by_rung[("final", f"end (step {total})")] == (None if expected != expected else pytest.approx(expected))
    assert main(argv) == 0  # all three are in f.jsonl: nothing is trained again
    again = json.loads(capsys.readouterr().out)
    assert again["archs"] == rows and len((in_tmp / "f.jsonl").read_text().splitlines()) == 3


def test_a_malformed_out_file_is_one_line_exit_2(in_tmp, capsys):
    (in_tmp / "bad.ndjson").write_text('{"arch": "x"}\nnot json\n')
    rc = main(["bench", "fidelity", "--n", "3", "--dataset", "digits", "--space", "search_spaces/mcu.yaml",
               "--out", "bad.ndjson"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "bad.ndjson:2" in err[0], err
    # rows measured the other way (here: an old row, before --rung-ema existed) are not mixed in
    (in_tmp / "old.ndjson").write_text('{"arch": "x"}\n')
    rc = main(["bench", "fidelity", "--n", "3", "--dataset", "digits", "--space", "search_spaces/mcu.yaml",
               "--out", "old.ndjson"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "old.ndjson" in err[0] and "--no-rung-ema" in err[0], err


def test_bench_search_runs_both_searches_at_its_fidelity(in_tmp, capsys):
    """`nas bench search --fidelity final`: the search and random search both run the final recipe
    per candidate (their log says so), and each ends with a tested model."""
    rc = main(["bench", "search", "--targets", "40KB:mcu", "--budget", "10s", "--subset", "200", "--epochs", "1",
               "--final-subset", "300", "--final-epochs", "1", "--methods", "ladder,random", "--fidelity", "final",
               "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    info = json.loads(out.out)
    assert info["fidelity"] == "final"
    assert out.err.count("candidates run the final recipe (300 images x 1 epochs at batch 64") == 2, out.err
    assert [r["method"] for r in info["rows"]] == ["ladder", "random"]
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in info["rows"]), info["rows"]
    assert not (in_tmp / "studies").exists() or not any((in_tmp / "studies").iterdir())  # no models left behind
