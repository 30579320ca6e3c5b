"""Budgets, each named by the cost field it limits, and the one place that turns costs into
Optuna constraint values.

Each budget gives one constraint value  (cost - budget) / budget : feasible means every
value <= 0 (Optuna's convention), and the value says by what fraction a candidate is over.
"""

from dataclasses import asdict, dataclass, fields

from nas.units import format_bytes, format_count

# cost field -> (command-line option that sets it, printer); the order is the constraints' order
LIMITS = {
    "weight_bytes": ("--target-mem", format_bytes),
    "peak_act_bytes": ("--target-act-mem", format_bytes),
    "macs": ("--target-macs", format_count),
    "latency_ms": ("--target-latency", lambda v: f"{v:.3g} ms"),
}
# names the budgets had in studies written before they were keyed by cost field
LEGACY_NAMES = {"mem": "weight_bytes", "act_mem": "peak_act_bytes"}


@dataclass(frozen=True)
class Budgets:
    """Upper limits on a candidate's costs; None: no limit on that cost."""

    weight_bytes: int | None = None
    peak_act_bytes: int | None = None
    macs: int | None = None
    latency_ms: float | None = None

    def active(self) -> list[tuple[str, float]]:
        """(cost field, limit) for every budget that is set, in a fixed order."""
        return [(f, getattr(self, f)) for f in LIMITS if getattr(self, f) is not None]

    def constraint_values(self, costs: dict) -> list[float]:
        """(cost - budget) / budget per active budget; <= 0 everywhere means feasible."""
        return [(float(costs[f]) - limit) / limit for f, limit in self.active()]

    def describe(self) -> str:
        return ", ".join(f"{f} <= {LIMITS[f][1](limit)}" for f, limit in self.active()) or "no budget"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Budgets":
        """Budgets from `to_dict`'s form, or from a study written before the rename
        (``mem``, ``act_mem``); unknown keys are a ValueError naming them."""
        known = {f.name for f in fields(cls)}
        out = {}
        for key, value in (d or {}).items():
            name = LEGACY_NAMES.get(key, key)
            if name not in known:
                raise ValueError(f"budget {key!r}: unknown; expected one of {sorted(known)}")
            out[name] = value
        return cls(**out)


def feasible(constraints) -> bool:
    return all(c <= 0 for c in constraints)
