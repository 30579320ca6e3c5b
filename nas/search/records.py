"""What a study records, typed: the one place that reads and writes its Optuna attributes.

A `nas search` study keeps its state in Optuna user attributes (JSON values). This module
names every key and its type once; every other module reads a study through
`StudyRecord.of(study)` / `TrialRecord.of(trial)` and writes through `write_trial`,
`write_identity`, `write_profile` and `write_final`.

The keys on disk are the ones `nas search` has always written, so older studies load as
they are. Study attributes:

- ``identity``: what ties the study to its options (`Identity`: space, dataset, budgets,
  objectives); a resume with other values is refused.
- ``config``: the whole `SearchConfig` (`SearchConfig.to_dict`), for `nas export` and the
  final retraining.
- ``device_profile``: the latency profile that priced the trials (`ProfileStamp`: digest,
  name, path; digest None = priced without a profile). Absent in studies written before it
  was recorded; a resume then records the profile it runs with.
- ``final:<n>``: the final retraining of trial n (`FinalRecord`; finished trials are
  immutable in Optuna, so it is a study attribute).

Trial attributes: the fields of `TrialRecord` below, under their own names.

Budgets inside ``identity`` and ``config`` were once keyed ``mem`` / ``act_mem``;
`Budgets.from_dict` reads both spellings, new studies are written with the cost fields'
names (``weight_bytes``, ``peak_act_bytes``).

No torch here: the report and the dashboard read studies and start fast.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.errors import UsageError
from nas.search.budgets import Budgets, feasible
from nas.search.config import SearchConfig

IDENTITY, CONFIG, PROFILE, FINAL_PREFIX = "identity", "config", "device_profile", "final:"


# --- trials ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrialRecord:
    """One trial as the search recorded it (state and values from Optuna, the rest from its
    user attributes; a field the trial never got is None, `trained` False)."""

    number: int
    state: TrialState
    values: tuple[float, ...] | None
    # attributes, written by `nas.search.objective` in this order as the trial progresses
    worker: str | None = None  # host:pid of the worker process (`nas.search.storage.worker_id`)
    retry_of: int | None = None  # re-enqueued after this trial's worker died
    arch: str | None = None  # the arch string: the study's record of the candidate
    scaling: dict | None = None  # compound scaling (alpha, beta, gamma, phi)
    costs: dict | None = None  # analytic costs (vocabulary names) + predicted latency_ms or None
    constraints: list[float] | None = None  # (cost - budget) / budget per active budget
    feasible: bool | None = None
    trained: bool = False  # trained (or took the result of an identical trained trial)
    duplicate_of: int | None = None  # the trial whose architecture (and result) this one repeats
    proxy: float | None = None  # zero-cost proxy score
    accuracy: float | None = None  # validation accuracy, also the last one before pruning
    train: dict | None = None  # the trainer's record (seed metrics)

    @classmethod
    def of(cls, t: FrozenTrial) -> TrialRecord:
        attrs = t.user_attrs
        kwargs = {name: attrs[name] for name in _TRIAL_ATTRS if name in attrs}
        kwargs["trained"] = bool(attrs.get("trained", False))
        return cls(number=t.number, state=t.state, values=tuple(t.values) if t.values else None, **kwargs)

    @property
    def within_budgets(self) -> bool:
        """Every recorded constraint value <= 0 (no record: not feasible)."""
        return self.constraints is not None and feasible(self.constraints)

    @property
    def trained_complete(self) -> bool:
        """COMPLETE and trained: the trial has a search accuracy of its own (or its original's)."""
        return self.state == TrialState.COMPLETE and self.trained

    def cost(self, name: str, default=None):
        """One cost field (`weight_bytes`, `latency_ms`, ...), `default` when not recorded."""
        return default if self.costs is None else self.costs.get(name, default)


_TRIAL_ATTRS = tuple(f.name for f in fields(TrialRecord) if f.name not in ("number", "state", "values"))


def trial_attrs(**values) -> dict:
    """User attributes for `values` (TrialRecord field names), checked: what `enqueue_trial`
    and `create_trial` take."""
    unknown = sorted(set(values) - set(_TRIAL_ATTRS))
    if unknown:
        raise TypeError(f"trial attributes {unknown}: not TrialRecord fields; expected some of {list(_TRIAL_ATTRS)}")
    return {k: (list(v) if k == "constraints" else v) for k, v in values.items()}


# Costs also stored one number per attribute, under `cost.<name>`: optuna-dashboard shows a
# nested dict as one JSON string, which it can neither sort nor plot. Read back through `costs`.
DASHBOARD_COSTS = ("weight_bytes", "peak_act_bytes", "macs", "params", "latency_ms")


def write_trial(trial: optuna.Trial, **values) -> None:
    """Record `values` (TrialRecord field names) on a running trial."""
    for key, value in trial_attrs(**values).items():
        trial.set_user_attr(key, value)
        if key == "costs":
            for name in DASHBOARD_COSTS:
                if isinstance(value.get(name), (int, float)):
                    trial.set_user_attr(f"cost.{name}", value[name])


def write_constraints(trial: optuna.Trial, budgets: Budgets, constraints: list[float]) -> None:
    """The constraint values where Optuna's own tools read them. The samplers read Optuna 5's
    per-name system attributes (`trial.set_constraint`); optuna-dashboard 0.21 reads only the
    older list under the system attribute ``constraints`` and shows ``[]`` otherwise. Both
    formats at once would give the samplers every constraint twice, so the list alone is
    written: Optuna reads it as constraints ``0, 1, ...`` in `budgets.active()`'s order."""
    trial.storage.set_trial_system_attr(trial._trial_id, "constraints", [float(v) for v in constraints])


# --- the study ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Identity:
    """What a study is tied to: a resume with other values is refused."""

    space: str | None = None
    dataset: str | None = None
    budgets: Budgets = field(default_factory=Budgets)
    objectives: str | None = None
    fidelity: str = "subset"  # what the trials' scores are (`--fidelity`); studies from before it: subset

    @classmethod
    def of_config(cls, config: SearchConfig) -> Identity:
        return cls(space=config.space, dataset=config.dataset, budgets=config.budgets, objectives=config.objectives,
                   fidelity=config.fidelity)

    def to_attr(self) -> dict:
        return {"space": self.space, "dataset": self.dataset, "budgets": self.budgets.to_dict(),
                "objectives": self.objectives, "fidelity": self.fidelity}

    @classmethod
    def from_attr(cls, d: dict, where: str) -> Identity:
        try:
            budgets = Budgets.from_dict(d.get("budgets"))
        except (ValueError, TypeError, AttributeError) as e:
            raise UsageError(f"{where}: identity budgets {d.get('budgets')!r}: {e}") from None
        return cls(space=d.get("space"), dataset=d.get("dataset"), budgets=budgets, objectives=d.get("objectives"),
                   fidelity=d.get("fidelity") or "subset")


@dataclass(frozen=True)
class ProfileStamp:
    """Which device profile priced a study's latencies: `digest` (`nas.cost.latency.
    profile_digest`), None when it was priced without one; `name` / `path` say where it was."""

    digest: str | None
    name: str | None = None
    path: str | None = None

    @classmethod
    def of(cls, profile) -> ProfileStamp:
        """The stamp of a `nas.cost.latency.Profile`, or of no profile (None)."""
        if profile is None:
            return cls(digest=None)
        from nas.cost.latency import profile_digest
        return cls(digest=profile_digest(profile), name=Path(profile.path).name if profile.path else None,
                   path=profile.path)

    def describe(self) -> str:
        return "no device profile" if self.digest is None else f"device profile {self.name} ({self.digest})"


@dataclass(frozen=True)
class FinalRecord:
    """The final retraining of one trial (`nas.search.final`). Fields a record written by an
    older version lacks are None."""

    trial: int
    arch: str | None = None
    search_val_accuracy: float | None = None
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    weights: str | None = None  # the safetensors file of the retrained weights
    latency_ms: float | None = None  # predicted
    latency_measured_ms: float | None = None  # batch 1, median, packed kernels where they apply
    epochs: int | None = None
    subset: int | None = None
    batch_size: int | None = None
    seed: int | None = None
    train: dict | None = None
    wall_s: float | None = None
    costs: dict | None = None
    # "subset": retrained from scratch after the search; "final": the candidate's own run of the
    # final recipe (`--fidelity final`), not trained again; None in records older than the option
    fidelity: str | None = None

    @classmethod
    def from_attr(cls, d: dict) -> FinalRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)

    def rank_key(self):
        """Best validation accuracy first, then fewer weight_bytes, then the trial number."""
        val = -self.val_accuracy if self.val_accuracy is not None else math.inf
        size = (self.costs or {}).get("weight_bytes", math.inf)
        return (val, size, self.trial)


