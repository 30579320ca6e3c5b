"""Budgets and the one place that turns costs into Optuna constraint values.

Each budget gives one constraint value  (cost - budget) / budget : feasible means every
value <= 0 (Optuna's convention), and the value says by what fraction a candidate is over.
"""

from dataclasses import asdict, dataclass

from nas.units import format_bytes, format_count

# budget field -> (cost field it limits, printer)
_LIMITS = {
    "mem": ("weight_bytes", format_bytes),
    "act_mem": ("peak_act_bytes", format_bytes),
    "macs": ("macs", format_count),
    "latency_ms": ("latency_ms", lambda v: f"{v:.3g} ms"),
}


@dataclass(frozen=True)
class Budgets:
    mem: int | None = None  # weight_bytes
    act_mem: int | None = None  # peak_act_bytes
    macs: int | None = None
    latency_ms: float | None = None

    def active(self) -> list[tuple[str, str, float]]:
        """(budget name, cost field, limit) for every budget that is set, in a fixed order."""
        return [(name, field, getattr(self, name)) for name, (field, _) in _LIMITS.items()
                if getattr(self, name) is not None]

    def constraint_values(self, costs: dict) -> list[float]:
        """(cost - budget) / budget per active budget; <= 0 everywhere means feasible."""
        return [(float(costs[field]) - limit) / limit for _, field, limit in self.active()]

    def describe(self) -> str:
        parts = [f"{field} <= {_LIMITS[name][1](limit)}" for name, field, limit in self.active()]
        return ", ".join(parts) or "no budget"

    def to_dict(self) -> dict:
        return asdict(self)


def feasible(constraints) -> bool:
    return all(c <= 0 for c in constraints)
