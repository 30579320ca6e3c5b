"""`nas bench pruners`: recorded learning curves replayed through Optuna's real pruners."""

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial
from optuna.distributions import FloatDistribution

from nas.cli import main
from nas.search.bench_pruners import curves_from_storage, replay
from nas.search.storage import open_storage

CURVES = Path(__file__).resolve().parents[1] / "benchmarks" / "learning_curves.json"


@pytest.fixture(scope="module")
def default_curves():
    """Learning curves measured by `nas bench search` random-search studies (see the README)."""
    return np.asarray(json.loads(CURVES.read_text())["default"], dtype=float)


def test_without_a_pruner_every_candidate_runs_every_epoch(default_curves):
    tried, finished = replay(default_curves, 30, optuna.pruners.NopPruner(), np.random.default_rng(0))
    assert tried == 10 and len(finished) == 10  # 30 epochs / 3 epochs per candidate
    assert set(finished) <= set(default_curves[:, -1])


def test_halving_tries_more_candidates_for_the_same_epochs(default_curves):
    halving = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    tried, finished = replay(default_curves, 60, halving, np.random.default_rng(0))
    assert tried > 20  # stopped candidates cost one or two epochs instead of three
    assert 0 < len(finished) < tried


def _trial(arch, curve, state):
    return create_trial(state=state, value=curve[-1] if state == TrialState.COMPLETE else None,
                        params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                        user_attrs={"arch": arch}, intermediate_values=dict(enumerate(curve, start=1)))


def test_curves_come_only_from_unpruned_studies_each_architecture_once(tmp_path):
    url = f"journal:{tmp_path / 'c.journal'}"
    storage = open_storage(url)
    plain = optuna.create_study(study_name="plain", storage=storage, direction="maximize")
    plain.set_user_attr("config", {"epochs": 3, "space": "search_spaces/default.yaml"})
    plain.add_trial(_trial("a", [0.5, 0.6, 0.7], TrialState.COMPLETE))
    plain.add_trial(_trial("b", [0.4, 0.6, 0.8], TrialState.COMPLETE))
    plain.add_trial(_trial("c", [0.4, 0.5], TrialState.COMPLETE))  # stopped early by the time budget
    halved = optuna.create_study(study_name="halved", storage=storage, direction="maximize")
    halved.set_user_attr("config", {"epochs": 3, "space": "search_spaces/mcu.yaml"})
    halved.add_trial(_trial("d", [0.5, 0.6, 0.9], TrialState.COMPLETE))
    halved.add_trial(_trial("e", [0.3], TrialState.PRUNED))
    seen = {"b"}
    assert curves_from_storage(url, seen) == {"default": [[0.5, 0.6, 0.7]]}
    assert seen == {"a", "b"}


def test_nas_bench_pruners_json(capsys):
    rc = main(["bench", "pruners", "--curves", str(CURVES), "--budget-epochs", "24", "--factors", "2",
               "--reps", "3", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    for space in ("default", "mcu"):
        assert set(out["rank_vs_last_epoch"][space]) == {"1", "2"}  # rungs before the last of 3 epochs
        assert all(-1.0 <= rho <= 1.0 for rho in out["rank_vs_last_epoch"][space].values())
    rows = out["rows"]
    assert {(r["space"], r["pruner"]) for r in rows} == {(s, p) for s in ("default", "mcu")
                                                          for p in ("none", "sh rf=2")}
    for r in rows:
        assert 0.0 < r["top3"] <= r["best"] <= 1.0
        assert r["tried"] == 8 if r["pruner"] == "none" else r["tried"] >= 8
