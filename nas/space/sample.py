"""Sampling a candidate from a space through an Optuna trial.

`sample_arch` is the one decoder from trial parameters to a network: the search calls it
with live trials, `nas space sample` with a seeded RandomSampler, and export replays a
stored trial through `optuna.trial.FixedTrial(trial.params)`, so the three cannot drift.
Parameters are named ``alpha``, ``beta``, ``gamma`` (mode free only), ``phi``, ``stem.*``, ``s<i>.*``,
``head.*``, ``fc.bits``; a choice with one value is not suggested (it is fixed).

Bit widths at the space's `bits_per`: ``s<i>.bits`` is the stage's pair (``stage``), or that
of its block 0 / conv layer 0; ``bits_per: block`` adds ``s<i>.b<j>.bits`` for blocks
j >= 1 (a dense stage is one block), ``bits_per: layer`` adds ``s<i>.l<k>.bits`` for conv
layers k >= 1 (execution order, `nas.space.spec.block_layers`), each from the stage's pairs
that are 1-bit exactly when the first is (a stage's layers are all Bi-Real or none). They
are suggested after all of the stage's other parameters, so a ``stage`` space draws what it
drew before per-layer bits existed.
"""

import math
import re
from dataclasses import dataclass

from nas.space.file import EndChoices, Space, StageChoices
from nas.space.scaling import Scaling, scale_arch
from nas.space.spec import ArchSpec, BlockSpec, ConvSpec, FcSpec, block_layers, stage_blocks


@dataclass(frozen=True)
class Sample:
    arch: ArchSpec  # the scaled network: what is built, costed and trained
    base: ArchSpec  # before compound scaling
    scaling: Scaling


# The space's parameter schema, written once: per stage, the choices every kind takes, then
# those only some kinds take (squeeze-excite only in non-binary ir blocks; dilation only in
# non-binary ir / grouped / dense blocks; the shift variants, sparse `shift_frac` and active
# `active_shift`, only in shift blocks; a stage offers one of the two, `nas.space.file`; the searched
# `sparsity` / `codebook`, only in w32a32 stages, `COMPRESSION_PARAMS`). `sample_arch`,
# `space_size` and `nas.cost.extremes.parameter_choices` all read it.
STAGE_PARAMS = ("repeats", "kernel", "act")
KIND_PARAMS = {"ir": ("expand", "se", "dilation"), "shift": ("expand", "shift_frac", "active_shift"),
               "grouped": ("groups", "dilation"), "dense": ("growth", "dilation")}
CHOICE_FIELD = {"repeats": "repeats", "kernel": "kernel", "act": "act", "expand": "expand", "se": "se",
                "groups": "groups", "growth": "growth", "dilation": "dilation", "shift_frac": "shift_frac",
                "active_shift": "active_shift", "sparsity": "sparsity",
                "codebook": "codebook"}  # stage parameter -> StageChoices field
# the order stage parameters are suggested in: Optuna's random sampler draws per call, so
# the order is part of what a seed means
STAGE_ORDER = ("repeats", "kernel", "expand", "se", "groups", "growth", "act", "dilation", "shift_frac",
               "active_shift", "sparsity", "codebook")  # the variants last: a space without their choices
# draws exactly what it drew before they existed (a parameter with one choice is never suggested)
UNSET = {"expand": 1.0, "se": 0.0, "groups": 1, "growth": 0, "dilation": 1, "shift_frac": 1.0,
         "active_shift": 0, "sparsity": 0.0, "codebook": 0}  # BlockSpec value where a kind has no choice


COMPRESSION_PARAMS = ("sparsity", "codebook")  # drawn only when a stage's bits pick is w32a32


def kind_params(kind: str, w_bits: int) -> tuple[str, ...]:
    """The stage parameters a block of `kind` at `w_bits` takes (beyond STAGE_PARAMS)."""
    return tuple(p for p in KIND_PARAMS[kind] if not (p in ("se", "dilation") and w_bits == 1))


def compression_params(bits: tuple[int, int]) -> tuple[str, ...]:
    """The searched sparsity / codebook parameters a stage whose bits pick is `bits` takes."""
    return COMPRESSION_PARAMS if tuple(bits) == (32, 32) else ()


def _pick(trial, name: str, choices: tuple):
    if len(choices) == 1:
        return choices[0]
    return trial.suggest_categorical(name, list(choices))


def _pick_bits(trial, name: str, choices: tuple) -> tuple[int, int]:
    labels = [f"w{w}a{a}" for w, a in choices]
    label = _pick(trial, name, tuple(labels))
    return choices[labels.index(label)]


def same_side_bits(choices: tuple, first: tuple[int, int]) -> tuple:
    """The bit pairs a stage's further blocks / layers may take: 1-bit exactly when `first` is."""
    return tuple(p for p in choices if (p[0] == 1) == (first[0] == 1))


