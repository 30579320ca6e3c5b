"""The cheapest and the largest member of a space for one cost field.

Search: coordinate descent over the space's parameters. From a start, try every choice of
every coordinate with the others fixed, keep improvements, stop when a sweep changes
nothing. Compound scaling's parameters form one coordinate, swept jointly: they act only
together (phi changes nothing while alpha = beta = 1, beta nothing while phi = 0), so one
at a time the descent would stop at phi = 0; a stage's kind and the parameters only that
kind takes form another, and so do a stage's bits and its searched sparsity / codebook
(drawn only at w32a32) (`coordinates`). Stages interact through channel counts and bit
widths, so a descent can stop short of the optimum: it runs from every parameter's first
choice and from every parameter's last, and the better end point is returned. A descent is
not a proof; `tests/test_extremes.py` checks that it reaches the optimum of every shipped
space, found exhaustively (a dynamic programme over every choice of every stage), and of a
small space with every block kind (a brute force over every member).

Evaluation, the part that made `nas space show` slow: a member is not built whole. Its
pieces are decoded by the one decoder's parts (`nas.space.sample`: `sample_arch` for the
scaling, stem, head and classifier, `_stage` per stage, `nas.space.scaling.scale_block`)
and priced by the one graph and cost code, piece by piece (`nas.cost.graph.expand_stem` /
`expand_stage` / `expand_tail`, `nas.cost.model`), each piece memoised by its spec and
input shape. That is exact, not an approximation: `weight_bytes` and `macs` are sums over
ops, and a stage's blocks read only the stage's input and their own tensors, so
`peak_act_bytes` is the largest of the pieces' peaks, each priced with its output stored at
the width the next piece reads it at (a tensor's storage bits come from its readers).
The member a search ends at is decoded whole (`sample_arch`) and costed by `arch_cost`,
and must agree with the pieces to the byte.
"""

import itertools
from dataclasses import dataclass
from operator import itemgetter

from nas.cost.graph import PROJECT, Graph, GraphBuilder, expand_stage, expand_stem, expand_tail
from nas.cost.model import arch_cost, peak_act_bytes, weight_bytes_and_macs
from nas.errors import UsageError
from nas.space.file import Space
from nas.space.sample import (CHOICE_FIELD, COMPRESSION_PARAMS, KIND_PARAMS, STAGE_ORDER, _stage, sample_arch,
                              stage_bits_for)
from nas.space.scaling import scale_block
from nas.space.spec import ArchSpec

MAX_SWEEPS = 8
SCALING = ("alpha", "beta", "gamma", "phi")
FIELDS = ("weight_bytes", "macs", "peak_act_bytes")


@dataclass(frozen=True)
class Extreme:
    field: str
    value: int
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
    """The moves of the descent: {coordinate: [parameter assignments]}. Scaling is one
    coordinate (every combination of its parameters); so is each stage's kind with the
    parameters only that kind takes (`KIND_PARAMS`: from ir to dense the growth matters,
    not the expand ratio, so one at a time the descent would rarely change kind); every
    other parameter is its own."""
    scaling = [name for name in SCALING if name in choices]
    moves = {"scaling": [dict(zip(scaling, combo)) for combo in itertools.product(*(choices[n] for n in scaling))]}
    joint = set(scaling)
    for name in choices:
        if name.endswith(".kind"):
            stage = name[: -len("kind")]
            moves[name] = []
            for kind in choices[name]:
                names = [stage + p for p in KIND_PARAMS[kind] if stage + p in choices]
                joint.update(names)
                moves[name] += [{name: kind, **dict(zip(names, combo))}
                                for combo in itertools.product(*(choices[n] for n in names))]
            joint.add(name)
        elif name.endswith(".bits") and name[: -len("bits")] + "sparsity" in choices:
            # a stage's bits with its searched sparsity / codebook: those act only at w32a32,
            # so one at a time the descent would never leave a cheap quantized pick for them
            stage = name[: -len("bits")]
            names = [stage + p for p in COMPRESSION_PARAMS]
            joint.update(names + [name])
            moves[name] = [{name: label, **dict(zip(names, combo))} for label in choices[name]
                           for combo in (itertools.product(*(choices[n] for n in names)) if label == "w32a32"
                                         else [tuple(choices[n][0] for n in names)])]
    moves.update({name: [{name: v} for v in values] for name, values in choices.items() if name not in joint})
    return moves


