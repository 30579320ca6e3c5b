"""`nas.cost.extremes`: the cheapest / largest member of a space, checked against exhaustive
searches (a brute force over every member of small hand-made spaces, a dynamic programme
over every stage choice of the shipped ones) and against large random samples."""

import itertools
from pathlib import Path

import optuna
import pytest

from nas.cost import arch_cost
from nas.cost.extremes import FIELDS, _Answers, _Members, extreme
from nas.cost.graph import expand_stage, expand_stem, expand_tail
from nas.errors import UsageError
from nas.space import load_space
from nas.space.sample import _stage, random_archs, replay, sample_arch, space_size

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(str(p.relative_to(REPO)) for p in (REPO / "search_spaces").glob("*.yaml"))
WHICH = [(field, largest) for field in FIELDS for largest in (False, True)]


def _sign(largest):
    return -1 if largest else 1


class _Branch(Exception):
    def __init__(self, name, choices):
        self.name, self.choices = name, choices


class _Walk:
    """A trial that answers from `params` and stops at the first name it has no answer for."""

    def __init__(self, params):
        self.params = params

    def suggest_categorical(self, name, choices):
        if name not in self.params:
            raise _Branch(name, choices)
        return self.params[name]


def every_member(space):
    """Every path through the decoder of `space`: its member decoded whole, or None where
    the decoder refuses the path (not a member)."""
    todo = [{}]
    while todo:
        params = todo.pop()
        try:
            yield sample_arch(space, _Walk(params)).arch
        except _Branch as b:
            todo.extend({**params, b.name: v} for v in b.choices)
        except UsageError:
            yield None


def every_member_optimum(space) -> dict:
    """{(field, largest): value} over every member, each costed whole by `arch_cost` (no
    pieces): the brute force, for small spaces."""
    best, count = {}, 0
    for arch in every_member(space):
        count += 1
        if arch is None:
            continue
        cost = arch_cost(arch)
        for field, largest in WHICH:
            value = getattr(cost, field)
            old = best.get((field, largest))
            if old is None or _sign(largest) * value < _sign(largest) * old:
                best[(field, largest)] = value
    assert count == space_size(space)
    return best


