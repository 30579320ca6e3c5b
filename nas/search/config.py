"""Search configuration: command-line options and study config files hold the same keys.

A study config (``studies/<name>.yaml``) is a mapping of option names (with ``-`` or
``_``) to values, e.g.::

    study: fm-100k
    space: search_spaces/mcu.yaml
    target-mem: 100KB
    budget: 30m

Options given on the command line override the file. Sizes and times are parsed once
(`nas.units`) and echoed back normalised.
"""

import math
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import yaml

from nas import limits
from nas.errors import UsageError
from nas.search.budgets import Budgets
from nas.units import parse_bytes, parse_count, parse_seconds

SAMPLERS = ("tpe", "nsga2", "random")
OBJECTIVES = ("accuracy", "accuracy,weight_bytes", "accuracy,latency_ms", "accuracy,macs")
PROXIES = ("naswot", "synflow", "none")
PRUNERS = ("sh", "none")
# What a candidate's score is measured on (docs/training.md, "Fidelity"):
# subset: a short training of its own (`subset` images x `epochs`), then the best few are
#   retrained from scratch on the final recipe (`nas.search.final`);
# final: the final recipe itself, scored at rungs that are fractions of it; a candidate that
#   survives every rung has run the whole final recipe, and its weights are the result.
FIDELITIES = ("subset", "final")
FINAL_LADDER_FACTOR = 3  # final fidelity: a third goes on at each rung, rungs a factor 3 apart
# final fidelity: rungs scored on a moving average of the weights (the trainer's `rung_ema`), which ranks better
# than one step's weights mid-way through the recipe's cosine schedule (docs/training.md, "Fidelity")
FINAL_RUNG_EMA = True

# The sizes and epochs a search derives from its dataset when none is given (`resolve_sizes`;
# the rules and the figures behind them: docs/training.md). Caps are in images, so the cost
# of one candidate and of one finalist does not grow with the dataset; a small dataset gets
# its whole split, and more epochs so that it sees as many images (optimizer steps).
SIZED_FROM_DATA = ("subset", "epochs", "val_subset", "final_subset", "final_epochs")
CANDIDATE_SUBSET_CAP = 4000  # distinct training images per candidate (7.4% of Fashion-MNIST's 54,000)
CANDIDATE_IMAGES = 12_000  # images a candidate sees when it runs all its epochs (~94 steps at batch 128)
MIN_CANDIDATE_EPOCHS = 2  # successive halving needs at least two rungs
VAL_SUBSET_CAP = 10_000  # validation images per candidate score: all of Fashion-MNIST's 6,000 (docs/training.md)
FINAL_SUBSET_CAP = 20_000  # training images of the final recipe (the full 54,000 costs 2.7x; measured)
FINAL_EPOCHS = 4
FINAL_MIN_IMAGES = 12_000  # images the final recipe sees at least (a small dataset gets more epochs)


