"""Predicted latency of an `ArchSpec` on a profiled device, and the device profile itself.

What is predicted (`latency_ms`): the wall time of one forward pass at batch 1 of the
*packed model* `nas infer` runs (`nas.export.deploy.packed_model`), on the device and thread
count the profile was measured on (`nas calibrate`, which times exactly that model). There,
per `nas.export.convert` and the one path predicate `nas.cost.kernel_path`:
2/4/8-bit convs / linears reading a 2/4/8-bit PACT input run on the integer C kernels
(BN folded, ReLU / h-swish fused, integer from layer to layer where consecutive layers are,
the block's residual added in the epilogue where the last layer is integer); 1-bit layers
on the packed-binary kernels where they apply (a_bits = 1, groups = 1, CPU, kernels built),
else the packed module's torch fallback; everything else in PyTorch on dequantized,
BN-folded weights. `deployment` reads that plan off the graph; docs/latency.md has the
terms and the held-out figures.

The model is additive over the cost model's per-op records (`nas.cost.arch_cost(arch).
layers`, never over modules): each op contributes one or more *terms*, each a linear
function of a few features of that op (non-negative coefficients, fitted by `nas calibrate`
with NNLS on networks measured end to end), plus one per-network constant::

    latency_ms = network + sum over ops of sum over the op's terms of  coef . features

An integer conv, for example, is priced as its kernel call (by class: pointwise, k x k,
depthwise, grouped, linear; features macs, input / output / weight elements), its input
quantization unless it reads the previous layer's codes (`int.quant`: float NCHW -> NHWC
codes, the float -> integer boundary), its output (`int.out.codes` when requantized for
the next integer layer, else `int.out.float`: the integer -> float boundary), a fused
residual (`int.residual`) and h-swish (`int.hswish`). A float conv is its F.conv2d by
class plus its input quantizer and activation. Each term has a per-call dispatch overhead
(the `1` feature: it dominates tiny networks) and per-element or per-MAC slopes. Features
are in units that keep coefficients readable: `mmacs` = MACs/1e6, `kin` / `kout` = input /
output elements/1e3, `kweights` = weight elements/1e3, `mwords` = 64-bit word operations
of the packed kernel/1e6, `taps` = k*k shift offsets, `kpixtaps` = output pixels x taps x
groups/1e3. A binary unit's sign-and-pack and its
residual add are fused into the kernel; they keep their own small terms (`sign.pack`:
NCHW -> packed NHWC; `add.fused`: the residual's layout change).

Profiles are JSON files (format below, `FORMAT_VERSION`), by default
`~/.cache/nas/profiles/<host>-<threads>t.json` (`$XDG_CACHE_HOME` respected; `NAS_PROFILE`
names another file). A command loads its profile once, at its edge (`profile_option` for its
`--profile FILE|none`; `find_profile` / `require_profile`), and passes it down explicitly
(`predict`); nothing below a command resolves a profile by itself. `profile_digest` names its
content, so that a study records which profile priced it.

Pure Python: no torch here (`nas.measure.calibrate` measures; this file only prices).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from nas import fsio
from nas.cost.kernel_path import layer_path, on_packed_kernels
from nas.errors import UsageError

FORMAT = "nas-device-profile"
FORMAT_VERSION = 5  # 3: the packed model (integer / binary kernels) is what is priced; 4: + int.split; 5: + int.w8; bump when TERMS or the feature definitions change
ENV_PROFILE = "NAS_PROFILE"
HINT = "re-run `nas calibrate`"

# term -> feature names, in coefficient order. Changing this table changes the format.
_EL = ("1", "kelems")
_CONV = ("1", "mmacs", "kin", "kout")
_INT = ("1", "mmacs", "kin", "kout", "kweights")
TERMS: dict[str, tuple[str, ...]] = {
    "network": ("1",),  # per forward pass: input check, module calls outside any op
    # float path (`nas.export.packed.float_layer`): F.conv2d / F.linear on the dequantized,
    # BN-folded weight with its bias, by class; also the conv proper of a 1-bit layer off the kernels
    "conv.pw": _CONV,  # 1x1, groups 1
    "conv.kxk": _CONV,  # k > 1, groups 1
    "conv.dw": _CONV,  # depthwise: groups = C_in = C_out
    "conv.grouped": _CONV,  # 1 < groups < C_in
    "conv.vec": ("1", "mmacs"),  # convs on 1x1 maps: squeeze-excite, post-pool conv
    "linear": ("1", "mmacs"),  # classifier
    "aq.pact": ("1", "kin"),  # a float layer's 2..8-bit PACT input: clamp, divide, round, multiply
    "aq.half": ("1", "kin"),  # 16-bit input: round through float16
    # integer path (`nas.export.packed.PackedIntegerConv2d`): one C kernel call, int32
    # accumulators, BN folded into the epilogue's scale / bias, ReLU fused there
    "int.pw": _INT,
    "int.kxk": _INT,
    "int.dw": _INT,
    "int.grouped": _INT,
    "int.linear": ("1", "mmacs", "kweights"),
    "int.quant": ("1", "kin"),  # float NCHW input -> NHWC codes (float -> integer boundary)
    "int.out.float": ("1", "kout"),  # float32 NHWC output, read by float ops (integer -> float boundary)
    "int.out.codes": ("kout",),  # requantized in the epilogue to the next integer layer's codes
    "int.hswish": ("kout",),  # h-swish in the epilogue
    # 8-bit weights on a byte-path level (AVX-512 VNNI): w_int = 2 s + 1, the sum of the inputs
    # over each output's receptive field read per output pixel (kpixtaps = pixels x taps x
    # groups / 1e3) and added to every output (kout); fits to 0 on levels without it
    "int.split": ("kpixtaps", "kout"),
    # 8-bit weights' MACs (not depthwise): on AVX2 the byte path (vpmaddubsw) is exact only for
    # codes within +-15, so 8-bit layers run the int16 path there, 2/4-bit ones the byte path;
    # fits near 0 where every width takes the same path per MAC
    "int.w8": ("mmacs",),
    "int.residual": ("1", "kout"),  # the block's shortcut added in the epilogue (NHWC copy of it)
    # 1-bit layers (`PackedBinaryConv2d`): on the packed kernels (BN folded into the epilogue) ...
    "binconv.kernel": ("1", "mwords", "ktaps", "kin", "kout", "kweights"),
    "sign.pack": _EL,  # NCHW float -> packed NHWC words (kernel path)
    "add.fused": _EL,  # a binary unit's shortcut, added inside the kernel (NHWC copy)
    # ... or off them (grouped / depthwise, or a_bits > 1): signs unpacked, F.conv2d, scale, bias
    "binconv.torch": ("1", "kweights", "kout"),
    "sign.fake": _EL,  # sign of the input (plus one-padding) on the fallback
    # activations a float / binary layer leaves after its folded BN
    "act.relu": _EL,
    "act.hswish": _EL,
    "act.sigmoid": _EL,
    "add": _EL,  # residual / shortcut add not fused into a kernel, kelems = output elements
    "mul": _EL,  # squeeze-excite gate
    "concat": _EL,  # dense blocks, kelems = output elements
    "avgpool": _EL,  # 2x2 / 2, ceil mode, kelems = input elements
    "pool.global": _EL,  # classifier's global pool + flatten
    "pool.se": _EL,  # squeeze-excite's mean
    "shift": ("1", "taps", "kelems"),  # pad, k*k slices, cat
    "shuffle": _EL,
    "shift.codes": ("1", "taps", "kelems"),  # on codes between two integer layers: one C pass
    "shuffle.codes": _EL,
}


# --- how the packed model runs each op -------------------------------------------------------

@dataclass(frozen=True)
class OpPath:
    """How the packed model (`nas.export.convert`) runs one cost op.

    `path`: conv / linear: "binary", "integer" or "float" (`nas.cost.kernel_path.layer_path`);
    None for the other ops. `codes_in` / `codes_out`: an integer layer reading the previous
    integer layer's codes / writing the next one's (`convert.chain_integer_layers`); a shift or
    shuffle with `codes_in` moves codes between two such layers.
    `residual`: an integer layer adding its block's shortcut in the epilogue
    (`convert.fuse_residual_adds`); `fused`: an add done inside a kernel (that layer's or a
    binary unit's)."""

    path: str | None = None
    codes_in: bool = False
    codes_out: bool = False
    residual: bool = False
    fused: bool = False


def _row(op, shapes) -> int:
    c_in = shapes[op.inputs[0]][0]
    return c_in if op.kind == "linear" else c_in // op.groups * op.kernel ** 2


def deployment(graph) -> dict[str, OpPath]:
    """Op name -> how the packed model runs it, from the graph alone (`nas.cost.graph.expand`).

    Mirrors the conversion (tests/test_latency.py holds the two equal on sampled networks of
    every shipped space): the path predicate is `kernel_path`'s; a block's residual add is
    fused when the op producing its branch is an integer layer without activation; an integer
    layer writes codes when its (fused) output is read by exactly one op and that op is an
    integer layer, looking through a grouped / sparse shift or a channel shuffle (they move
    codes as they would move values: `nas.export.convert.chain_integer_layers`)."""
    ops, shapes = graph.ops, graph.shapes
    by_name = {op.name: op for op in ops}
    names = set(by_name)
    producer = {op.output: op for op in ops}
    readers: dict[int, list] = {}
    for op in ops:
        for t in op.inputs:
            readers.setdefault(t, []).append(op)
    path = {op.name: layer_path(op.w_bits, op.read_bits[0], _row(op, shapes), op.dilation)
            for op in ops if op.kind in ("conv", "linear")}
    fused_adds, out_tensor = set(), {}
    for op in ops:
        if op.kind == "add" and op.name[: -len(".add")] not in names:  # a block's residual, not a unit's
            branch = producer.get(op.inputs[1])
            if branch is not None and path.get(branch.name) == "integer" and branch.act is None:
                fused_adds.add(op.name)
                out_tensor[branch.name] = op.output
    def sole_readers(t, movers: list) -> list:
        rs = readers.get(t, [])
        if len(rs) == 1 and (rs[0].kind == "shuffle" or (rs[0].kind == "shift" and not rs[0].float_params)):
            movers.append(rs[0].name)  # code-transparent: an active shift (learned offsets) is not
            return sole_readers(rs[0].output, movers)
        return rs

    codes_out, codes_in = set(), set()
    for name, p in path.items():
        if p != "integer":
            continue
        movers: list = []
        rs = sole_readers(out_tensor.get(name, by_name[name].output), movers)
        if len(rs) == 1 and path.get(rs[0].name) == "integer":
            codes_out.add(name)
            codes_in.update([rs[0].name, *movers])  # the movers run on codes (nas.kernels.integer)
    return {op.name: OpPath(path.get(op.name), op.name in codes_in, op.name in codes_out,
                            op.name in out_tensor, op.name in fused_adds) for op in ops}


# --- features: per-op records -> (term, features) -------------------------------------------

def _elems(shape) -> int:
    c, h, w = shape
    return c * h * w


def _conv_class(layer) -> str:
    """conv.vec / conv.pw / conv.kxk / conv.dw / conv.grouped"""
    c_in, h_in, w_in = layer.in_shapes[0]
    c_out, h, w = layer.out_shape
    if h * w == 1 and h_in * w_in == 1:
        return "conv.vec"
    if layer.groups == 1:
        return "conv.pw" if layer.kernel == 1 else "conv.kxk"
    if layer.groups == c_in == c_out:
        return "conv.dw"
    return "conv.grouped"


def kernel_path(layer, kernels: bool) -> bool:
    """Does this conv run on the packed-binary kernels (`nas.export.packed.PackedBinaryConv2d.kernel_ready`)?"""
    return kernels and layer.op == "conv" and on_packed_kernels(layer.w_bits, layer.a_bits, layer.groups)


def op_terms(layer, kernels: bool, records: dict | None = None, how: OpPath | None = None
             ) -> list[tuple[str, tuple[float, ...]]]:
    """The terms one op record (`nas.cost.LayerCost`) contributes, with their feature vectors.

    `kernels`: whether 1-bit convs run on the packed kernels on the profiled device.
    `records`: name -> record, for the whole network: a `sign` / `add` named after a conv
    (`X.sign`, `X.add`) belongs to that conv's binary unit, and a conv with a sign op of
    its own is a Bi-Real unit (BN folded into the kernel's epilogue). None: stand-alone op.
    `how`: the op's `OpPath` (`deployment`); None: its path from its own bits, nothing chained
    or fused.
    """
    kind = layer.op
    records = records or {}
    k_in = _elems(layer.in_shapes[0]) / 1e3
    k_out = _elems(layer.out_shape) / 1e3
    if how is None:
        row = layer.in_shapes[0][0] if kind == "linear" else layer.in_shapes[0][0] // max(layer.groups, 1) * layer.kernel ** 2
        how = OpPath(layer_path(layer.w_bits, layer.a_bits, row) if kind in ("conv", "linear") else None)
    if kind in ("conv", "linear"):
        return _weighted_terms(layer, kernels, records, k_in, k_out, how)
    if kind in ("sign", "add"):
        conv = records.get(layer.name.rsplit(".", 1)[0]) if layer.name.endswith(f".{kind}") else None
        on_kernel = conv is not None and kernel_path(conv, kernels)
        if kind == "sign":
            return [("sign.pack" if on_kernel else "sign.fake", (1.0, k_in))]
        if how.fused:
            return []  # added in the integer layer's epilogue (its int.residual term)
        return [("add.fused" if on_kernel else "add", (1.0, k_out))]
    if kind == "shuffle" and how.codes_in:
        return [("shuffle.codes", (1.0, k_out))]
    if kind in ("mul", "concat", "shuffle"):
        return [(kind, (1.0, k_out))]
    if kind == "avgpool":
        return [("avgpool", (1.0, k_in))]
    if kind == "global_pool":
        return [("pool.global" if layer.name == "global_pool" else "pool.se", (1.0, k_in))]
    if kind == "shift":
        return [("shift.codes" if how.codes_in else "shift", (1.0, float(layer.kernel ** 2), k_in))]
    # a new op kind must be taught here before it can be priced (never silently zero)
    raise ValueError(f"latency model: op kind {kind!r} of {layer.name!r} has no terms; expected one of "
                     "conv, linear, sign, add, mul, concat, avgpool, global_pool, shift, shuffle")


def _input_terms(layer, k_in: float) -> list:
    if 2 <= layer.a_bits <= 8:
        return [("aq.pact", (1.0, k_in))]
    if layer.a_bits == 16:
        return [("aq.half", (1.0, k_in))]
    return []


def _weighted_terms(layer, kernels: bool, records: dict, k_in: float, k_out: float, how: OpPath) -> list:
    """conv / linear on its path: the kernel or convolution proper, input, epilogue, activation."""
    c_in, c_out = layer.in_shapes[0][0], layer.out_shape[0]
    mmacs = layer.macs / 1e6
    if layer.op == "linear":
        k_w = c_in * c_out / 1e3
        cls = "linear"
    else:
        k_w = c_out * (c_in // layer.groups) * layer.kernel ** 2 / 1e3
        cls = _conv_class(layer)
    if how.path == "integer":
        if cls == "linear":
            terms = [("int.linear", (1.0, mmacs, k_w))]
        else:  # by structure (a conv on a 1x1 map is still a pointwise / k x k / ... kernel call)
            int_cls = ("int.pw" if layer.kernel == 1 else "int.kxk") if layer.groups == 1 else (
                "int.dw" if layer.groups == c_in == c_out else "int.grouped")
            terms = [(int_cls, (1.0, mmacs, k_in, k_out, k_w))]
        if not how.codes_in:
            terms.append(("int.quant", (1.0, k_in)))
        terms.append(("int.out.codes", (k_out,)) if how.codes_out else ("int.out.float", (1.0, k_out)))
        if how.residual:
            terms.append(("int.residual", (1.0, k_out)))
        if layer.act == "hswish":
            terms.append(("int.hswish", (k_out,)))
        if layer.w_bits == 8 and terms[0][0] != "int.dw":  # the byte path's split (depthwise: int16 path)
            h_out, w_out = layer.out_shape[1], layer.out_shape[2]
            taps = 1 if cls == "linear" else layer.kernel ** 2
            terms.append(("int.split", (h_out * w_out * taps * layer.groups / 1e3, k_out)))
            terms.append(("int.w8", (mmacs,)))
        return terms  # BN folded, ReLU / h-swish fused: nothing else runs
    conv_term = (cls, (1.0, mmacs) if cls in ("conv.vec", "linear") else (1.0, mmacs, k_in, k_out))
    unit = f"{layer.name}.sign" in records  # a Bi-Real unit's conv: its sign op is priced apart
    if how.path == "binary" and kernel_path(layer, kernels):
        h, w = layer.out_shape[1:]
        # 64-bit word operations: output pixels x taps x input words x output channels padded to 64
        blocks = h * w * layer.kernel ** 2 * math.ceil(c_out / 64)  # (pixel, tap, 64 output channels) steps
        mwords = blocks * math.ceil(c_in / 64) * 64 / 1e6
        terms = [("binconv.kernel", (1.0, mwords, blocks / 1e3, k_in, k_out, k_w))]
        if not unit:
            terms.append(("sign.pack", (1.0, k_in)))
    elif how.path == "binary":  # the packed module's torch fallback
        terms = [conv_term, ("binconv.torch", (1.0, k_w, k_out))]
        if layer.a_bits == 1:
            if not unit:
                terms.append(("sign.fake", (1.0, k_in)))
        else:
            terms += _input_terms(layer, k_in)
    else:  # float: dequantized weight, BN folded into it
        terms = [conv_term, *_input_terms(layer, k_in)]
    if not unit and layer.act in ("relu", "hswish", "sigmoid"):
        terms.append((f"act.{layer.act}", (1.0, k_out)))
    return terms


def _records(cost) -> dict:
    return {layer.name: layer for layer in cost.layers}


COLUMNS: tuple[tuple[str, str], ...] = tuple((t, f) for t, feats in TERMS.items() for f in feats)
_OFFSET = {}
for _i, (_t, _f) in enumerate(COLUMNS):
    _OFFSET.setdefault(_t, _i)


def _plan(arch, cost):
    """(cost, op name -> OpPath) of `arch` (`cost`: its `arch_cost`, when the caller has it)."""
    from nas.cost.graph import expand
    from nas.cost.model import graph_cost

    graph = expand(arch)
    return (cost if cost is not None else graph_cost(graph)), deployment(graph)


def feature_row(arch, kernels: bool, cost=None) -> list[float]:
    """One network's features summed per term: the row of the design matrix `nas calibrate`
    fits (columns `COLUMNS`; the additive model makes the network's latency coef . row)."""
    cost, plan = _plan(arch, cost)
    row = [0.0] * len(COLUMNS)
    row[_OFFSET["network"]] = 1.0
    records = _records(cost)
    for layer in cost.layers:
        for term, feats in op_terms(layer, kernels, records, plan.get(layer.name)):
            base = _OFFSET[term]
            for j, v in enumerate(feats):
                row[base + j] += v
    return row


# --- the profile ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Profile:
    """A device profile: the fitted model plus where and how it was measured.

    `coefs`: term -> coefficients in `TERMS[term]` order (ms per feature unit).
    `machine`: host, cpu_model, cores, device, threads, torch, kernels (ISA of the packed
    kernels, None when 1-bit layers ran on the fake-quant path). `protocol`: how timings were
    taken. `stats`: fit / held-out / baseline figures and noise. `path`: where it was read
    from (not stored).
    """

    coefs: dict[str, tuple[float, ...]]
    machine: dict
    protocol: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    created: str = ""
    path: str | None = field(default=None, compare=False)

    @property
    def kernels(self) -> bool:
        """Did 1-bit convs run on the packed kernels when this device was measured?"""
        return bool(self.machine.get("kernels"))

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": self.created,
            "machine": self.machine,
            "protocol": self.protocol,
            "model": {
                "description": "latency_ms = sum over ops of sum over the op's terms of coef . features "
                               "(nas/cost/latency.py); coefficients in ms per feature unit",
                "terms": {t: {"features": list(TERMS[t]), "coef": list(self.coefs[t])} for t in TERMS},
            },
            "stats": self.stats,
        }


def _bad(path, what: str) -> UsageError:
    return UsageError(f"device profile {path}: {what}; {HINT} to write a new one")


def profile_from_dict(d, path="<dict>") -> Profile:
    """Validate a profile's JSON object (raises UsageError naming `path` and the problem)."""
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise _bad(path, f"not a nas device profile (expected \"format\": \"{FORMAT}\")")
    version = d.get("format_version")
    if version != FORMAT_VERSION:
        raise _bad(path, f"format version {version!r} is not supported (this nas reads version {FORMAT_VERSION})")
    machine, model = d.get("machine"), d.get("model")
    if not isinstance(machine, dict) or not isinstance(model, dict) or not isinstance(model.get("terms"), dict):
        raise _bad(path, "missing 'machine' or 'model.terms'")
    terms = model["terms"]
    coefs = {}
    for t, feats in TERMS.items():
        entry = terms.get(t)
        if not isinstance(entry, dict) or entry.get("features") != list(feats):
            raise _bad(path, f"model term {t!r} is missing or has features {entry and entry.get('features')!r}, "
                             f"expected {list(feats)}")
        coef = entry.get("coef")
        if (not isinstance(coef, list) or len(coef) != len(feats)
                or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) and c >= 0
                           for c in coef)):
            raise _bad(path, f"model term {t!r}: coefficients {coef!r} are not {len(feats)} finite numbers >= 0")
        coefs[t] = tuple(float(c) for c in coef)
    unknown = sorted(set(terms) - set(TERMS))
    if unknown:
        raise _bad(path, f"unknown model terms {unknown}")
    threads = machine.get("threads")
    if not isinstance(threads, int) or threads < 1:
        raise _bad(path, f"machine.threads {threads!r} is not a thread count >= 1")
    return Profile(coefs=coefs, machine=machine, protocol=d.get("protocol") or {}, stats=d.get("stats") or {},
                   created=str(d.get("created", "")), path=str(path))


