"""`nas.search.results`: one tally of a study's trials for the search, the report and export."""

import subprocess
import sys

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from nas.search.results import best_feasible, result_trial, tally

DIST = {"x": FloatDistribution(0, 1)}


def _trial(state, value=None, **attrs):
    return create_trial(state=state, value=value if state == TrialState.COMPLETE else None,
                        params={"x": 0.5}, distributions=DIST, user_attrs=attrs)


def _costs(weight_bytes):
    return {"weight_bytes": weight_bytes}


def test_tally_counts_each_trial_once_and_duplicates_apart():
    trials = [
        _trial(TrialState.COMPLETE, 0.8, arch="a", trained=True, constraints=[-1.0], costs=_costs(100)),
        _trial(TrialState.COMPLETE, 0.8, arch="a", trained=True, constraints=[-1.0], costs=_costs(100),
               duplicate_of=0),
        _trial(TrialState.PRUNED, arch="b", duplicate_of=5),  # its original was still training
        _trial(TrialState.COMPLETE, 0.0, arch="c", trained=False, constraints=[3.0], costs=_costs(9)),
        _trial(TrialState.PRUNED, arch="d"),
        _trial(TrialState.FAIL, arch="e"),
        _trial(TrialState.RUNNING, arch="f"),
    ]
    t = tally(trials)
    assert (t.trials, t.trained, t.duplicates, t.infeasible, t.pruned, t.failed, t.running) == (7, 1, 2, 1, 1, 1, 1)
    assert t.describe().startswith("7 trials: 1 trained, 2 duplicate, 1 infeasible")


def test_best_feasible_ranks_accuracy_then_size_and_skips_infeasible():
    study = optuna.create_study(direction="maximize")
    for value, wb, constraints in ((0.7, 50, [-1.0]), (0.9, 300, [-1.0]), (0.9, 200, [-1.0]), (0.95, 10, [0.5])):
        study.add_trial(_trial(TrialState.COMPLETE, value, arch=f"a{wb}", trained=True,
                               constraints=constraints, costs=_costs(wb)))
    trials = study.get_trials()
    assert [t.number for t in best_feasible(trials)] == [2, 1, 0]
    assert result_trial(study, trials).number == 2  # no final retraining yet: the best of the search
    record = {"trial": 1, "val_accuracy": 0.91, "costs": _costs(300)}
    study.set_user_attr("final:1", record)
    study.set_user_attr("final:2", {**record, "trial": 2, "val_accuracy": 0.90, "costs": _costs(200)})
    assert result_trial(study, trials).number == 1  # the final retraining's validation accuracy decides


def test_results_module_does_not_import_torch():
    code = "import sys, nas.search.results, nas.report.study; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
