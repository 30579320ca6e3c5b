"""Search-space files: YAML data -> a validated `Space`. Safe loader; nothing is evaluated.

A space fixes the network's skeleton (stages with their base channels and strides) and
lists the choices the search may make. Every searchable field takes one value (fixed) or
a list (choices). Schema (unknown keys are errors, reported with file:line)::

    name: default
    input: {resolution: 28, channels: 1}   # the dataset's channels/classes override these
    num_classes: 10
    divisor: 8                 # channel rounding (grouped blocks' groups must divide it)
    min_end_bits: 8            # policy: stem and classifier use >= this many bits
    scaling: {alpha: [1.0, 1.2], beta: [1.0, 1.1], gamma: auto, phi: [0, 1], target: 2.0, tolerance: 0.05}
    stem: {channels: 16, kernel: 3, stride: 1, act: relu, bits: w8a8}
    stages:
      - {channels: 24, stride: 2, kinds: [ir, shift], repeats: [1, 2], kernel: [3, 5],
         expand: [3, 6], se: [0, 0.25], groups: [2, 4], growth: [8, 12],
         act: [relu, hswish], bits: [w8a8, w4a4]}
    head: {channels: [0, 128], act: relu, bits: w8a8}
    classifier: {bits: w8a8}

Scaling (`nas.space.scaling`; survey 000 ch. 3 sec. 2-6) has two modes:

- ``mode: compound`` (the default): the seed's constraint. alpha and beta are the search's
  choices; gamma is never a trial parameter but follows from them: ``gamma: auto`` (default)
  derives gamma = max(1, sqrt(target / (alpha * beta^2))), a list picks the listed value whose
  alpha * beta^2 * gamma^2 is nearest the target. Every (alpha, beta) pair must then meet
  |alpha * beta^2 * gamma^2 / target - 1| <= tolerance (default 0.05); a pair that cannot is
  one error at load time, with file:line. phi (the choices the search scales by) grows MACs by
  ~target^phi.
- ``mode: free``: four independent multipliers, as a space asks: alpha, beta, phi choices and
  gamma a list of choices too (or auto, derived as above); no constraint is checked.

Block variants are stage choices too: ``dilation: [1, 2]`` (ir / grouped / dense k x k convs)
and, for shift blocks, ``shift_frac: [1, 0.5]`` (sparse shift: the fraction of channels moved)
or ``active_shift: [0, 1]`` (learned fractional offsets); a stage offers one of the two shift
variants (an active shift moves every channel). Defaults (1, 1, 0) are never suggested, so a
space without them samples as before (search_spaces/dilated.yaml, search_spaces/shift.yaml).
``sparsity: [0, 0.5, 0.75, 0.9]`` and ``codebook: [0, 4, 5]`` (searched magnitude pruning and
k-means codebook bits of the stage's convs, docs/compression.md) are drawn only when the
stage's bits pick is w32a32 (else 0), after its other choices; they need w32a32 among the
stage's bits and ``bits_per: stage`` (search_spaces/mcu-sparse.yaml).

Bits are written ``w<W>a<A>``. ``bits_per: stage | block | layer`` (default ``stage``) is the
granularity the search picks them at (`nas.space.sample`): one pair per stage (each stage's
``bits`` list), one per block (repeat) of a stage, or one per conv layer; a stage's
layers are all 1-bit or none (`nas.space.spec`), so per-block / per-layer picks come from
the stage's pairs on the same side of that line as its first pick.
"""

import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from nas import limits
from nas.errors import UsageError
from nas.space.scaling import DEFAULT_TARGET, DEFAULT_TOLERANCE, constraint_gamma, flops_factor, meets_constraint
from nas.space.spec import ACTS, BITS, BLOCK_KINDS, MAX_CODEBOOK_BITS, STRIDES

SCALING_MODES = ("compound", "free")
BITS_PER = ("stage", "block", "layer")  # granularity of sampled bit widths

_BITS_RE = re.compile(r"w(\d+)a(\d+)")


class _LineLoader(limits.LimitedSafeLoader):
    """SafeLoader whose mappings remember the line of each key (for error messages), within the
    alias and depth limits."""