def save_profile(profile: Profile, path=None) -> Path:
    """Write `profile` as JSON (atomically; parent folders made). Returns the path written."""
    path = Path(path) if path is not None else default_profile_path(profile.machine.get("threads"),
                                                                     profile.machine.get("device", "cpu"))
    fsio.write_text(path, json.dumps(profile.to_dict(), indent=1) + "\n")
    return path


def load_profile(path) -> Profile:
    """Read and validate a profile; a missing, unreadable, corrupt or foreign-version file
    raises UsageError naming the file, the problem and the hint to re-run `nas calibrate`."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"no device profile at {path}; run `nas calibrate` to measure this device") from None
    except (OSError, UnicodeDecodeError) as e:
        raise _bad(path, f"cannot be read ({e.__class__.__name__}: {e})") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise _bad(path, f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    return profile_from_dict(d, path)


# --- where profiles live ------------------------------------------------------------------------

def default_threads() -> int:
    """The thread count torch picks by default here (OMP_NUM_THREADS, else the physical cores),
    computed without importing torch so that the profile's default name is found from anywhere."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return _physical_cores()


def _physical_cores() -> int:
    try:
        cores = set()
        phys = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "physical id":
                phys = value.strip()
            elif key == "core id":
                core = value.strip()
            elif not line.strip():
                if core is not None:
                    cores.add((phys, core))
                phys = core = None
        if core is not None:
            cores.add((phys, core))
        if cores:
            return len(cores)
    except OSError:
        pass
    return os.cpu_count() or 1


