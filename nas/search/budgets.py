"""Budgets, each named by the cost field it limits, and the one place that turns costs into
Optuna constraint values.

Each budget gives one constraint value  (cost - budget) / budget : feasible means every
value <= 0 (Optuna's convention), and the value says by what fraction a candidate is over.

`flash_bytes` and `sram_bytes` are the C package's figures on a Cortex-M4 (`nas.cost.mcu`,
the definitions `nas infer --c --mcu` measures from the ELF). An architecture the C export
refuses has none (its cost is None): under those budgets its constraint value is the number
of refused ops (>= 1, infeasible; fewer is closer, which is what the samplers read).
"""

from dataclasses import asdict, dataclass, fields

from nas.units import format_bytes, format_count

# cost field -> (command-line option that sets it, printer); the order is the constraints' order
LIMITS = {
    "weight_bytes": ("--target-mem", format_bytes),
    "peak_act_bytes": ("--target-act-mem", format_bytes),
    "macs": ("--target-macs", format_count),
    "latency_ms": ("--target-latency", lambda v: f"{v:.3g} ms"),
    "flash_bytes": ("--target-flash", format_bytes),
    "sram_bytes": ("--target-sram", format_bytes),
}
MCU_FIELDS = ("flash_bytes", "sram_bytes")  # priced by nas.cost.mcu (the C package on a Cortex-M4)
# names the budgets had in studies written before they were keyed by cost field
LEGACY_NAMES = {"mem": "weight_bytes", "act_mem": "peak_act_bytes"}


@dataclass(frozen=True)
class Budgets:
    """Upper limits on a candidate's costs; None: no limit on that cost."""

    weight_bytes: int | None = None
    peak_act_bytes: int | None = None
    macs: int | None = None
    latency_ms: float | None = None
    flash_bytes: int | None = None
    sram_bytes: int | None = None

    @property
    def needs_mcu(self) -> bool:
        """Does a budget limit the C package's flash or SRAM (`nas.cost.mcu` prices them)?"""
        return any(getattr(self, f) is not None for f in MCU_FIELDS)

    def active(self) -> list[tuple[str, float]]:
        """(cost field, limit) for every budget that is set, in a fixed order."""
        return [(f, getattr(self, f)) for f in LIMITS if getattr(self, f) is not None]

    def constraint_values(self, costs: dict) -> list[float]:
        """(cost - budget) / budget per active budget; <= 0 everywhere means feasible. A cost of
        None under an MCU budget (the C export refuses the architecture) gives the number of
        refused ops, `costs["c_refused"]` (at least 1)."""
        out = []
        for f, limit in self.active():
            if f in MCU_FIELDS and costs.get(f) is None:
                out.append(float(max(1, costs.get("c_refused") or 1)))
            else:
                out.append((float(costs[f]) - limit) / limit)
        return out

    def describe(self) -> str:
        return ", ".join(f"{f} <= {LIMITS[f][1](limit)}" for f, limit in self.active()) or "no budget"

    def to_dict(self) -> dict:
        """Every budget by its cost field; the MCU budgets only when set, so a study without them
        records its identity exactly as studies did before they existed."""
        return {k: v for k, v in asdict(self).items() if v is not None or k not in MCU_FIELDS}

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