class _LineDict(dict):
    lines: dict


def _construct_mapping(loader, node, deep=False):
    loader.flatten_mapping(node)
    mapping = _LineDict()
    mapping.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(None, None, f"non-string key {key!r}", key_node.start_mark)
        if key in mapping:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.lines[key] = key_node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


@dataclass(frozen=True)
class StageChoices:
    channels: int
    stride: int
    kinds: tuple[str, ...]
    repeats: tuple[int, ...]
    kernel: tuple[int, ...]
    expand: tuple[float, ...]
    se: tuple[float, ...]
    groups: tuple[int, ...]
    growth: tuple[int, ...]
    act: tuple[str, ...]
    bits: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...] = (1,)  # ir / grouped / dense k x k conv dilation
    shift_frac: tuple[float, ...] = (1.0,)  # shift: fraction of channels shifted (< 1: sparse shift)
    active_shift: tuple[int, ...] = (0,)  # shift: 1 = active shift (learned fractional offsets)
    sparsity: tuple[float, ...] = (0.0,)  # w32a32 picks only: searched magnitude-pruning fraction
    codebook: tuple[int, ...] = (0,)  # w32a32 picks only: searched k-means codebook bits (0 = none)


@dataclass(frozen=True)
class EndChoices:
    """Stem, head or classifier choices."""

    channels: tuple[int, ...]
    kernel: int
    stride: int
    act: tuple[str, ...]
    bits: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Space:
    name: str
    path: str
    resolution: int
    in_chs: int
    num_classes: int
    divisor: int
    min_end_bits: int
    alpha: tuple[float, ...]
    beta: tuple[float, ...]
    gamma: tuple[float, ...] | None  # gamma as a trial parameter (mode free with a list); None: not suggested
    phi: tuple[float, ...]
    target: float
    stem: EndChoices
    stages: tuple[StageChoices, ...]
    head: EndChoices
    classifier: EndChoices
    scaling_mode: str = "compound"
    tolerance: float = DEFAULT_TOLERANCE  # compound: relative tolerance of alpha * beta^2 * gamma^2 on target
    gamma_grid: tuple[float, ...] | None = None  # compound: gamma picked from these (None: derived)
    bits_per: str = "stage"  # BITS_PER: bit widths sampled per stage, per block or per conv layer

    def gamma_for(self, alpha: float, beta: float) -> float:
        """The gamma a sample with (alpha, beta) gets when gamma is not a trial parameter."""
        return constraint_gamma(alpha, beta, self.target, self.gamma_grid)

    def possible_gammas(self) -> tuple[float, ...]:
        """Every gamma a sample of this space can get."""
        if self.gamma is not None:
            return self.gamma
        return tuple(sorted({self.gamma_for(a, b) for a in self.alpha for b in self.beta}))


