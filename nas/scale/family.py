"""Step 2 of compound scaling: a base network B0 and fixed (alpha, beta, gamma) -> the family B1..Bn.

For each budget, the member is the base scaled by `nas.space.scale_arch` at the largest
real-valued phi whose cost fits (`largest_phi`, bisection). The rounding rules are
`nas.space.scaling`'s, stated there once (make_divisible channels, ceil repeats, rounded
resolution), so a member's cost is a non-decreasing step function of phi and bisection
finds the top of the last step under the budget to within `PHI_TOLERANCE`.

Pure: costs come from `nas.cost` (analytic, no module built); latency_ms from an explicit
device profile (`nas.cost.latency`).

Single-dimension scaling (EfficientNet's Figure 3 comparison) is the same search along one
axis: width-only scales by (1, 2, 1), depth-only by (2, 1, 1), resolution-only by (1, 1, 2),
so a member's multiplier is 2^phi on that axis alone. Every multiplier is capped at
`max_multiplier`: resolution does not change weight_bytes, so a resolution-only member under a
weight budget would otherwise grow without end; a member at the cap says so (`capped`).
"""

import math
from dataclasses import dataclass, field

from nas.cost import arch_cost
from nas.cost import latency as latency_model
from nas.errors import UsageError
from nas.space import ArchSpec, Scaling, encode, scale_arch

BY = ("weight_bytes", "macs", "latency_ms")
PHI_TOLERANCE = 1e-4  # bisection stops when the bracket is this narrow
MAX_MULTIPLIER = 8.0  # default cap on each of alpha^phi, beta^phi, gamma^phi
SINGLE = {"width": (1.0, 2.0, 1.0), "depth": (2.0, 1.0, 1.0), "resolution": (1.0, 1.0, 2.0)}  # (alpha, beta, gamma)
FAMILIES = ("compound", *SINGLE)


@dataclass(frozen=True)
class Member:
    family: str  # compound | width | depth | resolution
    target: float  # the budget, in `by` units
    by: str
    scaling: Scaling  # alpha, beta, gamma and the phi found
    arch: ArchSpec
    costs: dict  # params, macs, weight_bytes, peak_act_bytes, mem_access, bops, latency_ms (None without a profile)
    capped: bool = False  # phi stopped at the multiplier cap, not at the budget
    extra: dict = field(default_factory=dict, compare=False)  # e.g. training results

    @property
    def cost(self) -> float:
        return self.costs[self.by]

    def to_dict(self) -> dict:
        s = self.scaling
        blocks = self.arch.blocks
        return {
            "family": self.family, "by": self.by, "target": self.target, "phi": round(s.phi, 6),
            "alpha": s.alpha, "beta": s.beta, "gamma": s.gamma,
            "depth_multiplier": s.depth, "width_multiplier": s.width, "resolution_multiplier": s.resolution,
            "resolution": self.arch.resolution, "stem_chs": self.arch.stem.out_chs,
            "channels": [b.out_chs for b in blocks], "repeats": [b.repeats for b in blocks],
            "head_chs": self.arch.head.out_chs, "capped": self.capped, "arch": encode(self.arch),
            **self.costs, **self.extra,
        }


class Coster:
    """cost(arch) for one `by` field; latency_ms needs a device profile."""

    def __init__(self, by: str, profile=None):
        if by not in BY:
            raise UsageError(f"--by {by!r}: expected one of {list(BY)}")
        if by == "latency_ms" and profile is None:
            raise UsageError(f"--by latency_ms: no device profile at {latency_model.default_profile_path()}; "
                             f"run `nas calibrate` first, or use --by weight_bytes or --by macs")
        self.by, self.profile = by, profile

    def costs(self, arch: ArchSpec) -> dict:
        c = arch_cost(arch)
        out = {"params": c.params, "macs": c.macs, "weight_bytes": c.weight_bytes,
               "peak_act_bytes": c.peak_act_bytes, "mem_access": c.mem_access, "bops": c.bops, "latency_ms": None}
        if self.profile is not None:
            out["latency_ms"] = latency_model.predict(arch, self.profile, c).total_ms
        return out

    def __call__(self, arch: ArchSpec) -> float:
        return self.costs(arch)[self.by]


def phi_cap(coefficients: tuple[float, float, float], max_multiplier: float) -> float:
    """The largest phi that keeps every coefficient^phi <= max_multiplier (inf if all are 1)."""
    caps = [math.log(max_multiplier) / math.log(c) for c in coefficients if c > 1.0]
    return min(caps) if caps else math.inf


def largest_phi(base: ArchSpec, coefficients: tuple[float, float, float], target: float, cost, divisor: int = 8,
                max_multiplier: float = MAX_MULTIPLIER) -> tuple[float, bool]:
    """(phi, capped): the largest phi in [0, cap] with cost(scaled base) <= target, by bisection.

    The base itself must fit (phi = 0). A phi whose member breaks the spec's limits
    (docs/limits.md: channels, repeats, resolution) counts as not fitting."""
    alpha, beta, gamma = coefficients

    def fits(phi: float) -> bool:
        try:
            arch = scale_arch(base, Scaling(alpha, beta, gamma, phi), divisor)
        except UsageError:  # over a magnitude limit: larger than any member we may build
            return False
        return cost(arch) <= target

    cap = phi_cap(coefficients, max_multiplier)
    if math.isinf(cap):
        return 0.0, True  # nothing to scale along
    if fits(cap):
        return cap, True
    lo, hi = 0.0, cap
    while hi - lo > PHI_TOLERANCE:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, False


def check_targets(targets: list[float], base_cost: float, by: str) -> None:
    """Every target must admit the base itself (phi = 0)."""
    for t in sorted(targets):
        if t < base_cost:
            raise UsageError(f"--targets: {_show(t, by)} is below the base's {by} {_show(base_cost, by)}; "
                             f"expected every target >= the base's cost")


def scale_family(base: ArchSpec, coefficients: tuple[float, float, float], targets: list[float], cost: Coster,
                 family: str = "compound", divisor: int = 8, max_multiplier: float = MAX_MULTIPLIER) -> list[Member]:
    """One member per target (ascending), each the base at the largest phi under it."""
    check_targets(targets, cost(base), cost.by)
    members = []
    for t in sorted(targets):
        phi, capped = largest_phi(base, coefficients, t, cost, divisor, max_multiplier)
        scaling = Scaling(*coefficients, phi=phi)
        arch = scale_arch(base, scaling, divisor)
        members.append(Member(family=family, target=t, by=cost.by, scaling=scaling, arch=arch,
                              costs=cost.costs(arch), capped=capped))
    return members


def comparison(base: ArchSpec, coefficients: tuple[float, float, float], targets: list[float], cost: Coster,
               divisor: int = 8, max_multiplier: float = MAX_MULTIPLIER) -> dict[str, list[Member]]:
    """The compound family and the width-, depth- and resolution-only families at the same budgets."""
    out = {"compound": scale_family(base, coefficients, targets, cost, "compound", divisor, max_multiplier)}
    for name, coeffs in SINGLE.items():
        out[name] = scale_family(base, coeffs, targets, cost, name, divisor, max_multiplier)
    return out


def _show(value: float, by: str) -> str:
    from nas.units import format_bytes, format_count

    if by == "weight_bytes":
        return f"{format_bytes(value)} ({int(value)} B)"
    if by == "macs":
        return f"{format_count(value)} MACs"
    return f"{value:.4g} ms"
