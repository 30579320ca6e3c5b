"""Arch strings: the one-line record of a network, and the only decoder of it.

Extends timm's block-string grammar (``ir_r2_k3_s2_e6_c24_se0.25``) with block kinds,
per-block bit widths and the network's ends. Segments are joined by ``-``; each segment
is a kind followed by ``_``-separated tokens ``<key><number>`` (or a bare flag)::

    in_r28_c1-stem_c16_k3_s1_w8_a8-ir_r1_k3_s1_e1_c16_w8_a8-shift_r2_k3_s2_e3_c32_w4_a4
      -grouped_r2_k3_s1_g4_c64_w8_a8-dense_r3_k3_s2_gr12_c64_w1_a1-head_c128_w8_a8-fc_n10_w8_a8

Keys: r repeats (``in``: resolution), c channels, k kernel, s stride, e expansion ratio,
se squeeze-excite ratio, d dilation of the k x k conv (ir, grouped, dense; omitted when 1), sf shifted fraction of a shift block
(sparse shift; omitted when 1), as1 active shift (learned offsets; omitted when 0), p searched sparsity
of a w32 a32 stage's convs in percent (p75 = 0.75; omitted when 0), cb bits of their k-means codebook
(omitted when 0), g groups, gr growth, n classes, w weight bits, a activation bits;
flags ``hs`` = hard-swish activation, ``noact`` = none (ReLU otherwise). Omitted keys take the spec's default
(bits default to 32). Per-layer bits (block segments only): ``w`` / ``a`` take one value
for the whole stage (the compact form) or one per conv layer joined by ``x``, in execution
order (``nas.space.spec.block_layers`` per block), e.g. ``ir_r1_k3_s2_e3_c24_w8x4x8_a8``;
a list whose entries are all equal is written as the one value. `encode` writes every key in a fixed order, so
``encode(decode(s)) == s`` for canonical strings and ``decode(encode(spec)) == spec``.
"""

import re
from dataclasses import MISSING, fields

from decimal import Decimal

from nas.errors import UsageError, shown
from nas.space.spec import ArchSpec, BlockSpec, ConvSpec, FcSpec

# kind -> ordered {key: field name}; the order is the canonical order `encode` writes.
_BLOCK_KEYS = {"r": "repeats", "k": "kernel", "s": "stride", "e": "expand", "g": "groups",
               "gr": "growth", "c": "out_chs", "se": "se", "d": "dilation",
               "sf": "shift_frac", "as": "active_shift", "p": "sparsity", "cb": "codebook",
               "w": "w_bits", "a": "a_bits"}
_KEYS = {
    "in": {"r": "resolution", "c": "in_chs"},
    "stem": {"c": "out_chs", "k": "kernel", "s": "stride", "w": "w_bits", "a": "a_bits"},
    "head": {"c": "out_chs", "w": "w_bits", "a": "a_bits"},
    "fc": {"n": "num_classes", "w": "w_bits", "a": "a_bits"},
    "ir": {k: v for k, v in _BLOCK_KEYS.items() if k not in ("g", "gr", "sf", "as")},
    "shift": {k: v for k, v in _BLOCK_KEYS.items() if k not in ("se", "g", "gr", "d")},
    "grouped": {k: v for k, v in _BLOCK_KEYS.items() if k not in ("e", "se", "gr", "sf", "as")},
    "dense": {k: v for k, v in _BLOCK_KEYS.items() if k not in ("e", "se", "g", "sf", "as")},
}
_FLOAT_FIELDS = {"expand", "se", "shift_frac"}
_TOKEN = re.compile(r"([a-z]+)(\d+(?:\.\d+)?)?", re.ASCII)  # ASCII digits only: 'k３' is refused
_LIST_TOKEN = re.compile(r"([wa])(\d{1,2}(?:x\d{1,2})+)", re.ASCII)  # per-layer bits: 'w8x4x8'
_LIST_FIELDS = {"w_bits": "layer_w_bits", "a_bits": "layer_a_bits"}
_FLAGS = {"hs": ("act", "hswish"), "noact": ("act", "none")}
_HAS_ACT = {"stem", "head", "ir", "shift", "grouped", "dense"}
_BLOCK_KINDS = ("ir", "shift", "grouped", "dense")


