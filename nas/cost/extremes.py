"""The cheapest and the largest member of a space for one cost field.

Coordinate descent over the space's parameters, decoding every candidate through the
one decoder (`nas.space.replay`, i.e. `sample_arch` on a FixedTrial): start from each
parameter's first choice, then repeatedly try every choice of every parameter with the
others fixed, keep improvements, stop when a sweep changes nothing. Costs are additive
over layers for `weight_bytes`, `macs`, `params` and `bops`, so for those this finds the
true optimum whenever stages do not interact (they interact only through scaling, which
is swept too); for `peak_act_bytes` it is the best found.
"""

from dataclasses import dataclass

from nas.cost import arch_cost
from nas.space import ArchSpec, Space, replay

MAX_SWEEPS = 6


@dataclass(frozen=True)
class Extreme:
    field: str
    value: float
    arch: ArchSpec


def parameter_choices(space: Space) -> dict[str, list]:
    """Every parameter name `sample_arch` may suggest, with its choices (labels for bits)."""
    def bits(pairs):
        return [f"w{w}a{a}" for w, a in pairs]

    params = {"alpha": list(space.alpha), "beta": list(space.beta), "phi": list(space.phi)}
    if space.gamma:
        params["gamma"] = list(space.gamma)
    for name, end in (("stem", space.stem), ("head", space.head)):
        params[f"{name}.channels"] = list(end.channels)
        params[f"{name}.act"] = list(end.act)
        params[f"{name}.bits"] = bits(end.bits)
    params["fc.bits"] = bits(space.classifier.bits)
    for i, st in enumerate(space.stages):
        p = f"s{i}."
        for key, values in (("kind", st.kinds), ("repeats", st.repeats), ("kernel", st.kernel),
                            ("expand", st.expand), ("se", st.se), ("groups", st.groups),
                            ("growth", st.growth), ("act", st.act)):
            params[p + key] = list(values)
        params[p + "bits"] = bits(st.bits)
    return params


def _cost(space, params, field, in_chs, num_classes):
    arch = replay(space, params, in_chs, num_classes).arch
    return float(getattr(arch_cost(arch), field)), arch


def extreme(space: Space, field: str, largest: bool = False, in_chs: int | None = None,
            num_classes: int | None = None) -> Extreme:
    choices = parameter_choices(space)
    sign = -1.0 if largest else 1.0
    params = {name: values[0] for name, values in choices.items()}
    best, best_arch = _cost(space, params, field, in_chs, num_classes)
    for _ in range(MAX_SWEEPS):
        improved = False
        for name, values in choices.items():
            if len(values) < 2:
                continue
            for value in values:
                if value == params[name]:
                    continue
                trial_params = {**params, name: value}
                cost, arch = _cost(space, trial_params, field, in_chs, num_classes)
                if sign * cost < sign * best:
                    params, best, best_arch, improved = trial_params, cost, arch, True
        if not improved:
            break
    return Extreme(field=field, value=best, arch=best_arch)