def bit_units(kind: str, repeats: int, expand: float, bits_per: str) -> int:
    """How many bit pairs a stage takes at `bits_per`: 1, its blocks, or its conv layers."""
    if bits_per == "stage":
        return 1
    if bits_per == "block":
        return stage_blocks(kind, repeats)
    return stage_blocks(kind, repeats) * block_layers(kind, expand, repeats)


def _stage(trial, i: int, st: StageChoices, bits_per: str = "stage") -> BlockSpec:
    p = f"s{i}."
    kind = _pick(trial, p + "kind", st.kinds)
    w_bits, a_bits = _pick_bits(trial, p + "bits", st.bits)
    chosen = dict(UNSET)
    for name in STAGE_ORDER:
        if name in STAGE_PARAMS or name in kind_params(kind, w_bits) or name in compression_params((w_bits, a_bits)):
            chosen[name] = _pick(trial, p + name, getattr(st, CHOICE_FIELD[name]))
    units = bit_units(kind, chosen["repeats"], chosen["expand"], bits_per)
    if units == 1:
        return BlockSpec(kind=kind, out_chs=st.channels, stride=st.stride, w_bits=w_bits, a_bits=a_bits, **chosen)
    same = same_side_bits(st.bits, (w_bits, a_bits))
    tag = "b" if bits_per == "block" else "l"
    picks = [(w_bits, a_bits)] + [_pick_bits(trial, f"{p}{tag}{k}.bits", same) for k in range(1, units)]
    if bits_per == "block":  # every conv layer of block j takes block j's pair
        per = block_layers(kind, chosen["expand"], chosen["repeats"])
        picks = [pair for pair in picks for _ in range(per)]
    return BlockSpec(kind=kind, out_chs=st.channels, stride=st.stride, layer_w_bits=tuple(w for w, _ in picks),
                     layer_a_bits=tuple(a for _, a in picks), **chosen)


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
        blocks=tuple(_stage(trial, i, st, space.bits_per) for i, st in enumerate(space.stages)),
        head=_end(trial, "head", space.head),
        fc=FcSpec(num_classes=num_classes or space.num_classes, w_bits=fc_w, a_bits=fc_a),
    )
    return Sample(arch=scale_arch(base, scaling, space.divisor), base=base, scaling=scaling)


_FURTHER_BITS = re.compile(r"s(\d+)\.[bl]\d+\.bits")  # a per-block / per-layer bits parameter


def stage_bits_for(name: str, params: dict, choices) -> str | None:
    """The answer for a per-block / per-layer bits parameter missing from `params`: its stage's
    pick (``s<i>.bits``), or the first choice; None for any other parameter."""
    m = _FURTHER_BITS.fullmatch(name)
    if not m or name in params:
        return None
    first = params.get(f"s{m[1]}.bits")
    return first if first in choices else choices[0]


def replay(space: Space, params: dict, in_chs: int | None = None, num_classes: int | None = None) -> Sample:
    """Rebuild the sample a finished trial saw, from its stored params.

    A per-block / per-layer bits parameter missing from `params` takes its stage's first pick
    (``s<i>.bits``): params that name only stage-level choices (`nas.cost.extremes` descends
    over those) decode to the member whose stages are uniform."""
    import optuna  # here, not at the top: `import nas.cost` (which imports this package) stays light

    class ReplayTrial(optuna.trial.FixedTrial):
        def suggest_categorical(self, name, choices):
            stage_pick = stage_bits_for(name, params, choices)
            return super().suggest_categorical(name, choices) if stage_pick is None else stage_pick

    return sample_arch(space, ReplayTrial(params), in_chs, num_classes)


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


def _stage_count(st: StageChoices, bits_per: str = "stage") -> int:
    total = 0
    for kind in st.kinds:
        for w, a in st.bits:
            params = STAGE_PARAMS + kind_params(kind, w) + compression_params((w, a))
            if bits_per == "stage":
                total += math.prod(len(getattr(st, CHOICE_FIELD[name])) for name in params)
                continue
            # the further bit picks depend on repeats (and an ir block's expand): sum over those
            others = math.prod(len(getattr(st, CHOICE_FIELD[name])) for name in params
                               if name not in ("repeats", "expand"))
            expands = st.expand if "expand" in params else (1.0,)
            n_same = len(same_side_bits(st.bits, (w, a)))
            total += others * sum(n_same ** (bit_units(kind, r, e, bits_per) - 1)
                                  for r in st.repeats for e in expands)
    return total


def space_size(space: Space) -> int:
    """Number of distinct parameter assignments (networks before de-duplication)."""
    n = len(space.alpha) * len(space.beta) * len(space.phi) * (len(space.gamma) if space.gamma else 1)
    for end in (space.stem, space.head):
        n *= len(end.channels) * len(end.act) * len(end.bits)
    n *= len(space.classifier.bits)
    for st in space.stages:
        n *= _stage_count(st, space.bits_per)
    return n