@dataclass(frozen=True)
class StudyRecord:
    """A study's own attributes, typed. `identity` / `config` are None in a study that
    `nas search` did not make; `profile` is None where none was recorded."""

    name: str
    identity: Identity | None
    config: dict | None
    profile: ProfileStamp | None
    finals: dict[int, FinalRecord]

    @classmethod
    def of(cls, study: optuna.Study) -> StudyRecord:
        attrs = study.user_attrs
        where = f"--study {study.study_name!r}"
        identity = attrs.get(IDENTITY)
        stamp = attrs.get(PROFILE)
        finals = {}
        for key, value in attrs.items():
            if key.startswith(FINAL_PREFIX) and isinstance(value, dict) and "trial" in value:
                record = FinalRecord.from_attr(value)
                finals[record.trial] = record
        return cls(name=study.study_name,
                   identity=Identity.from_attr(identity, where) if isinstance(identity, dict) else None,
                   config=attrs.get(CONFIG) if isinstance(attrs.get(CONFIG), dict) else None,
                   profile=ProfileStamp(**{k: stamp.get(k) for k in ("digest", "name", "path")})
                   if isinstance(stamp, dict) else None,
                   finals=finals)

    @property
    def budgets(self) -> Budgets:
        return self.identity.budgets if self.identity is not None else Budgets()

    def search_config(self) -> tuple[SearchConfig, list[str]]:
        """The study's `SearchConfig`, rebuilt from its ``config`` attribute, and the keys this
        version of nas does not know (ignored). UsageError for a study `nas search` did not make."""
        if self.config is None or self.identity is None:
            raise UsageError(f"--study {self.name!r}: has no nas configuration; expected a study made by `nas search`")
        known = {f.name for f in fields(SearchConfig)}
        dropped = sorted(set(self.config) - known)
        kwargs = {k: v for k, v in self.config.items() if k in known and k != "budgets"}
        try:
            budgets = Budgets.from_dict(self.config.get("budgets"))
        except (ValueError, TypeError, AttributeError) as e:
            raise UsageError(f"--study {self.name!r}: config budgets {self.config.get('budgets')!r}: {e}") from None
        return SearchConfig(budgets=budgets, **kwargs), dropped

    def final(self, trial_number: int) -> FinalRecord | None:
        return self.finals.get(trial_number)

    def finals_ranked(self) -> list[FinalRecord]:
        """Final records, the chosen one (best final validation accuracy) first."""
        return sorted(self.finals.values(), key=FinalRecord.rank_key)