def stage_dp_optimum(space) -> dict:
    """{(field, largest): value} by a dynamic programme over every choice of every stage,
    for every scaling / stem / head / classifier choice: exact, from the same memoised pieces
    as `extreme` (their agreement with whole networks is tested below). State between stages:
    (tensor shape, the width the next piece reads it at); weight_bytes and macs add up,
    peak_act_bytes is the largest piece's."""
    members = _Members(space, None, None)
    ch = members.choices
    n = len(space.stages)
    stage_names = [[name for name in ch if name.startswith(f"s{i}.")] for i in range(n)]
    tail_names = [name for name in ch if name.startswith(("head.", "fc."))]
    front_names = [name for name in ch if name not in tail_names and not any(name in s for s in stage_names)]
    first = {name: v[0] for name, v in ch.items()}
    options = []  # per stage: parameter dicts of its distinct decoded blocks
    for i, names in enumerate(stage_names):
        seen, opts = set(), []
        for combo in itertools.product(*(ch[name] for name in names)):
            params = {**first, **dict(zip(names, combo))}
            try:
                block = _stage(_Answers(params), i, space.stages[i])
            except UsageError:
                continue
            if block not in seen:
                seen.add(block)
                opts.append(params)
        options.append(opts)

    best = {}

    def offer(field, largest, value):
        old = best.get((field, largest))
        if old is None or _sign(largest) * value < _sign(largest) * old:
            best[(field, largest)] = value

    for front in itertools.product(*(ch[name] for name in front_names)):
        params0 = {**first, **dict(zip(front_names, front))}
        scaling, size, ref = _ends(members, params0)

        def stage_piece(i, params, shape):
            key, b = members._stage_block(i, params, scaling, size)
            if b is None:
                return None
            return members._piece(key, (i, b), lambda net, x: expand_stage(net, i, x, b, shape[0]), shape)

        tails = []
        for combo in itertools.product(*(ch[name] for name in tail_names)):
            _, _, tref = _ends(members, {**params0, **dict(zip(tail_names, combo))})
            tails.append(tref)

        def tail_pieces(shape):
            return [members._piece(("tail", t.head, t.fc), ("tail", t.head, t.fc),
                                   lambda net, x, t=t: expand_tail(net, x, t.head, t.fc, n), shape) for t in tails]

        bits_read = {}

        def next_bits(i, shape):
            """The widths stage i (the tail when i == n) may read an input of `shape` at."""
            if (i, shape) not in bits_read:
                pieces = tail_pieces(shape) if i == n else (stage_piece(i, o, shape) for o in options[i])
                bits_read[(i, shape)] = {p.in_bits for p in pieces if p is not None}
            return bits_read[(i, shape)]

        stem = members._piece(("stem", ref.stem), ("stem", ref.stem), lambda net, x: expand_stem(net, x, ref.stem),
                              (ref.in_chs, ref.resolution, ref.resolution))
        for field, largest in WHICH:
            sign = _sign(largest)

            def value(piece, out_bits):
                return piece.peak(out_bits) if field == "peak_act_bytes" else getattr(piece, field)

            def combine(v, w):
                return max(v, w) if field == "peak_act_bytes" else v + w

            states = {(stem.out_shape, b): value(stem, b) for b in next_bits(0, stem.out_shape)}
            for i in range(n):
                new = {}
                for (shape, b), v in states.items():
                    for o in options[i]:
                        piece = stage_piece(i, o, shape)
                        if piece is None or piece.in_bits != b:
                            continue
                        for b2 in next_bits(i + 1, piece.out_shape):
                            w = combine(v, value(piece, b2))
                            key = (piece.out_shape, b2)
                            if key not in new or sign * w < sign * new[key]:
                                new[key] = w
                states = new
            for (shape, b), v in states.items():
                for tail in tail_pieces(shape):
                    if tail is not None and tail.in_bits == b:
                        offer(field, largest, combine(v, value(tail, None)))
    return best


def _ends(members, params):
    """(scaling, (width, depth), decoded arch) of `params`, as `_Members.cost` records them."""
    members.cost(params)
    return members.ends[members.end_key_of(params)]


TINY = """
name: tiny
input: {resolution: 12, channels: 1}
num_classes: 3
scaling: {mode: compound, alpha: [1.0, 1.2], beta: [1.1], gamma: auto, phi: [0, 1], target: 2.0}
stem: {channels: [8, 16], kernel: 3, stride: 1, act: none, bits: [w8a8]}
stages:
  - {channels: 16, stride: 2, kinds: [ir, grouped, dense], repeats: [1, 2], kernel: [3], expand: [1, 3],
     groups: [2], growth: [8, 16], bits: [w8a8, w1a1]}
  - {channels: 24, stride: 1, kinds: [shift, ir], repeats: [1, 2], kernel: [3], expand: [2], se: [0, 0.25],
     bits: [w4a4, w1a1]}
head: {channels: [32], act: relu, bits: w8a8}
classifier: {bits: [w8a8, w16a16]}
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "tiny.yaml"
    path.write_text(TINY)
    return load_space(str(path))


def test_pieces_equal_the_brute_force_on_a_small_space(tiny):
    """Every member of a space with every block kind, 1-bit and k-bit stages, residual and
    strided blocks, dense stages and a head choice: the stage programme over memoised pieces
    gives the brute force's optimum for every field, and `extreme` finds it."""
    brute = every_member_optimum(tiny)
    assert stage_dp_optimum(tiny) == brute
    cache = {}
    for (field, largest), value in brute.items():
        e = extreme(tiny, field, largest=largest, cache=cache)
        assert e.value == value, (field, largest, e.value, value)
        assert getattr(arch_cost(e.arch), field) == e.value