def host_name() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", socket.gethostname() or "host") or "host"


def profile_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "nas" / "profiles"


def default_profile_path(threads: int | None = None, device: str = "cpu") -> Path:
    """`$NAS_PROFILE` if set, else <cache>/nas/profiles/<host>-<threads>t.json
    (<host>-cuda.json for a CUDA device); threads default: `default_threads()`."""
    env = os.environ.get(ENV_PROFILE)
    if env:
        return Path(env).expanduser()
    if device == "cuda":
        return profile_dir() / f"{host_name()}-cuda.json"
    return profile_dir() / f"{host_name()}-{threads or default_threads()}t.json"


_CACHE: dict = {}  # resolved path -> (mtime_ns, size, Profile)


def _cached_load(path: Path) -> Profile:
    st = path.stat()
    key = str(path.resolve())
    hit = _CACHE.get(key)
    if hit is not None and hit[:2] == (st.st_mtime_ns, st.st_size):
        return hit[2]
    profile = load_profile(path)
    _CACHE[key] = (st.st_mtime_ns, st.st_size, profile)
    return profile


def require_profile(path=None) -> Profile:
    """The profile at `path` (default: `default_profile_path()`); UsageError when there is none
    ("no device profile ...; run `nas calibrate`") or it is corrupt / of another version."""
    p = Path(path).expanduser() if path is not None else default_profile_path()
    if not p.is_file():
        where = f" (${ENV_PROFILE})" if path is None and os.environ.get(ENV_PROFILE) else ""
        raise UsageError(f"no device profile at {p}{where}; run `nas calibrate` to measure this device "
                         f"(or set ${ENV_PROFILE} to a profile file)")
    return _cached_load(p)


