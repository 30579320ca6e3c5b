"""Sampling a candidate from a space through an Optuna trial.

`sample_arch` is the one decoder from trial parameters to a network: the search calls it
with live trials, `nas space sample` with a seeded RandomSampler, and export replays a
stored trial through `optuna.trial.FixedTrial(trial.params)`, so the three cannot drift.
Parameters are named ``alpha``, ``beta``, ``gamma`` (mode free only), ``phi``, ``stem.*``, ``s<i>.*``,
``head.*``, ``fc.bits``; a choice with one value is not suggested (it is fixed).
"""

import math
from dataclasses import dataclass

from nas.space.file import EndChoices, Space, StageChoices
from nas.space.scaling import Scaling, scale_arch
from nas.space.spec import ArchSpec, BlockSpec, ConvSpec, FcSpec


@dataclass(frozen=True)
class Sample:
    arch: ArchSpec  # the scaled network: what is built, costed and trained
    base: ArchSpec  # before compound scaling
    scaling: Scaling


# The space's parameter schema, written once: per stage, the choices every kind takes, then
# those only some kinds take (squeeze-excite only in non-binary ir blocks; dilation only in
# non-binary ir / grouped / dense blocks). `sample_arch`,
# `space_size` and `nas.cost.extremes.parameter_choices` all read it.
STAGE_PARAMS = ("repeats", "kernel", "act")
KIND_PARAMS = {"ir": ("expand", "se", "dilation"), "shift": ("expand",), "grouped": ("groups", "dilation"),
               "dense": ("growth", "dilation")}
CHOICE_FIELD = {"repeats": "repeats", "kernel": "kernel", "act": "act", "expand": "expand", "se": "se",
                "groups": "groups", "growth": "growth", "dilation": "dilation"}  # stage parameter -> StageChoices field
# the order stage parameters are suggested in: Optuna's random sampler draws per call, so
# the order is part of what a seed means
STAGE_ORDER = ("repeats", "kernel", "expand", "se", "groups", "growth", "act", "dilation")  # dilation last:
# a space without a dilation choice draws exactly what it drew before dilation existed
UNSET = {"expand": 1.0, "se": 0.0, "groups": 1, "growth": 0, "dilation": 1}  # BlockSpec value where a kind has no choice


def kind_params(kind: str, w_bits: int) -> tuple[str, ...]:
    """The stage parameters a block of `kind` at `w_bits` takes (beyond STAGE_PARAMS)."""
    return tuple(p for p in KIND_PARAMS[kind] if not (p in ("se", "dilation") and w_bits == 1))


def _pick(trial, name: str, choices: tuple):
    if len(choices) == 1:
        return choices[0]
    return trial.suggest_categorical(name, list(choices))


def _pick_bits(trial, name: str, choices: tuple) -> tuple[int, int]:
    labels = [f"w{w}a{a}" for w, a in choices]
    label = _pick(trial, name, tuple(labels))
    return choices[labels.index(label)]


def _stage(trial, i: int, st: StageChoices) -> BlockSpec:
    p = f"s{i}."
    kind = _pick(trial, p + "kind", st.kinds)
    w_bits, a_bits = _pick_bits(trial, p + "bits", st.bits)
    chosen = dict(UNSET)
    for name in STAGE_ORDER:
        if name in STAGE_PARAMS or name in kind_params(kind, w_bits):
            chosen[name] = _pick(trial, p + name, getattr(st, CHOICE_FIELD[name]))
    return BlockSpec(kind=kind, out_chs=st.channels, stride=st.stride, w_bits=w_bits, a_bits=a_bits, **chosen)


def _end(trial, name: str, ch: EndChoices) -> ConvSpec:
    w_bits, a_bits = _pick_bits(trial, name + ".bits", ch.bits)
    return ConvSpec(out_chs=_pick(trial, name + ".channels", ch.channels), kernel=ch.kernel, stride=ch.stride,
                    act=_pick(trial, name + ".act", ch.act), w_bits=w_bits, a_bits=a_bits)


def sample_arch(space: Space, trial, in_chs: int | None = None, num_classes: int | None = None) -> Sample:
    """Suggest every choice of `space` on `trial`; return the scaled network.

    `in_chs` / `num_classes` come from the dataset and override the space's defaults.
    """
    alpha = _pick(trial, "alpha", space.alpha)
    beta = _pick(trial, "beta", space.beta)
    # compound: gamma follows from (alpha, beta) under the space's constraint, checked for every
    # pair at load time; free: a trial parameter when listed
    gamma = _pick(trial, "gamma", space.gamma) if space.gamma else space.gamma_for(alpha, beta)
    scaling = Scaling(alpha=alpha, beta=beta, gamma=gamma, phi=_pick(trial, "phi", space.phi))
    fc_w, fc_a = _pick_bits(trial, "fc.bits", space.classifier.bits)
    base = ArchSpec(
        resolution=space.resolution,
        in_chs=in_chs or space.in_chs,
        stem=_end(trial, "stem", space.stem),
        blocks=tuple(_stage(trial, i, st) for i, st in enumerate(space.stages)),
        head=_end(trial, "head", space.head),
        fc=FcSpec(num_classes=num_classes or space.num_classes, w_bits=fc_w, a_bits=fc_a),
    )
    return Sample(arch=scale_arch(base, scaling, space.divisor), base=base, scaling=scaling)


def replay(space: Space, params: dict, in_chs: int | None = None, num_classes: int | None = None) -> Sample:
    """Rebuild the sample a finished trial saw, from its stored params."""
    import optuna  # here, not at the top: `import nas.cost` (which imports this package) stays light

    return sample_arch(space, optuna.trial.FixedTrial(params), in_chs, num_classes)


def random_samples(space: Space, n: int, seed: int, in_chs: int | None = None,
                   num_classes: int | None = None) -> list[Sample]:
    """n samples from a seeded RandomSampler: the same seed gives the same list."""
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [sample_arch(space, study.ask(), in_chs, num_classes) for _ in range(n)]


def iter_random_archs(space: Space, n: int, seed: int, chunk: int = 1000):
    """The arch strings of `random_archs` one at a time, in constant memory (`nas space sample
    -n 999999999999` prints its first line at once): a fresh in-memory study every `chunk`
    samples, drawing from the same seeded sampler, so the sequence is the same."""
    import optuna

    sampler = optuna.samplers.RandomSampler(seed=seed)
    done = 0
    while done < n:
        study = optuna.create_study(sampler=sampler)
        for _ in range(min(chunk, n - done)):
            yield sample_arch(space, study.ask()).arch
            done += 1


def random_archs(space: Space, n: int, seed: int, in_chs: int | None = None,
                 num_classes: int | None = None) -> list[ArchSpec]:
    return [s.arch for s in random_samples(space, n, seed, in_chs, num_classes)]


def _stage_count(st: StageChoices) -> int:
    total = 0
    for kind in st.kinds:
        per_kind = math.prod(len(getattr(st, CHOICE_FIELD[name])) for name in STAGE_PARAMS)
        for w, _ in st.bits:
            total += per_kind * math.prod(len(getattr(st, CHOICE_FIELD[name])) for name in kind_params(kind, w))
    return total


def space_size(space: Space) -> int:
    """Number of distinct parameter assignments (networks before de-duplication)."""
    n = len(space.alpha) * len(space.beta) * len(space.phi) * (len(space.gamma) if space.gamma else 1)
    for end in (space.stem, space.head):
        n *= len(end.channels) * len(end.act) * len(end.bits)
    n *= len(space.classifier.bits)
    for st in space.stages:
        n *= _stage_count(st)
    return n
