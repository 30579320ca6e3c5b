"""Read what a study holds: its trials tallied by what became of them, the trained feasible
ones ranked, and the search's result.

One place for these, shared by `nas search` (progress bar, `--trials`, summary), `nas report`,
`nas dashboard` and `nas export`. No torch here: the report and the dashboard start fast.
"""

from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.search.records import FinalRecord, StudyRecord, TrialRecord


@dataclass(frozen=True)
class Tally:
    trials: int
    trained: int  # distinct candidates trained (COMPLETE); what `--trials` counts
    duplicates: int  # proposed an architecture trained (or in training) before: its result is reused
    infeasible: int  # COMPLETE, over a budget, never built nor trained
    pruned: int  # stopped early: zero-cost proxy or successive halving
    failed: int  # an error or a diverging (NaN) training
    running: int  # RUNNING or WAITING

    def to_dict(self) -> dict:
        return dict(vars(self))

    def describe(self) -> str:
        return (f"{self.trials} trials: {self.trained} trained, {self.duplicates} duplicate, {self.infeasible} "
                f"infeasible, {self.pruned} pruned, {self.failed} failed, {self.running} running")


def tally(trials: list[FrozenTrial]) -> Tally:
    n = dict.fromkeys(("trained", "duplicates", "infeasible", "pruned", "failed", "running"), 0)
    for r in map(TrialRecord.of, trials):
        if r.duplicate_of is not None:
            n["duplicates"] += 1
        elif r.state == TrialState.COMPLETE:
            n["trained" if r.trained else "infeasible"] += 1
        elif r.state == TrialState.PRUNED:
            n["pruned"] += 1
        elif r.state == TrialState.FAIL:
            n["failed"] += 1
        else:
            n["running"] += 1
    return Tally(trials=len(trials), **n)


def is_feasible(t: FrozenTrial) -> bool:
    return TrialRecord.of(t).within_budgets


def best_feasible(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trained, feasible, COMPLETE trials, best accuracy first (ties: smaller weight_bytes).
    A duplicate carries its original's result and ranks beside it."""
    ok = [(t, r) for t, r in zip(trials, map(TrialRecord.of, trials)) if r.trained_complete and r.within_budgets]
    return [t for t, _ in sorted(ok, key=lambda tr: (-tr[1].values[0], tr[1].costs["weight_bytes"], tr[1].number))]


def final_record(study: optuna.Study, trial_number: int) -> FinalRecord | None:
    """What the final retraining (`nas.search.final`) recorded for a trial, if it ran."""
    return StudyRecord.of(study).final(trial_number)


def by_final_val(records: list[FinalRecord]) -> list[FinalRecord]:
    """Final records, the chosen one first: best validation accuracy, then fewer weight_bytes."""
    return sorted(records, key=FinalRecord.rank_key)


def chosen(study: optuna.Study) -> FinalRecord | None:
    """The final record of the search's result: the best final validation accuracy."""
    ranked = StudyRecord.of(study).finals_ranked()
    return ranked[0] if ranked else None


def result_trial(study: optuna.Study, trials: list[FrozenTrial]) -> FrozenTrial | None:
    """The search's result: the final retraining's choice once it ran, else the best feasible trial."""
    ranked = best_feasible(trials)
    record = chosen(study)
    if record is not None:
        for t in trials:  # a final-fidelity search may have finished a candidate its deadline stopped
            if t.number == record.trial:
                return t
    return ranked[0] if ranked else None