def _fail(text: str, pos: int, message: str) -> UsageError:
    return UsageError(f"arch string at position {pos} ({shown(text[pos:pos + 24])}...): {message}")


def _parse_segment(text: str, start: int, segment: str) -> tuple[str, dict]:
    parts = segment.split("_")
    kind, pos = parts[0], start + len(parts[0]) + 1
    if kind not in _KEYS:
        raise _fail(text, start, f"unknown segment kind {shown(kind)}; expected one of {list(_KEYS)}")
    keys, values = _KEYS[kind], {}
    for token in parts[1:]:
        m = _TOKEN.fullmatch(token)
        listed = _LIST_TOKEN.fullmatch(token) if kind in _BLOCK_KINDS else None
        if listed is not None:
            key, name = listed[1], _LIST_FIELDS[keys[listed[1]]]
            if name in values or keys[key] in values:
                raise _fail(text, pos, f"key {key!r} given twice in a {kind!r} segment")
            values[name] = tuple(int(v) for v in listed[2].split("x"))
            pos += len(token) + 1
            continue
        if m is None:
            raise _fail(text, pos, f"malformed token {shown(token)}; expected <key><number>, e.g. 'k3' or 'se0.25'")
        key, number = m.groups()
        if number is None and key in _FLAGS and kind in _HAS_ACT:
            name, value = _FLAGS[key]
        elif key in keys and number is not None:
            name = keys[key]
            if name == "sparsity":  # a percentage: exact decimal arithmetic, so p90 is 0.9 and back
                value = float(Decimal(number) / 100)
            else:
                value = float(number) if name in _FLOAT_FIELDS else _to_int(text, pos, token, number)
        else:
            allowed = list(keys) + (list(_FLAGS) if kind in _HAS_ACT else [])
            raise _fail(text, pos, f"unknown key {shown(token)} in a {kind!r} segment; expected one of {allowed}")
        if name in values or _LIST_FIELDS.get(name) in values:
            raise _fail(text, pos, f"key {key!r} given twice in a {kind!r} segment")
        values[name] = value
        pos += len(token) + 1
    return kind, values


def _to_int(text: str, pos: int, token: str, number: str) -> int:
    if "." in number:
        raise _fail(text, pos, f"{shown(token)} needs a whole number")
    if len(number) > 9:
        raise _fail(text, pos, f"{shown(token)} is too large; expected at most 9 digits")
    return int(number)