def write_identity(study: optuna.Study, config: SearchConfig) -> None:
    """Tie a new study to `config` (identity, config, the metric names optuna-dashboard shows)."""
    study.set_user_attr(IDENTITY, Identity.of_config(config).to_attr())
    study.set_user_attr(CONFIG, config.to_dict())
    study.set_metric_names(["val accuracy", *config.objective_names[1:]])


def write_profile(study: optuna.Study, stamp: ProfileStamp) -> None:
    study.set_user_attr(PROFILE, {"digest": stamp.digest, "name": stamp.name, "path": stamp.path})


def write_final(study: optuna.Study, record: FinalRecord) -> None:
    study.set_user_attr(f"{FINAL_PREFIX}{record.trial}", record.to_dict())
    note_final_models(study)


def note_final_models(study: optuna.Study) -> None:
    """Mark the final model where optuna-dashboard shows it.

    The dashboard's "best trial" is the best *search* score; the model `nas export --best`
    ships is the final retraining's choice (`finals_ranked()[0]`), and finished trials cannot
    take new attributes. optuna-dashboard's notes (Markdown, kept in the study's system
    attributes) can be written for finished trials too: the study page names the final model,
    and every retrained trial's page says what its final retraining gave and whether it won."""
    from optuna.trial import Trial
    from optuna_dashboard import save_note

    ranked = StudyRecord.of(study).finals_ranked()
    if not ranked:
        return
    won = ranked[0]
    ids = {t.number: t._trial_id for t in study.get_trials(deepcopy=False)}

    def line(r: FinalRecord) -> str:
        test = "-" if r.test_accuracy is None else f"{r.test_accuracy:.4f}"
        val = "-" if r.val_accuracy is None else f"{r.val_accuracy:.4f}"
        return (f"final retraining ({r.epochs} epochs on {r.subset or 'all'} images): test accuracy **{test}**, "
                f"validation {val}, weight_bytes {r.costs.get('weight_bytes', '-')}")

    save_note(study, f"## Final model: trial {won.trial}\n\nWhat `nas export --study {study.study_name} --best` "
                     f"ships. Its {line(won)}.\n\nThe dashboard's *best trial* is the best search score "
                     f"(short training); the final model is the best final validation accuracy among the "
                     f"{len(ranked)} retrained trial(s): {', '.join(str(r.trial) for r in ranked)}.\n")
    for r in ranked:
        if r.trial not in ids:
            continue
        verdict = "**the final model** (what `nas export --best` ships)" if r is won else \
            f"retrained, not chosen: trial {won.trial} has the better final validation accuracy"
        save_note(Trial(study, ids[r.trial]), f"### Trial {r.trial}: {verdict}\n\n{line(r)}.\n")
