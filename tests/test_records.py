"""`nas.search.records`: a study's attributes, typed, read and written in one place.

The old-study tests build a study with optuna alone, writing the attributes exactly as `nas search`
wrote them before the records existed (budgets keyed ``mem`` / ``act_mem``, no ``device_profile``),
and check that every reader (results, report, export, resume) takes it as it is.
"""

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nas.cli import main
from nas.cost import arch_cost
from nas.errors import UsageError
from nas.search.budgets import Budgets
from nas.search.config import SearchConfig, build_config
from nas.search.records import (FinalRecord, ProfileStamp, StudyRecord, TrialRecord, trial_attrs, write_final,
                                write_identity)
from nas.search.results import best_feasible, result_trial, tally
from nas.search.storage import open_storage
from nas.space import encode, load_space, random_archs

REPO = Path(__file__).resolve().parents[1]
SPACE = "search_spaces/mcu.yaml"


def _old_costs(arch) -> dict:
    """A trial's costs as the objective has always recorded them (no profile: latency_ms None)."""
    costs = {k: v for k, v in arch_cost(arch).to_dict().items() if k != "layers"}
    costs["latency_ms"] = None
    return costs


def _old_study(tmp_path, name="old", mem=None):
    """A study as `nas search` wrote it before `nas.search.records`: plain optuna calls, the old keys."""
    url = f"journal:{tmp_path / (name + '.journal')}"
    study = optuna.create_study(study_name=name, storage=open_storage(url), direction="maximize")
    archs = random_archs(load_space(REPO / SPACE), 4, seed=3)
    costs = [_old_costs(a) for a in archs]
    if mem is None:  # the two smallest fit
        mem = sorted(c["weight_bytes"] for c in costs)[1]
    old_budgets = {"mem": mem, "act_mem": None, "macs": None, "latency_ms": None}
    study.set_user_attr("identity", {"space": SPACE, "dataset": "digits", "budgets": old_budgets,
                                     "objectives": "accuracy"})
    config = {**SearchConfig(study=name, dataset="digits", space=SPACE).to_dict(), "budgets": old_budgets}
    study.set_user_attr("config", config)
    for i, (arch, c) in enumerate(zip(archs, costs)):
        constraints = [(c["weight_bytes"] - mem) / mem]
        ok = constraints[0] <= 0
        study.add_trial(optuna.trial.create_trial(value=0.5 + 0.1 * i if ok else 0.0, user_attrs={
            "worker": "host:1", "arch": encode(arch), "scaling": {"alpha": 1.0, "beta": 1.0, "gamma": 1.0, "phi": 0},
            "costs": c, "constraints": constraints, "feasible": ok, "trained": ok,
            **({"accuracy": 0.5 + 0.1 * i, "train": {"train_time_s": 1.5}} if ok else {})}))
    return study, url, costs, mem


def test_an_old_study_reads_through_the_records(tmp_path):
    study, _, costs, mem = _old_study(tmp_path)
    record = StudyRecord.of(study)
    assert record.identity.budgets == Budgets(weight_bytes=mem)
    assert record.identity.space == SPACE and record.identity.objectives == "accuracy"
    assert record.profile is None and record.finals == {}  # neither was recorded then
    config, dropped = record.search_config()
    assert config.budgets.weight_bytes == mem and config.dataset == "digits" and dropped == []

    trials = study.get_trials()
    records = [TrialRecord.of(t) for t in trials]
    for r, c in zip(records, costs):
        assert r.costs == c and r.worker == "host:1" and r.cost("latency_ms") is None
        assert r.trained == r.feasible == r.within_budgets == (c["weight_bytes"] <= mem)
    fits = [r.number for r in records if r.feasible]
    assert len(fits) >= 2
    # the best is the most accurate feasible trial; the ranking reads the same attributes
    assert [t.number for t in best_feasible(trials)] == sorted(fits, reverse=True)
    assert tally(trials).trained == len(fits) and tally(trials).infeasible == len(trials) - len(fits)

    # a final record written the old way (a dict), and a partial one from an older version still
    study.set_user_attr(f"final:{fits[0]}", {"trial": fits[0], "val_accuracy": 0.9, "costs": costs[fits[0]],
                                             "weights": "w.safetensors", "seed": 0, "unknown_key": 1})
    study.set_user_attr(f"final:{fits[1]}", {"trial": fits[1], "val_accuracy": 0.8})
    finals = StudyRecord.of(study).finals
    assert finals[fits[0]].weights == "w.safetensors" and finals[fits[1]].costs is None
    assert result_trial(study, trials).number == fits[0]  # the final retraining's choice


def test_resuming_an_old_study_takes_it_and_stamps_the_profile(tmp_path):
    from nas.search.runner import _tie_study_to_config

    study, _, _, mem = _old_study(tmp_path)
    options = {"study": "old", "dataset": "digits", "space": SPACE, "target_mem": str(mem)}
    _tie_study_to_config(study, build_config(options))  # same options, budgets spelled the new way: accepted
    assert StudyRecord.of(study).profile == ProfileStamp(digest=None)  # priced without a profile from now on
    with pytest.raises(UsageError, match=r"was created with budgets='weight_bytes <= "):
        _tie_study_to_config(study, build_config({**options, "target_mem": str(mem + 1)}))