@dataclass
class SearchConfig:
    study: str = "nas"
    storage: str | None = None  # None: journal file studies/<study>.journal
    space: str = ""  # "": search_spaces/default.yaml here, else the one shipped beside the package
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    budgets: Budgets = field(default_factory=Budgets)
    objectives: str = "accuracy"
    sampler: str = "tpe"
    trials: int | None = None  # trained candidates to reach in the study (infeasible ones don't count)
    max_trials: int | None = None  # trials started in the study, whatever their outcome: a hard bound
    budget_s: float | None = None  # wall-clock budget of this run
    workers: int = 1
    seed: int = 0
    # Sizes and epochs: None derives them from the dataset before any work (`resolve_sizes`,
    # docs/training.md); a value larger than the split is capped to it, with a note.
    subset: int | None = None  # training images per candidate (stratified, nested, fixed per seed)
    epochs: int | None = None  # epochs per candidate; successive halving stops the weaker half at its rungs
    val_subset: int | None = None  # validation images scored after each candidate epoch
    # Zero-cost proxy gate before training. Off by default: `nas bench proxies` measured
    # Spearman -0.21..+0.27 for NASWOT and synflow vs trained accuracy on this space (docs/results.md).
    proxy: str = "none"
    proxy_keep: float = 0.5  # train a candidate only if its proxy beats this quantile of earlier ones
    pruner: str = "sh"  # successive halving over epochs (single objective), or none
    fidelity: str = "subset"  # FIDELITIES: a candidate's own short training, or rungs of the final recipe
    final_top: int = 3  # best distinct feasible architectures retrained on the final recipe; best val wins
    final_epochs: int | None = None
    final_subset: int | None = None  # training images of the final recipe
    batch_size: int = 128  # candidates' training batch
    # the final recipe's batch: the final rung and `nas bench search`'s hand nets train alike
    # (`nas.search.final.final_train`); 64 gives twice the optimizer steps of 128
    final_batch_size: int = 64
    device: str = "auto"  # where training runs: auto (cuda if available), cpu, cuda, cuda:N (`nas.measure.device`)
    amp: bool = False  # bf16 autocast when training on CUDA
    # Bi-Real's two-stage recipe in the final retraining: the first F of `final_epochs` train the
    # 1-bit layers real-valued (`nas.train.methods`); 0: one stage, as always
    final_two_stage: float = 0.0

    def __post_init__(self):
        self.space = self.space or default_space()
        if self.sampler not in SAMPLERS:
            raise UsageError(f"--sampler {self.sampler!r}: unknown sampler; expected one of {list(SAMPLERS)}")
        if self.objectives not in OBJECTIVES:
            raise UsageError(f"--objectives {self.objectives!r}: expected one of {list(OBJECTIVES)}")
        if self.pruner not in PRUNERS:
            raise UsageError(f"--pruner {self.pruner!r}: expected one of {list(PRUNERS)}")
        if self.fidelity not in FIDELITIES:
            raise UsageError(f"--fidelity {self.fidelity!r}: expected one of {list(FIDELITIES)}")
        if self.fidelity == "final" and self.final_two_stage:
            raise UsageError(f"--final-two-stage {self.final_two_stage}: not available with --fidelity final "
                             f"(its rungs are fractions of a one-stage run); expected --fidelity subset")
        if self.proxy not in PROXIES:
            raise UsageError(f"--proxy {self.proxy!r}: expected one of {list(PROXIES)}")
        for name in ("workers", "epochs", "subset", "final_top", "final_epochs", "batch_size", "val_subset",
                     "final_subset", "final_batch_size"):
            value = getattr(self, name)
            if name in SIZED_FROM_DATA and value is None:
                continue  # None: derived from the dataset (`resolve_sizes`)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"--{name.replace('_', '-')} {value!r}: expected a whole number >= 1")
        if isinstance(self.final_two_stage, bool) or not 0.0 <= self.final_two_stage < 1.0:
            raise UsageError(f"--final-two-stage {self.final_two_stage!r}: expected a fraction of the final epochs, "
                             f"0 <= F < 1 (0: one stage)")
        for name in ("trials", "max_trials"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UsageError(f"--{name.replace('_', '-')} {value!r}: expected a whole number >= 1")
        if not isinstance(self.seed, int) or not 0 <= self.seed <= limits.MAX_SEED:
            raise UsageError(f"--seed {self.seed!r}: expected a whole number from 0 to {limits.MAX_SEED} "
                             f"(docs/limits.md)")
        if not isinstance(self.study, str) or not limits.STUDY_NAME.fullmatch(self.study):
            raise UsageError(f"--study {str(self.study)[:100]!r}: expected a plain name of at most "
                             f"{limits.MAX_STUDY_NAME} characters (letters, digits, '-', '_', '.', not first)")

    @property
    def objective_names(self) -> tuple[str, ...]:
        return tuple(self.objectives.split(","))

    @property
    def needs_latency(self) -> bool:
        """Does this search price latency (a budget or an objective on it)? Then it needs a profile."""
        return self.budgets.latency_ms is not None or "latency_ms" in self.objective_names

    def to_dict(self) -> dict:
        d = asdict(self)
        d["budgets"] = self.budgets.to_dict()
        return d


def default_space() -> str:
    """search_spaces/default.yaml in the working folder if there is one, else the repo's."""
    local = Path("search_spaces/default.yaml")
    if local.is_file():
        return str(local)
    return str(Path(__file__).resolve().parents[2] / "search_spaces" / "default.yaml")


# option name -> (config field, parser); budgets are nested
_PARSERS = {
    "study": ("study", str), "storage": ("storage", str), "space": ("space", str),
    "dataset": ("dataset", str), "data_dir": ("data_dir", str), "objectives": ("objectives", str),
    "sampler": ("sampler", str), "trials": ("trials", int), "max_trials": ("max_trials", int), "workers": ("workers", int), "seed": ("seed", int),
    "subset": ("subset", int), "epochs": ("epochs", int), "proxy": ("proxy", str), "pruner": ("pruner", str),
    "fidelity": ("fidelity", str),
    "final_top": ("final_top", int), "val_subset": ("val_subset", int), "final_epochs": ("final_epochs", int), "final_subset": ("final_subset", int),
    "batch_size": ("batch_size", int), "final_batch_size": ("final_batch_size", int), "device": ("device", str),
    "amp": ("amp", lambda v, where: _boolean(v, where)),
    "final_two_stage": ("final_two_stage", lambda v, where: _fraction(v, where)),
    "budget": ("budget_s", lambda v, where: parse_seconds(str(v), where)),
    "target_mem": ("weight_bytes", lambda v, where: parse_bytes(str(v), where)),
    "target_act_mem": ("peak_act_bytes", lambda v, where: parse_bytes(str(v), where)),
    "target_macs": ("macs", lambda v, where: parse_count(str(v), where)),
    "target_latency": ("latency_ms", lambda v, where: parse_seconds(str(v), where) * 1e3),
    "target_flash": ("flash_bytes", lambda v, where: parse_bytes(str(v), where)),
    "target_sram": ("sram_bytes", lambda v, where: parse_bytes(str(v), where)),
}
OPTION_NAMES = tuple(_PARSERS)  # what the command line and a study config file may set
_BUDGET_FIELDS = {f.name for f in fields(Budgets)}


def _boolean(value, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "yes", "1", "on"):
        return True
    if str(value).lower() in ("false", "no", "0", "off"):
        return False
    raise UsageError(f"{where} {str(value)[:100]!r}: expected true or false")


def _fraction(value, where: str) -> float:
    try:
        f = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        f = None
    if f is None or not 0.0 <= f < 1.0:
        raise UsageError(f"{where} {str(value)[:100]}: expected a fraction, 0 <= F < 1")
    return f


def read_config_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--config {path!r}: no such file; expected a YAML study config")
    try:
        data = limits.load_yaml(p, "--config")  # size, aliases, depth, duplicate keys
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: malformed YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of option names to values, got {type(data).__name__}")
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in _PARSERS:
            raise UsageError(f"{path}: unknown option {key!r}; expected one of "
                             f"{sorted(k.replace('_', '-') for k in _PARSERS)}")
        out[name] = value
    return out


def build_config(options: dict, file_options: dict | None = None, where_file: str = "") -> SearchConfig:
    """Merge file options and command-line options (CLI wins) into a validated SearchConfig."""
    merged = {**(file_options or {}), **{k: v for k, v in options.items() if v is not None}}
    kwargs, budgets = {}, {}
    for name, value in merged.items():
        target, parse = _PARSERS[name]
        where = f"--{name.replace('_', '-')}" if name in options and options[name] is not None else \
            f"{where_file}: {name.replace('_', '-')}"
        if parse is int:
            if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.isascii() and value.isdigit())):
                raise UsageError(f"{where} {value!r}: expected a whole number")
            value = int(value)
        elif parse is str:
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise UsageError(f"{where} {str(value)[:100]!r}: expected a single value, got {type(value).__name__}")
            value = str(value)
        else:
            value = parse(value, where)
        (budgets if target in _BUDGET_FIELDS else kwargs)[target] = value
    return SearchConfig(budgets=Budgets(**budgets), **kwargs)


