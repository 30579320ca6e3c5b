"""The seed's efficiency metrics (survey 000, ch. 4 sec. 1): Information Density and NetScore.

Both follow the units of Wong, "NetScore: Towards Universal Metrics for Large-scale
Performance Analysis of Deep Neural Networks for Practical On-Device Edge Usage"
(arXiv:1806.05512, ICIAR 2019), so that figures compare with that paper's tables:
accuracy a in percent (top-1), parameters p in millions, MACs m in millions.

- Information Density D(N) = a(N) / p(N)        (% per million parameters)
- NetScore Omega(N) = 20 * log10( a^alpha / (p^beta * m^gamma) ),  alpha = 2, beta = gamma = 0.5

The seed writes NetScore as log(a^alpha / (p^beta m^gamma)) without base or scale; Wong
defines it with 20*log10 (a decibel-like scale), which we follow. Example: MobileNetV2 with
a = 71.8 %, p = 3.47 M, m = 300 M scores 20*log10(71.8^2 / sqrt(3.47 * 300)) = 44.1.
"""

import math

ALPHA, BETA, GAMMA = 2.0, 0.5, 0.5


def _percent(accuracy: float) -> float:
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy={accuracy!r}; expected a fraction in [0, 1]")
    return 100.0 * accuracy


def _positive(name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{name}={value!r}; expected a positive count")
    return float(value)


def information_density(accuracy: float, params: int) -> float:
    """a / p: top-1 accuracy (given as a fraction, used in %) per million parameters."""
    return _percent(accuracy) / (_positive("params", params) / 1e6)


def netscore(accuracy: float, params: int, macs: int) -> float:
    """Wong's NetScore, 20*log10(a^2 / (p^0.5 m^0.5)), a in %, p and m in millions.

    Accuracy 0 has no logarithm; it scores -inf."""
    a = _percent(accuracy)
    p = _positive("params", params) / 1e6
    m = _positive("macs", macs) / 1e6
    if a == 0:
        return -math.inf
    return 20.0 * math.log10(a**ALPHA / (p**BETA * m**GAMMA))
