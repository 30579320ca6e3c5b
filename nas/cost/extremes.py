"""The cheapest and the largest member of a space for one cost field.

Coordinate descent over the space's parameters, decoding every candidate through the
one decoder (`nas.space.replay`, i.e. `sample_arch` on a FixedTrial): from a start,
repeatedly try every choice of every coordinate with the others fixed, keep improvements,
stop when a sweep changes nothing. Compound scaling's parameters form one coordinate,
swept jointly: they act only together (phi changes nothing while alpha = beta = 1, beta
nothing while phi = 0), so one at a time the descent would stop at phi = 0. Stages also
interact through channel counts (a dense stage's output width depends on its growth and
repeats), so a descent can stop short of the optimum: it runs from each parameter's first
choice and from the best few of a seeded random sample, and the best end point is
returned. It bounds every member a search samples in practice (tests check it against
random samples of the shipped spaces) but is not a proof of optimality.
"""

import itertools
import random
from dataclasses import dataclass

from nas.cost import arch_cost
from nas.space import ArchSpec, Space, replay
from nas.space.sample import CHOICE_FIELD, STAGE_ORDER

MAX_SWEEPS = 6
RANDOM_STARTS, RANDOM_POOL = 3, 64  # descents also start from the best 3 of 64 random points
SCALING = ("alpha", "beta", "gamma", "phi")


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
        params[p + "kind"] = list(st.kinds)
        for key in STAGE_ORDER:
            params[p + key] = list(getattr(st, CHOICE_FIELD[key]))
        params[p + "bits"] = bits(st.bits)
    return params


def coordinates(choices: dict[str, list]) -> dict[str, list[dict]]:
    """The moves of the descent: {coordinate: [parameter assignments]}; scaling is one
    coordinate (every combination of its parameters), every other parameter its own."""
    scaling = [name for name in SCALING if name in choices]
    moves = {"scaling": [dict(zip(scaling, combo)) for combo in itertools.product(*(choices[n] for n in scaling))]}
    moves.update({name: [{name: v} for v in values] for name, values in choices.items() if name not in scaling})
    return moves


CostCache = dict  # {(space path, in_chs, num_classes, params): (ArchCost, ArchSpec)}


def _cost(space, params, in_chs, num_classes, cache: CostCache):
    """(every cost of the member `params` decodes to, its arch), memoised: the descents
    revisit most points, and one cache may serve several fields of one space."""
    key = (id(space), in_chs, num_classes, tuple(sorted(params.items())))
    if key not in cache:
        arch = replay(space, params, in_chs, num_classes).arch
        cache[key] = (arch_cost(arch), arch)
    return cache[key]


def extreme(space: Space, field: str, largest: bool = False, in_chs: int | None = None,
            num_classes: int | None = None, cache: CostCache | None = None) -> Extreme:
    """The cheapest (or largest) member by `field`. Pass one `cache` dict to several calls
    over the same space to share the decoded members' costs."""
    choices = parameter_choices(space)
    sign = -1.0 if largest else 1.0
    moves = coordinates(choices)
    cache = {} if cache is None else cache

    def point(params):
        costs, arch = _cost(space, params, in_chs, num_classes, cache)
        return sign * float(getattr(costs, field)), params, arch

    def descend(start):
        score, params, arch = start
        for _ in range(MAX_SWEEPS):
            improved = False
            for assignments in moves.values():
                for assignment in assignments:
                    trial_params = {**params, **assignment}
                    if trial_params != params:
                        candidate = point(trial_params)
                        if candidate[0] < score:
                            (score, params, arch), improved = candidate, True
            if not improved:
                break
        return score, params, arch

    rng = random.Random(0)
    pool = [point({name: rng.choice(values) for name, values in choices.items()}) for _ in range(RANDOM_POOL)]
    starts = [point({name: values[0] for name, values in choices.items()})]
    starts += sorted(pool, key=lambda p: p[0])[:RANDOM_STARTS]
    score, _, arch = min((descend(s) for s in starts), key=lambda p: p[0])
    return Extreme(field=field, value=sign * score, arch=arch)