@pytest.mark.parametrize("path", SHIPPED)
def test_pieces_cost_every_sampled_member_exactly(path):
    """The member costs `extreme` searches with (memoised pieces) equal `arch_cost` of the
    whole network, to the byte, on random members of every shipped space. The descent moves
    stage-level choices only (a `bits_per: block | layer` space's per-block / per-layer bits
    take the stage's pick, as `replay` gives them), so those are what is drawn here."""
    space = load_space(str(REPO / path))
    members = _Members(space, None, None)
    first = {name: v[0] for name, v in members.choices.items()}  # names a member does not suggest
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=11))
    for _ in range(60):
        trial = study.ask()
        sample_arch(space, trial)
        params = {**first, **{k: v for k, v in trial.params.items() if k in members.choices}}
        whole = arch_cost(replay(space, params).arch)
        assert members.cost(params) == (whole.weight_bytes, whole.macs, whole.peak_act_bytes)


@pytest.mark.parametrize("path", SHIPPED)
def test_extremes_bound_a_large_random_sample(path):
    space = load_space(str(REPO / path))
    sampled = [arch_cost(a) for a in random_archs(space, 500, seed=3)]
    cache = {}
    for field, largest in WHICH:
        e = extreme(space, field, largest=largest, cache=cache)
        values = [getattr(c, field) for c in sampled]
        assert (e.value >= max(values)) if largest else (e.value <= min(values)), (field, largest, e.value)


@pytest.mark.parametrize("path", [p for p in SHIPPED if "default" not in p]
                         + [pytest.param(p, marks=pytest.mark.slow) for p in SHIPPED if "default" in p])
def test_extremes_equal_the_exhaustive_optimum_of_each_shipped_space(path):
    """`extreme` is a descent, not a proof; on the shipped spaces it reaches the optimum the
    stage programme proves (default's programme prices every piece: slow)."""
    space = load_space(str(REPO / path))
    exact = stage_dp_optimum(space)
    cache = {}
    for (field, largest), value in exact.items():
        assert extreme(space, field, largest=largest, cache=cache).value == value, (field, largest)


def test_dataset_channels_and_classes_reach_the_extremes():
    """`nas search` asks with the dataset's input channels and classes: the member found has
    them, and it bounds random members that have them too."""
    space = load_space(str(REPO / "search_spaces/mcu.yaml"))
    sampled = [arch_cost(a) for a in random_archs(space, 200, seed=2, in_chs=3, num_classes=100)]
    cache = {}
    for field, largest in WHICH:
        e = extreme(space, field, largest=largest, in_chs=3, num_classes=100, cache=cache)
        assert (e.arch.in_chs, e.arch.fc.num_classes) == (3, 100)
        values = [getattr(c, field) for c in sampled]
        assert (e.value >= max(values)) if largest else (e.value <= min(values)), (field, largest, e.value)
    assert extreme(space, "weight_bytes", in_chs=3, num_classes=100).value > extreme(space, "weight_bytes").value


REFUSED = """
name: refused
input: {resolution: 8, channels: 1}
num_classes: 2
scaling: {mode: compound, alpha: [1.0], beta: [1.1], gamma: auto, phi: [0, 1], target: 2.0, tolerance: 0.2}
stem: {channels: [8], kernel: 3, stride: 1, act: relu, bits: [w8a8]}
stages:
  - {channels: 20, stride: 1, kinds: [ir], repeats: [1], kernel: [3], expand: [1, 2], bits: [w8a8]}
  - {channels: 32, stride: 2, kinds: [ir, grouped], repeats: [1, 2], kernel: [3], expand: [2], groups: [4, 8],
     bits: [w8a8, w4a4]}
head: {channels: [0], bits: w8a8}
classifier: {bits: [w8a8]}
"""


def test_members_the_decoder_refuses_are_never_extremes(tmp_path):
    """20 channels do not split into 8 groups: unscaled the graph refuses such a member,
    scaled (24 channels) only the decoder's check on the base network does. The extremes
    are the brute force's, over the members that decode."""
    path = tmp_path / "refused.yaml"
    path.write_text(REFUSED)
    space = load_space(str(path))
    assert None in list(every_member(space))  # the space has refused paths
    brute = every_member_optimum(space)
    cache = {}
    for (field, largest), value in brute.items():
        assert extreme(space, field, largest=largest, cache=cache).value == value, (field, largest)