def find_profile(path=None) -> Profile | None:
    """The profile at `path` (default: `default_profile_path()`), or None when there is no file
    there; a corrupt or foreign-version file raises UsageError as `require_profile` does."""
    p = Path(path).expanduser() if path is not None else default_profile_path()
    return _cached_load(p) if p.is_file() else None


def profile_option(value: str | None, required: str | None = None, option: str = "--profile") -> Profile | None:
    """The device profile a command's `--profile FILE|none` names, loaded once at the command's
    edge and then passed down: FILE; else (`value` None) `$NAS_PROFILE`, else this host's default
    file (`default_profile_path`), None when that file does not exist; None for 'none'.
    required: why the command needs one (then 'none' or a missing default file is a UsageError
    saying so). A missing FILE, or a corrupt / foreign-version profile: UsageError."""
    if value is not None and value.strip().lower() == "none":
        if required:
            raise UsageError(f"{option} none: {required}; expected a device profile file from `nas calibrate`")
        return None
    if value is not None and not value.strip():
        raise UsageError(f"{option} {value!r}: empty; expected a device profile file from `nas calibrate` or 'none'")
    return require_profile(value) if required or value is not None else find_profile()


def profile_digest(profile: Profile) -> str:
    """The first 12 hex digits of the sha256 of the profile's content (canonical JSON): two
    profiles price alike exactly when their digests agree. Where the file lies does not count."""
    text = json.dumps(profile.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# --- predictions --------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerLatency:
    name: str
    op: str
    ms: float
    terms: tuple[tuple[str, float], ...]  # (term, ms) behind `ms`


@dataclass(frozen=True)
class Prediction:
    """`total_ms` = `network_ms` + sum of the per-op `layers` (execution order)."""

    total_ms: float
    network_ms: float
    layers: tuple[LayerLatency, ...]


def predict(arch, profile: Profile, cost=None) -> Prediction:
    """Per-op and total predicted latency of `arch` on `profile`'s device (`cost`: its
    `arch_cost`, when the caller already has it)."""
    cost, plan = _plan(arch, cost)
    records = _records(cost)
    layers = []
    for layer in cost.layers:
        parts = []
        for term, feats in op_terms(layer, profile.kernels, records, plan.get(layer.name)):
            parts.append((term, sum(c * v for c, v in zip(profile.coefs[term], feats))))
        layers.append(LayerLatency(layer.name, layer.op, sum(ms for _, ms in parts), tuple(parts)))
    network = profile.coefs["network"][0]
    return Prediction(total_ms=network + sum(layer.ms for layer in layers), network_ms=network, layers=tuple(layers))


def predict_latency_ms(arch, profile: Profile, cost=None) -> float:
    """Predicted latency in milliseconds (see the module docstring for what is predicted)."""
    return predict(arch, profile, cost).total_ms


def latency_ms(arch, path=None, cost=None) -> float | None:
    """Predicted latency on the profile at `path` (default: this host's, `find_profile`), or None
    when no profile exists there; a corrupt profile raises UsageError. A convenience for scripts
    and tests: nothing in `nas` calls it (commands load their profile once, `profile_option`, and
    pass it down to `predict` / `predict_latency_ms`)."""
    profile = find_profile(path)
    return None if profile is None else predict_latency_ms(arch, profile, cost)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