class _Reader:
    """Walks the YAML tree, producing errors that name file:line and the key path."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, mapping, key, path: str, message: str) -> UsageError:
        line = getattr(mapping, "lines", {}).get(key)
        where = f"{self.path}:{line}" if line else self.path
        return UsageError(f"{where}: {path}: {message}")

    def mapping(self, parent, key, path, allowed, required=()):
        value = parent.get(key) if key is not None else parent
        if not isinstance(value, dict):
            raise self.fail(parent, key, path, f"{value!r} is not a mapping; expected keys {sorted(allowed)}")
        for k in value:
            if k not in allowed:
                raise self.fail(value, k, f"{path}.{k}", f"unknown key {k!r}; expected one of {sorted(allowed)}")
        for k in required:
            if k not in value:
                raise self.fail(parent, key, path, f"missing key {k!r}")
        return value

    def choices(self, m, key, path, kind, default, allowed=None, minimum=None):
        raw = m.get(key, default)
        values = raw if isinstance(raw, list) else [raw]
        if not values:
            raise self.fail(m, key, f"{path}.{key}", "empty list; expected at least one choice")
        out = []
        for v in values:
            v = self._convert(m, key, path, kind, v)
            if allowed is not None and v not in allowed:
                raise self.fail(m, key, f"{path}.{key}", f"{v!r} is not allowed; expected one of {list(allowed)}")
            if minimum is not None and v < minimum:
                raise self.fail(m, key, f"{path}.{key}", f"{v!r} is not allowed; expected >= {minimum}")
            limit = limits.MAGNITUDES.get(key)
            if limit is not None and isinstance(v, (int, float)) and abs(v) > limit:
                side = "over" if v > 0 else "under"
                raise self.fail(m, key, f"{path}.{key}", f"{v!r} is {side} the limit {math.copysign(limit, v):g} "
                                f"(docs/limits.md)")
            out.append(v)
        return tuple(out)

    def one(self, m, key, path, kind, default, allowed=None, minimum=None):
        if isinstance(m.get(key), list):
            raise self.fail(m, key, f"{path}.{key}", f"{m[key]!r} is a list; expected a single value")
        return self.choices(m, key, path, kind, default, allowed, minimum)[0]

    def _convert(self, m, key, path, kind, v):
        if kind == "bits":
            match = _BITS_RE.fullmatch(str(v))
            if not match or int(match[1]) not in BITS or int(match[2]) not in BITS:
                raise self.fail(m, key, f"{path}.{key}", f"{v!r} is not a bit-width pair; expected w<W>a<A> "
                                f"with W, A in {list(BITS)}, e.g. 'w8a8'")
            w, a = int(match[1]), int(match[2])
            if a == 1 and w != 1:
                raise self.fail(m, key, f"{path}.{key}", f"{v!r}: 1-bit activations need 1-bit weights; expected w1a1")
            return (w, a)
        if kind == "str":
            if not isinstance(v, str):
                raise self.fail(m, key, f"{path}.{key}", f"{v!r} is not a name")
            return v
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        if kind == "int":
            ok = ok and float(v).is_integer()
        if not ok or not math.isfinite(v):
            raise self.fail(m, key, f"{path}.{key}", f"{v!r} is not {'an integer' if kind == 'int' else 'a number'}")
        return int(v) if kind == "int" else float(v)


_TOP = {"name", "description", "input", "num_classes", "divisor", "min_end_bits", "scaling", "stem",
        "stages", "head", "classifier", "bits_per"}
_STAGE = {"channels", "stride", "kinds", "repeats", "kernel", "expand", "se", "groups", "growth", "act", "bits",
          "dilation", "shift_frac", "active_shift", "sparsity", "codebook"}


def load_space(path) -> Space:
    """Read and validate a search-space YAML file."""
    path = str(path)
    if not Path(path).is_file():
        raise UsageError(f"{path}: no such space file; expected a YAML file like search_spaces/default.yaml")
    try:
        text = limits.read_text(path, limits.MAX_YAML_BYTES, "space file")
        data = yaml.load(text, Loader=_LineLoader)  # noqa: S506 (safe subclass)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise UsageError(f"{path}{line}: malformed YAML: {e.problem or e.context}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: malformed YAML: {e}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping with keys {sorted(_TOP)}, got {type(data).__name__}")
    r = _Reader(path)
    top = r.mapping(data, None, "space", _TOP, required=("input", "stem", "stages"))
    inp = r.mapping(top, "input", "input", {"resolution", "channels"}, required=("resolution",))
    divisor = r.one(top, "divisor", "space", "int", 8, minimum=1)
    min_end_bits = r.one(top, "min_end_bits", "space", "int", 8, allowed=BITS)

    sc = r.mapping(top, "scaling", "scaling", {"mode", "alpha", "beta", "gamma", "phi", "target", "tolerance"}) \
        if "scaling" in top else _LineDict()
    mode = r.one(sc, "mode", "scaling", "str", "compound", allowed=SCALING_MODES)
    if mode == "free" and "tolerance" in sc:
        raise r.fail(sc, "tolerance", "scaling.tolerance", "a tolerance applies only to mode: compound "
                     "(mode: free checks no constraint); expected no tolerance key, or mode: compound")
    gamma = None if sc.get("gamma", "auto") == "auto" else r.choices(sc, "gamma", "scaling", "float", 1.0, minimum=1.0)

    def end(key, with_channels, default_channels, kernel, stride):
        m = r.mapping(top, key, key, ({"channels"} if with_channels else set()) | {"kernel", "stride", "act", "bits"}) \
            if key in top else _LineDict()
        bits = r.choices(m, "bits", key, "bits", f"w{min_end_bits}a{min_end_bits}")
        for w, a in bits:
            if min(w, a) < min_end_bits:
                raise r.fail(m, "bits", f"{key}.bits", f"w{w}a{a} is below the policy min_end_bits={min_end_bits}; "
                             f"expected both widths >= {min_end_bits}")
        return EndChoices(
            channels=r.choices(m, "channels", key, "int", default_channels, minimum=0) if with_channels else (0,),
            kernel=r.one(m, "kernel", key, "int", kernel, minimum=1),
            stride=r.one(m, "stride", key, "int", stride, allowed=STRIDES),
            act=r.choices(m, "act", key, "str", "relu", allowed=ACTS),
            bits=bits,
        )

    stages_raw = top["stages"]
    if not isinstance(stages_raw, list) or not stages_raw:
        raise r.fail(top, "stages", "stages", "expected a non-empty list of stage mappings")
    stages = []
    for i, raw in enumerate(stages_raw):
        p = f"stages[{i}]"
        s = r.mapping({i: raw}, i, p, _STAGE, required=("channels",))
        groups = r.choices(s, "groups", p, "int", 2, minimum=1)
        for g in groups:
            if divisor % g:
                raise r.fail(s, "groups", f"{p}.groups", f"{g} does not divide divisor={divisor}; expected a divisor of it")
        stages.append(StageChoices(
            channels=r.one(s, "channels", p, "int", None, minimum=1),
            stride=r.one(s, "stride", p, "int", 1, allowed=STRIDES),
            kinds=r.choices(s, "kinds", p, "str", "ir", allowed=BLOCK_KINDS),
            repeats=r.choices(s, "repeats", p, "int", 1, minimum=1),
            kernel=r.choices(s, "kernel", p, "int", 3, allowed=(1, 3, 5, 7)),
            expand=r.choices(s, "expand", p, "float", 1.0, minimum=1.0),
            se=r.choices(s, "se", p, "float", 0.0, minimum=0.0),
            groups=groups,
            growth=r.choices(s, "growth", p, "int", 8, minimum=1),
            act=r.choices(s, "act", p, "str", "relu", allowed=ACTS),
            bits=r.choices(s, "bits", p, "bits", "w32a32"),
            dilation=r.choices(s, "dilation", p, "int", 1, minimum=1),
            shift_frac=r.choices(s, "shift_frac", p, "float", 1.0),
            active_shift=r.choices(s, "active_shift", p, "int", 0, allowed=(0, 1)),
            sparsity=r.choices(s, "sparsity", p, "float", 0.0, minimum=0.0),
            codebook=r.choices(s, "codebook", p, "int", 0, allowed=tuple(range(MAX_CODEBOOK_BITS + 1))),
        ))
        _check_compression_axes(r, s, p, stages[-1], top)
        for f in stages[-1].shift_frac:
            if not 0.0 < f <= 1.0:
                raise r.fail(s, "shift_frac", f"{p}.shift_frac", f"{f!r} is not allowed; expected 0 < shift_frac <= 1")
        if 1 in stages[-1].active_shift and any(f != 1.0 for f in stages[-1].shift_frac):
            raise r.fail(s, "active_shift", f"{p}.active_shift", "an active shift moves every channel, so it cannot "
                         "be drawn beside shift_frac < 1; expected one of the two variants per stage")
        for se in stages[-1].se:
            if se >= 1:
                raise r.fail(s, "se", f"{p}.se", f"{se} is not allowed; expected 0 <= se < 1")

    space = Space(
        name=str(top.get("name", Path(path).stem)),
        path=path,
        resolution=r.one(inp, "resolution", "input", "int", None, minimum=1),
        in_chs=r.one(inp, "channels", "input", "int", 1, minimum=1),
        num_classes=r.one(top, "num_classes", "space", "int", 10, minimum=2),
        divisor=divisor,
        min_end_bits=min_end_bits,
        alpha=r.choices(sc, "alpha", "scaling", "float", 1.0, minimum=1.0),
        beta=r.choices(sc, "beta", "scaling", "float", 1.0, minimum=1.0),
        gamma=gamma if mode == "free" else None,
        phi=r.choices(sc, "phi", "scaling", "float", 0.0),
        target=r.one(sc, "target", "scaling", "float", DEFAULT_TARGET, minimum=1.0),
        stem=end("stem", True, 16, 3, 1),
        stages=tuple(stages),
        head=end("head", True, 0, 1, 1),
        classifier=end("classifier", False, 0, 1, 1),
        scaling_mode=mode,
        tolerance=r.one(sc, "tolerance", "scaling", "float", DEFAULT_TOLERANCE, minimum=0.0),
        gamma_grid=gamma if mode == "compound" else None,
        bits_per=r.one(top, "bits_per", "space", "str", "stage", allowed=BITS_PER),
    )
    _check_scaled_resolution(r, sc, space)
    if mode == "compound":
        _check_constraint(r, sc, space)
    return space


def _check_compression_axes(r: "_Reader", s, p: str, st: StageChoices, top) -> None:
    """``sparsity`` / ``codebook``: drawn only where the stage's bits pick is w32a32 (a DoReFa
    layer has no zero level to prune to), at the stage's granularity."""
    for f in st.sparsity:
        if not 0.0 <= f < 1.0:
            raise r.fail(s, "sparsity", f"{p}.sparsity", f"{f!r} is not allowed; expected 0 <= sparsity < 1")
    defaults = {"sparsity": (0.0,), "codebook": (0,)}
    axes = [k for k in defaults if k in s and getattr(st, k) != defaults[k]]
    if not axes:
        return
    if (32, 32) not in st.bits:
        raise r.fail(s, axes[0], f"{p}.{axes[0]}", f"{list(getattr(st, axes[0]))} needs w32a32 among the stage's bits "
                     f"{['w%da%d' % b for b in st.bits]}; searched pruning and codebooks apply only to full-precision layers")
    if top.get("bits_per", "stage") != "stage":
        raise r.fail(s, axes[0], f"{p}.{axes[0]}", f"is drawn per stage; expected bits_per: stage, "
                     f"not {top.get('bits_per')!r}")