@dataclass(frozen=True)
class Sizes:
    """The search's data sizes and epochs, every one a number (after `resolve_sizes`)."""

    subset: int
    epochs: int
    val_subset: int
    final_subset: int
    final_epochs: int


def default_sizes(n_train: int, n_val: int) -> Sizes:
    """What a search uses on a dataset of `n_train` training and `n_val` validation images
    when no size is given (docs/training.md states the rules and the figures)."""
    subset = min(n_train, CANDIDATE_SUBSET_CAP)
    final_subset = min(n_train, FINAL_SUBSET_CAP)
    return Sizes(subset=subset, epochs=candidate_epochs(subset), val_subset=min(n_val, VAL_SUBSET_CAP),
                 final_subset=final_subset, final_epochs=final_epochs(final_subset))


def candidate_epochs(subset: int) -> int:
    """Epochs for a candidate on `subset` images: about `CANDIDATE_IMAGES` images seen, at least
    `MIN_CANDIDATE_EPOCHS` (Fashion-MNIST's 4,000: 3 epochs; digits' 1,294: 9)."""
    return max(MIN_CANDIDATE_EPOCHS, round(CANDIDATE_IMAGES / subset))


def final_epochs(final_subset: int) -> int:
    """Epochs of the final recipe on `final_subset` images: `FINAL_EPOCHS`, more when that would
    see fewer than `FINAL_MIN_IMAGES` images (digits' 1,294: 10 epochs)."""
    return max(FINAL_EPOCHS, math.ceil(FINAL_MIN_IMAGES / final_subset))