def test_a_new_study_writes_the_same_keys(tmp_path):
    """What the records write is what the old readers (and optuna-dashboard users) saw: the same keys."""
    study = optuna.create_study(study_name="new", storage=open_storage(f"journal:{tmp_path / 'n.journal'}"))
    config = build_config({"study": "new", "dataset": "digits", "space": SPACE, "target_mem": "40KB",
                           "target_act_mem": "20KB"})
    write_identity(study, config)
    write_final(study, FinalRecord(trial=3, val_accuracy=0.7, costs={"weight_bytes": 9}))
    attrs = study.user_attrs
    assert set(attrs) == {"identity", "config", "final:3"}
    assert attrs["identity"]["budgets"] == {"weight_bytes": 40_000, "peak_act_bytes": 20_000, "macs": None,
                                            "latency_ms": None}
    assert attrs["final:3"]["val_accuracy"] == 0.7 and attrs["final:3"]["trial"] == 3
    again = StudyRecord.of(study)
    assert again.identity.budgets == config.budgets and again.search_config()[0].budgets == config.budgets
    assert again.final(3) == FinalRecord(trial=3, val_accuracy=0.7, costs={"weight_bytes": 9})


def test_trial_attributes_are_checked_by_name():
    assert trial_attrs(retry_of=4, constraints=(0.5, -1.0)) == {"retry_of": 4, "constraints": [0.5, -1.0]}
    with pytest.raises(TypeError, match="'acuracy'"):
        trial_attrs(acuracy=0.5)


def test_budgets_are_keyed_by_the_cost_they_limit():
    b = Budgets(weight_bytes=100, macs=1000)
    assert b.active() == [("weight_bytes", 100), ("macs", 1000)]
    assert b.constraint_values({"weight_bytes": 150, "macs": 500, "peak_act_bytes": 10**9}) == [0.5, -0.5]
    assert b.describe() == "weight_bytes <= 100 B, macs <= 1K"
    assert Budgets.from_dict({"mem": 100, "act_mem": None, "macs": 1000, "latency_ms": None}) == b
    assert Budgets.from_dict(b.to_dict()) == b
    with pytest.raises(ValueError, match="'flops'"):
        Budgets.from_dict({"flops": 1})


def test_report_and_export_read_an_old_study(tmp_path, monkeypatch, capsys):
    (tmp_path / "search_spaces").symlink_to(REPO / "search_spaces")
    monkeypatch.chdir(tmp_path)
    study, url, costs, mem = _old_study(tmp_path)
    assert main(["report", "--study", "old", "--storage", url, "-o", str(tmp_path / "r.html"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    best = best_feasible(study.get_trials())[0]
    assert summary["chosen_trial"] == best.number and summary["costs"] == costs[best.number]
    assert "weight_bytes &lt;= " in (tmp_path / "r.html").read_text()  # the old ``mem`` budget, by its cost
    # export reads the old ``mem`` budget: a trial over it is refused before any retraining
    over = max(range(len(costs)), key=lambda i: costs[i]["weight_bytes"])
    assert main(["export", "--study", "old", "--storage", url, "--trial", str(over), "-o", str(tmp_path / "b"),
                 "--no-retrain"]) == 2
    err = capsys.readouterr().err.strip()
    assert "exceeds" in err and str(mem) in err.replace(",", "") and len(err.splitlines()) == 1, err


def test_a_study_without_nas_attributes_is_refused_by_export(tmp_path, capsys):
    url = f"journal:{tmp_path / 'bare.journal'}"
    study = optuna.create_study(study_name="bare", storage=open_storage(url), direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs={}))
    assert TrialRecord.of(study.trials[0]) == TrialRecord(number=0, state=TrialState.COMPLETE, values=(0.5,))
    assert main(["export", "--study", "bare", "--storage", url, "--best", "-o", str(tmp_path / "b")]) == 2
    assert "has no nas configuration" in capsys.readouterr().err


@pytest.mark.parametrize("args, expected", [
    (["--target-latency", "2ms", "--profile", "none"], "--profile none: this search prices latency"),
    (["--target-mem", "40KB", "--profile", "{dir}/missing.json"], "no device profile at {dir}/missing.json"),
])
def test_search_profile_option_refuses_in_one_line(tmp_path, capsys, args, expected):
    """The profile is loaded once, at the command's edge: a bad --profile stops before any work."""
    storage = f"journal:{tmp_path / 's.journal'}"
    args = [a.format(dir=tmp_path) for a in args]
    assert main(["search", *args, "--study", "s", "--storage", storage, "--dataset", "digits", "--trials", "1",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert expected.format(dir=tmp_path) in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "s.journal").exists()


def test_report_says_when_its_profile_is_not_the_one_that_priced_the_study(tmp_path, monkeypatch, capsys):
    """Profiles here are synthetic (every coefficient one value per feature unit), as in test_report."""
    from nas.cost import latency
    from nas.search.records import write_profile

    def synthetic(name, coef):
        p = latency.Profile(coefs={t: tuple(coef for _ in f) for t, f in latency.TERMS.items()},
                            machine={"threads": 1, "host": "test"})
        return latency.load_profile(latency.save_profile(p, tmp_path / name))

    priced, other = synthetic("priced.json", 0.01), synthetic("other.json", 0.02)
    study, url, _, _ = _old_study(tmp_path)
    write_profile(study, ProfileStamp.of(priced))
    out = str(tmp_path / "r.html")
    assert main(["report", "--study", "old", "--storage", url, "-o", out, "--json", "--profile", priced.path]) == 0
    assert not [n for n in json.loads(capsys.readouterr().out)["notes"] if "priced" in n]
    assert main(["report", "--study", "old", "--storage", url, "-o", out, "--json", "--profile", other.path]) == 0
    notes = [n for n in json.loads(capsys.readouterr().out)["notes"] if "priced" in n]
    assert notes == [f"the search priced latency with device profile priced.json ({latency.profile_digest(priced)}); "
                     f"figures predicted here use device profile other.json ({latency.profile_digest(other)})"]
    assert "id='profile-note'" in (tmp_path / "r.html").read_text()