def _check_constraint(r: "_Reader", sc, space: "Space") -> None:
    """Every (alpha, beta) the search may draw must admit a gamma >= 1 with alpha * beta^2 * gamma^2
    within tolerance of the target; otherwise the space cannot meet its own constraint."""
    for a in space.alpha:
        for b in space.beta:
            g = space.gamma_for(a, b)
            if not meets_constraint(a, b, g, space.target, space.tolerance):
                key = next((k for k in ("target", "alpha", "beta", "gamma") if k in sc), None)
                source = f"from {list(space.gamma_grid)}" if space.gamma_grid else "derived, >= 1"
                raise r.fail(sc, key, "scaling", f"alpha={a:g}, beta={b:g} cannot meet alpha*beta^2*gamma^2 = "
                             f"{space.target:g} within {space.tolerance:.0%}: the best gamma ({source}) is {g:g}, "
                             f"giving {flops_factor(a, b, g):.3f}; expected every alpha/beta pair to admit a gamma "
                             f"(change alpha, beta or gamma, or set mode: free)")


def _check_scaled_resolution(r: "_Reader", sc, space: "Space") -> None:
    """A negative phi shrinks the input (resolution x gamma^phi): the smallest scaled resolution
    must stay >= 1, or every sampled member would fail later as 'resolution=0', far from the file."""
    low_phi = min(space.phi)
    if low_phi >= 0:
        return
    gamma = max(space.possible_gammas())  # the largest gamma shrinks the most
    smallest = int(round(space.resolution * gamma**low_phi))
    if smallest < 1:
        raise r.fail(sc, "phi", "scaling.phi", f"{low_phi!r} shrinks the input resolution {space.resolution} "
                     f"to {smallest} (gamma {gamma!r}); expected a phi that keeps it >= 1")