def first_rung(epochs: int) -> int:
    """The epoch of successive halving's first rung: a third of the candidate's images (at
    least one epoch); later rungs double it. 3 epochs: rungs after 1 and 2; 9: after 3 and 6."""
    return max(1, epochs // 3)


def rung_steps(config: SearchConfig, total_steps: int) -> list[int]:
    """Final fidelity: the optimizer steps of the final recipe (`total_steps` in all) after which
    a candidate is scored and successive halving keeps a third. The ladder is counted down from
    the recipe, which is the top rung and never stops a candidate: rungs at a third, a ninth, ...
    of it, as many as put the first rung nearest (in ratio) to what a subset-fidelity candidate
    costs (`subset` x `epochs` images at `final_batch_size`); at least one. Optuna's pruner gets
    the same ladder (`min_resource` = the first rung, `reduction_factor` = the factor). A recipe
    under `FINAL_LADDER_FACTOR` steps has no rung below the top."""
    if total_steps < FINAL_LADDER_FACTOR:
        return []
    candidate = max(1, math.ceil(config.subset * config.epochs / config.final_batch_size))
    below_top = max(1, round(math.log(total_steps / candidate, FINAL_LADDER_FACTOR)))
    first = math.ceil(total_steps / FINAL_LADDER_FACTOR ** below_top)
    rungs = (first * FINAL_LADDER_FACTOR ** j for j in range(below_top))
    return [r for r in rungs if r < total_steps]


def resolve_sizes(config: SearchConfig, n_train: int, n_val: int, num_classes: int, dataset: str,
                  notes=None) -> SearchConfig:
    """`config` with every size and epoch count a number: the ones not given derived from the
    dataset (`default_sizes`), the given ones checked against its splits before any work. A
    subset larger than its split is capped to the split, with one note each on stderr (or
    appended to `notes`); a candidate subset below one image per class is a UsageError."""
    derived = default_sizes(n_train, n_val)
    splits = {"subset": (n_train, "training"), "final_subset": (n_train, "training"),
              "val_subset": (n_val, "validation")}
    values = {}
    for name in SIZED_FROM_DATA:
        value = getattr(config, name)
        if value is not None and name in splits and value > splits[name][0]:
            split, which = splits[name]
            _note(f"--{name.replace('_', '-')} {value}: capped to {split}, the {which} split of {dataset}", notes)
            value = split
        values[name] = value
    for name in ("subset", "final_subset"):
        if values[name] is not None and values[name] < num_classes:
            raise UsageError(f"--{name.replace('_', '-')} {values[name]}: expected at least {num_classes} "
                             f"(one image per class of {dataset}) and at most {n_train} (its training split)")
    if values["subset"] is None:
        values["subset"] = derived.subset
    if values["epochs"] is None:
        values["epochs"] = candidate_epochs(values["subset"])
    if values["val_subset"] is None:
        values["val_subset"] = derived.val_subset
    if values["final_subset"] is None:
        values["final_subset"] = derived.final_subset
    if values["final_epochs"] is None:
        values["final_epochs"] = final_epochs(values["final_subset"])
    if config.final_two_stage:  # both stages need an epoch: refused now, not after the search
        from nas.train.methods import stage_epochs

        stage_epochs(values["final_epochs"], config.final_two_stage, "--final-two-stage")
    return replace(config, **values)


def _note(message: str, notes) -> None:
    if notes is not None:
        notes.append(message)
    else:
        print(f"nas: note: {message}", file=sys.stderr, flush=True)