class _Answers:
    """A trial that answers the decoder from a dict of parameters (what optuna's FixedTrial
    does, without importing optuna: `nas space show` starts in well under a second)."""

    def __init__(self, params: dict):
        self.params = params

    def suggest_categorical(self, name, choices):
        stage_pick = stage_bits_for(name, self.params, choices)  # per-block / per-layer bits, as `replay`
        if stage_pick is not None:
            return stage_pick
        value = self.params[name]
        if value not in choices:
            raise ValueError(f"parameter {name}={value!r}; expected one of {list(choices)}")
        return value


@dataclass
class _Piece:
    """A priced piece of a network (stem, one stage, or head + pool + classifier)."""

    graph: Graph
    output: int  # tensor id of the piece's output
    weight_bytes: int
    macs: int
    in_bits: int  # the width the piece's input is stored at: the widest of its readers here
    out_shape: tuple[int, int, int]
    peaks: dict  # {output storage bits: peak_act_bytes of the piece}

    def peak(self, out_bits: int | None) -> int:
        """Peak live bytes while the piece runs, its output stored at `out_bits` (None: as
        the piece resolves it, the logits' 32)."""
        if out_bits not in self.peaks:
            g = self.graph
            if out_bits is not None:
                bits = list(g.bits)
                bits[self.output] = out_bits
                g = Graph(shapes=g.shapes, bits=tuple(bits), ops=g.ops, input=g.input)
            self.peaks[out_bits] = peak_act_bytes(g)[0]
        return self.peaks[out_bits]


def _price(draw, in_shape) -> _Piece | None:
    """Expand one piece (`draw(net, x) -> output`) on an input of `in_shape` and price it;
    None when the graph refuses it (channels not divisible by a block's groups)."""
    net = GraphBuilder(PROJECT)
    x = net.tensor(in_shape)
    try:
        y = draw(net, x)
    except ValueError:
        return None
    g = net.graph(x)
    weight_bytes, macs = weight_bytes_and_macs(g)
    return _Piece(graph=g, output=y, weight_bytes=weight_bytes, macs=macs, in_bits=g.bits[x], out_shape=g.shapes[y],
                  peaks={})


