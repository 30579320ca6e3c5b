"""EfficientNet compound scaling (Tan & Le 2019; survey 000, ch. 3 sec. 2-6).

depth x alpha^phi, width x beta^phi, resolution x gamma^phi, with alpha * beta^2 * gamma^2 ~ 2
and alpha, beta, gamma >= 1, so that MACs grow by ~2^phi (EfficientNet: alpha=1.2, beta=1.1,
gamma=1.15, product 1.92). Two steps, as the seed: (1) find alpha, beta, gamma under the
constraint at phi = 1; (2) keep them fixed and grow phi (`nas.scale`).

The constraint (stated once, here): `meets_constraint` is
|alpha * beta^2 * gamma^2 / target - 1| <= tolerance (relative; DEFAULT_TOLERANCE = 5%).
Given alpha and beta, gamma is derived (`derived_gamma`, or the listed value nearest to it,
`constraint_gamma`); a pair whose best gamma misses the target is rejected analytically.

Rounding rules (stated once, here):
- channels: `make_divisible(c * beta^phi, divisor)` (timm's rule, `nas.space.spec`) - nearest multiple of the
  divisor (8 by default; a multiple of the block's groups too for grouped blocks), never
  below 90% of the request;
- repeats (and dense layers): ceil(r * alpha^phi), as timm does for depth;
- dense growth: max(1, round(growth * beta^phi));
- resolution: round(resolution * gamma^phi);
- per-layer bits (`BlockSpec.layer_w_bits` / `layer_a_bits`) when depth grows: block j of
  the scaled stage takes the bits of base block min(j, r - 1) (the added blocks repeat the
  last one); in a dense block, dense layer j those of base layer min(j, r - 1), the
  transition keeps its own.
"""

import math
from dataclasses import dataclass

from nas.errors import UsageError
from nas.space.spec import ArchSpec, BlockSpec, block_layers, make_divisible, replace

EFFICIENTNET = (1.2, 1.1, 1.15)  # alpha, beta, gamma found by grid search on B0
DEFAULT_TARGET = 2.0  # alpha * beta^2 * gamma^2: MACs double per unit of phi
DEFAULT_TOLERANCE = 0.05  # relative: EfficientNet's 1.92 is 4% under 2


def flops_factor(alpha: float, beta: float, gamma: float) -> float:
    """alpha * beta^2 * gamma^2: the MACs growth per unit of phi."""
    return alpha * beta * beta * gamma * gamma


def meets_constraint(alpha: float, beta: float, gamma: float, target: float = DEFAULT_TARGET,
                     tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """alpha, beta, gamma >= 1 and alpha * beta^2 * gamma^2 within `tolerance` (relative) of `target`."""
    return min(alpha, beta, gamma) >= 1.0 and abs(flops_factor(alpha, beta, gamma) / target - 1.0) <= tolerance + 1e-12


def derived_gamma(alpha: float, beta: float, target: float = DEFAULT_TARGET) -> float:
    """gamma with alpha * beta^2 * gamma^2 ~ target, at least 1, rounded to 3 decimals."""
    return round(max(1.0, math.sqrt(target / (alpha * beta * beta))), 3)


def constraint_gamma(alpha: float, beta: float, target: float = DEFAULT_TARGET,
                     gammas: tuple[float, ...] | None = None) -> float:
    """The gamma the constraint gives (alpha, beta): derived (`gammas` None), or the listed value
    whose product is nearest the target. Whether it meets the tolerance is `meets_constraint`'s call."""
    if gammas is None:
        return derived_gamma(alpha, beta, target)
    return min(gammas, key=lambda g: (abs(flops_factor(alpha, beta, g) - target), g))


@dataclass(frozen=True)
class Scaling:
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0
    phi: float = 0.0

    def __post_init__(self):
        for name in ("alpha", "beta", "gamma"):
            if not getattr(self, name) >= 1.0:
                raise UsageError(f"scaling: {name}={getattr(self, name)!r} is not allowed; expected >= 1")

    @property
    def flops_factor(self) -> float:
        """alpha * beta^2 * gamma^2: the MACs growth per unit of phi (~2 by design)."""
        return flops_factor(self.alpha, self.beta, self.gamma)

    @property
    def depth(self) -> float:
        return self.alpha**self.phi

    @property
    def width(self) -> float:
        return self.beta**self.phi

    @property
    def resolution(self) -> float:
        return self.gamma**self.phi


def round_channels(chs: int, width: float, divisor: int = 8) -> int:
    return chs if width == 1.0 else make_divisible(chs * width, divisor)


def round_repeats(repeats: int, depth: float) -> int:
    return repeats if depth == 1.0 else int(math.ceil(repeats * depth))


def scaled_layer_bits(b: BlockSpec, repeats: int) -> dict:
    """`layer_w_bits` / `layer_a_bits` of `b` at `repeats` (the rule in the module docstring)."""
    if not b.per_layer_bits or repeats == b.repeats:
        return {}
    if b.kind == "dense":
        def layer(i):
            return 2 * min(i // 2, b.repeats - 1) + i % 2
        index = [layer(i) for i in range(2 * repeats)] + [2 * b.repeats]
    else:
        per = block_layers(b.kind, b.expand, b.repeats)
        index = [min(j, b.repeats - 1) * per + i for j in range(repeats) for i in range(per)]
    return {name: tuple(getattr(b, name)[i] for i in index) if getattr(b, name) else ()
            for name in ("layer_w_bits", "layer_a_bits")}


def scale_block(b: BlockSpec, scaling: Scaling, divisor: int = 8) -> BlockSpec:
    """One stage's block scaled by width and depth (the rules above; `scale_arch` scales every stage with it)."""
    w, d = scaling.width, scaling.depth
    repeats = round_repeats(b.repeats, d)
    return replace(
        b,
        out_chs=round_channels(b.out_chs, w, math.lcm(divisor, b.groups)),
        repeats=repeats,
        growth=max(1, round(b.growth * w)) if b.growth else 0,
        **scaled_layer_bits(b, repeats),
    )


def scale_arch(base: ArchSpec, scaling: Scaling, divisor: int = 8) -> ArchSpec:
    """Scale depth, width and resolution of `base` (a pure function; base is unchanged)."""
    w = scaling.width
    return replace(
        base,
        resolution=int(round(base.resolution * scaling.resolution)),
        stem=replace(base.stem, out_chs=round_channels(base.stem.out_chs, w, divisor)),
        blocks=tuple(scale_block(b, scaling, divisor) for b in base.blocks),
        head=replace(base.head, out_chs=round_channels(base.head.out_chs, w, divisor) if base.head.out_chs else 0),
    )
