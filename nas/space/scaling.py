"""EfficientNet compound scaling (Tan & Le 2019; survey 000, ch. 3 sec. 6).

depth x alpha^phi, width x beta^phi, resolution x gamma^phi, with alpha * beta^2 * gamma^2 ~ 2
so that MACs grow by ~2^phi (EfficientNet: alpha=1.2, beta=1.1, gamma=1.15).

Rounding rules (stated once, here):
- channels: `make_divisible(c * beta^phi, divisor)` (timm's rule, `nas.space.spec`) - nearest multiple of the
  divisor (8 by default; a multiple of the block's groups too for grouped blocks), never
  below 90% of the request;
- repeats (and dense layers): ceil(r * alpha^phi), as timm does for depth;
- dense growth: max(1, round(growth * beta^phi));
- resolution: round(resolution * gamma^phi).
"""

import math
from dataclasses import dataclass

from nas.errors import UsageError
from nas.space.spec import ArchSpec, make_divisible, replace

EFFICIENTNET = (1.2, 1.1, 1.15)  # alpha, beta, gamma found by grid search on B0


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
        return self.alpha * self.beta**2 * self.gamma**2

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


def scale_arch(base: ArchSpec, scaling: Scaling, divisor: int = 8) -> ArchSpec:
    """Scale depth, width and resolution of `base` (a pure function; base is unchanged)."""
    w, d = scaling.width, scaling.depth
    blocks = []
    for b in base.blocks:
        div = math.lcm(divisor, b.groups)
        blocks.append(replace(
            b,
            out_chs=round_channels(b.out_chs, w, div),
            repeats=round_repeats(b.repeats, d),
            growth=max(1, round(b.growth * w)) if b.growth else 0,
        ))
    return replace(
        base,
        resolution=int(round(base.resolution * scaling.resolution)),
        stem=replace(base.stem, out_chs=round_channels(base.stem.out_chs, w, divisor)),
        blocks=tuple(blocks),
        head=replace(base.head, out_chs=round_channels(base.head.out_chs, w, divisor) if base.head.out_chs else 0),
    )