class _Members:
    """Costs of members of one space, from memoised pieces (see the module docstring)."""

    def __init__(self, space: Space, in_chs: int | None, num_classes: int | None):
        self.space, self.in_chs, self.num_classes = space, in_chs, num_classes
        self.choices = parameter_choices(space)
        self.key_of = itemgetter(*self.choices)
        self.stage_key_of = [itemgetter(*[n for n in self.choices if n.startswith(f"s{i}.")])
                             for i in range(len(space.stages))]
        self.end_key_of = itemgetter(*[n for n in self.choices if not n.startswith("s") or n.startswith("stem.")])
        self.ends, self.stages, self.scaled, self.pieces, self.costs = {}, {}, {}, {}, {}
        self.by_spec = {}  # {(spec, in_shape): _Piece}: one pricing per distinct piece

    def cost(self, params: dict) -> tuple[int, int, int] | None:
        """(weight_bytes, macs, peak_act_bytes) of the member `params` decodes to; None when
        the decoder or the graph refuses it."""
        key = self.key_of(params)
        if key not in self.costs:
            self.costs[key] = self._cost(params)
        return self.costs[key]

    def _piece(self, key, spec, draw, in_shape) -> _Piece | None:
        key = (key, in_shape)
        if key not in self.pieces:
            by = (spec, in_shape)
            if by not in self.by_spec:
                self.by_spec[by] = _price(draw, in_shape)
            self.pieces[key] = self.by_spec[by]
        return self.pieces[key]

    def _stage_block(self, i, params, scaling, size):
        """Stage i's block scaled by `scaling` (`size`: its (width, depth)), or None when
        the decoder refuses it."""
        stage_key = (i, self.stage_key_of[i](params))
        if stage_key not in self.stages:
            try:
                self.stages[stage_key] = _stage(_Answers(params), i, self.space.stages[i])
            except UsageError:
                self.stages[stage_key] = None
        base = self.stages[stage_key]
        scaled_key = (stage_key, size)
        if scaled_key not in self.scaled:
            try:
                self.scaled[scaled_key] = None if base is None else scale_block(base, scaling, self.space.divisor)
            except UsageError:
                self.scaled[scaled_key] = None
        return scaled_key, self.scaled[scaled_key]

    def _cost(self, params):
        end_key = self.end_key_of(params)
        if end_key not in self.ends:
            try:
                s = sample_arch(self.space, _Answers(params), self.in_chs, self.num_classes)
            except UsageError:
                return None
            self.ends[end_key] = (s.scaling, (s.scaling.width, s.scaling.depth), s.arch)
        scaling, size, ref = self.ends[end_key]
        piece = self._piece(("stem", end_key), ("stem", ref.stem), lambda net, x: expand_stem(net, x, ref.stem),
                            (ref.in_chs, ref.resolution, ref.resolution))
        chain = [piece]
        for i in range(len(self.space.stages)):
            if piece is None:
                return None
            key, b = self._stage_block(i, params, scaling, size)
            if b is None:
                return None
            c = piece.out_shape[0]
            piece = self._piece(key, (i, b), lambda net, x: expand_stage(net, i, x, b, c), piece.out_shape)
            chain.append(piece)
        if piece is None:
            return None
        n = len(self.space.stages)
        piece = self._piece(("tail", end_key), ("tail", ref.head, ref.fc),
                            lambda net, x: expand_tail(net, x, ref.head, ref.fc, n), piece.out_shape)
        if piece is None:
            return None
        chain.append(piece)
        peak = max(p.peak(q.in_bits) for p, q in zip(chain, chain[1:]))
        return (sum(p.weight_bytes for p in chain), sum(p.macs for p in chain), max(peak, piece.peak(None)))


CostCache = dict  # {(id(space), in_chs, num_classes): _Members}


def extreme(space: Space, field: str, largest: bool = False, in_chs: int | None = None,
            num_classes: int | None = None, cache: CostCache | None = None) -> Extreme:
    """The cheapest (or largest) member by `field`. Pass one `cache` dict to several calls
    over the same space to share the priced pieces."""
    if field not in FIELDS:
        raise ValueError(f"extreme: field={field!r}; expected one of {list(FIELDS)}")
    cache = {} if cache is None else cache
    key = (id(space), in_chs, num_classes)
    if key not in cache:
        cache[key] = _Members(space, in_chs, num_classes)
    members = cache[key]
    choices, index, sign = members.choices, FIELDS.index(field), -1.0 if largest else 1.0
    moves = coordinates(choices)

    def point(params):
        costs = members.cost(params)
        return (float("inf") if costs is None else sign * costs[index]), params

    def descend(start):
        score, params = start
        for _ in range(MAX_SWEEPS):
            improved = False
            for assignments in moves.values():
                for assignment in assignments:
                    trial_params = {**params, **assignment}
                    if trial_params != params:
                        candidate = point(trial_params)
                        if candidate[0] < score:
                            (score, params), improved = candidate, True
            if not improved:
                break
        return score, params

    while True:
        starts = [point({name: values[0] for name, values in choices.items()}),
                  point({name: values[-1] for name, values in choices.items()})]
        score, params = min((descend(s) for s in starts), key=lambda p: p[0])
        if score == float("inf"):
            raise UsageError(f"space {space.path}: no member found that decodes; expected a space with valid members")
        try:
            arch = sample_arch(space, _Answers(params), in_chs, num_classes).arch
            break
        except UsageError:  # the pieces passed, the whole network's checks did not (channels the
            members.costs[members.key_of(params)] = None  # base network's groups do not divide): not a member
    value = getattr(arch_cost(arch), field)
    if value != sign * score:  # the pieces and the whole network must agree to the byte
        raise AssertionError(f"extreme: {field} of the member found is {value} whole, {sign * score} by pieces")
    return Extreme(field=field, value=value, arch=arch)