def decode(text: str) -> ArchSpec:
    """Arch string -> ArchSpec. Raises UsageError naming the position of a bad token."""
    if not isinstance(text, str) or not text.strip():
        raise UsageError("arch string: empty; expected segments like 'in_r28_c1-stem_c16-ir_c16-fc_n10'")
    text = text.strip()
    segments, pos = [], 0
    for segment in text.split("-"):
        if not segment:
            raise _fail(text, pos, "empty segment (two '-' in a row?)")
        segments.append((pos, *_parse_segment(text, pos, segment)))
        pos += len(segment) + 1
    kinds = [kind for _, kind, _ in segments]
    for end in ("in", "stem", "head", "fc"):
        if kinds.count(end) != 1:
            raise UsageError(f"arch string: expected exactly one {end!r} segment, found {kinds.count(end)}")
    expected_order = ["in", "stem"] + ["block"] * (len(kinds) - 4) + ["head", "fc"]
    for (p, kind, _), want in zip(segments, expected_order):
        if (kind in ("in", "stem", "head", "fc")) != (want != "block") or (want != "block" and kind != want):
            raise _fail(text, p, f"segment {kind!r} out of order; expected in, stem, blocks..., head, fc")
    by_kind = {kind: (p, values) for p, kind, values in segments}
    blocks = tuple(_make(text, p, BlockSpec, f"block {i}: ", kind=kind, **values)
                   for i, (p, kind, values) in enumerate(segments[2:-2]))
    (in_pos, in_values), (fc_pos, fc_values) = by_kind["in"], by_kind["fc"]
    for p, values, key in ((in_pos, in_values, "resolution"), (in_pos, in_values, "in_chs"),
                           (fc_pos, fc_values, "num_classes")):
        if key not in values:
            token = {"resolution": "r", "in_chs": "c", "num_classes": "n"}[key]
            raise _fail(text, p, f"missing key {token!r} ({key}) in this segment")
    stem = _make(text, by_kind["stem"][0], ConvSpec, **by_kind["stem"][1])
    head = _make(text, by_kind["head"][0], ConvSpec, kernel=1, **{"out_chs": 0, **by_kind["head"][1]})
    fc = _make(text, fc_pos, FcSpec, **fc_values)
    return _make(text, in_pos, ArchSpec, resolution=in_values["resolution"], in_chs=in_values["in_chs"],
                 stem=stem, blocks=blocks, head=head, fc=fc)


def _make(text: str, pos: int, cls, where: str = "", **values):
    """Construct a spec, pointing a validation error at its segment (and `where`, e.g. the block)."""
    try:
        return cls(**values)
    except UsageError as e:
        raise _fail(text, pos, where + str(e)) from None
    except TypeError:  # a required field is missing: name its key
        keys = {name: key for table in _KEYS.values() for key, name in table.items()}
        missing = [f.name for f in fields(cls) if f.name not in values and f.default is MISSING
                   and f.default_factory is MISSING]
        raise _fail(text, pos, f"missing key(s) {[keys.get(m, m) for m in missing]} ({', '.join(missing)})") from None


def _number(value) -> str:
    """Floats as the shortest positional digits that read back as the same float: never an
    exponent ('1e-07' is no token the decoder accepts) and never rounded ('g' keeps 6 digits)."""
    if not isinstance(value, float):
        return str(value)
    # the shortest digits that read back as the same float (repr), written without an exponent
    return format(Decimal(repr(value)).normalize(), "f")


def _segment(kind: str, spec, skip=()) -> str:
    tokens = [kind]
    for key, name in _KEYS[kind].items():
        value = getattr(spec, name)
        if name in skip or (name == "se" and not value) or (name == "dilation" and value == 1) \
                or (name == "shift_frac" and value == 1.0) or (name in ("active_shift", "sparsity", "codebook")
                                                               and not value):
            continue
        if name == "sparsity":
            tokens.append(f"{key}{format((Decimal(repr(value)) * 100).normalize(), 'f')}")
            continue
        listed = getattr(spec, _LIST_FIELDS[name], ()) if name in _LIST_FIELDS else ()
        tokens.append(f"{key}{'x'.join(str(v) for v in listed)}" if listed else f"{key}{_number(value)}")
    if kind in _HAS_ACT and spec.act != "relu":
        tokens.append({value: flag for flag, (_, value) in _FLAGS.items()}[spec.act])
    return "_".join(tokens)


def encode_block(block: BlockSpec) -> str:
    """One block segment, e.g. 'ir_r2_k3_s2_e6_c24_se0.25_w8_a8'."""
    return _segment(block.kind, block)


def encode(arch: ArchSpec) -> str:
    """ArchSpec -> canonical arch string."""
    segments = [f"in_r{arch.resolution}_c{arch.in_chs}", _segment("stem", arch.stem)]
    segments += [encode_block(b) for b in arch.blocks]
    segments += [_segment("head", arch.head), _segment("fc", arch.fc)]
    return "-".join(segments)
