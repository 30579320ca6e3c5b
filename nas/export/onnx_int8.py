"""`model.int8.onnx`: the packed model as QDQ ONNX (opset 21) that onnxruntime runs on int8 kernels.

What it holds, per quantized layer (the payload records, `nas.export.payload`; the model's
own clips and scales, nothing recalibrated; integer semantics as `nas.quant.integer`):

- input site, PACT at 2..8 bits: Clip(lo, α) -> QuantizeLinear(s_x = α / steps, uint8)
  -> DequantizeLinear with the trained clip α. Unsigned sites have zero point 0; signed
  ones 128 (codes -127..127 as uint8 1..255: onnxruntime runs int8 activations in float on
  x86). The Clip keeps k < 8-bit codes in range and is left out where the Q's own range is
  already [lo, α] (8-bit unsigned). 16 bits: Cast to float16 and back; 32: nothing; 1 bit:
  sign (0 -> +1) and the one-padding as an explicit Pad.
- weights, per output channel through DequantizeLinear(axis=0):
  * 1, 2 and 4 bits: exact. w_int = 2q - L (±1 at 1 bit) times the largest whole K_c
    keeping it within ±63 (`SATURATION_FREE`), at scale (m_c / L) / K_c (`_widened`): the
    same products, K_c times finer bias resolution;
  * 8 bits: w_int = 2q - L is odd in -255..255, not an int8. Stored as
    r = round_half_even(w_int / 2), clamped to -128..127, at scale 2 m_c / L: NOT exact
    (each weight moves by one DoReFa level, m_c / L, at most); measured, see
    docs/deploy-onnx.md for why the exact split w_int = 2s + 1 is not used;
  * where the conv runs on int8 kernels, codes within ±63 (every 1/2/4-bit layer) are
    stored as int8 at zero point 0, the others (8-bit layers) as uint8 at zero point 128
    (`WEIGHT_ZERO_POINT`). Without VNNI, onnxruntime's u8 x s8 kernel sums pairs of products
    in saturating int16 (vpmaddubsw): 2 · 255 · 63 = 32,130 cannot overflow, int8 weights near
    ±127 can; its u8 x u8 kernel does not saturate, but with VNNI it runs at about half the
    speed of u8 x s8 (docs/deploy-onnx.md). Same values, same DequantizeLinear semantics;
  * 16 / 32 bits (SE convs' float inputs too): float conv, weights float or DQ'd.
- bias: int32 at scale s_x · s_w[c] where the conv runs on int8 kernels (rounded: at most
  half of s_x · s_w[c]), float32 elsewhere.
- int8 convs whose output does not go straight (or through a ReLU) into a QuantizeLinear
  get one: onnxruntime fuses a conv to QLinearConv only then. Its zero point is that of
  the first quantizer downstream and its scale that quantizer's step / n, n odd and as
  large as uint8 allows (`refinement`: exact for everything that only moves values: ReLU,
  Pad, Slice, Concat, Reshape, Transpose in shift, shuffle and dense blocks). Where an Add
  (residual), HardSwish, the SE gate or a pool lies between, the value is rounded once more
  than in the packed model (by at most half of that finer step).
- 1-bit layers with 1-bit (sign) inputs: ±1 int8 weights, correct but not packed, run as a
  float conv on the ±1 input (exact: integer sums); the manifest lists them.

The network's structure comes from the one builder: the packed model (`deploy.packed_model`)
is traced by torch's ONNX exporter with each quantized layer replaced by a placeholder
node (`nas::Layer`), and this module writes every quantized node itself with
`onnx.helper` in the placeholder's place. Writing the whole graph by hand would restate
every block kind's forward a second time.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nas.errors import UsageError

OPSET = 21
FILE = "model.int8.onnx"
WEIGHT_ZERO_POINT = 128  # 8-bit layers' int8 weight codes stored as uint8 + 128: see _weights
SATURATION_FREE = 63  # weights within ±63 are stored as int8: no u8 x s8 pair sum can saturate int16
# The stated fixed overhead of the file over the weights (tests/test_onnx_int8.py: size <=
# 1.15 x weight_bytes + this): the graph's nodes, attributes and names, the initializers'
# headers, the activation scales. Measured: 23 kB for a 384-node, 13-layer 8-bit model.
GRAPH_OVERHEAD_BYTES = 48_000
MAX_BITS = 8  # every layer at or below this many weight bits, or no int8 model
DOMAIN = "nas"  # the placeholder nodes' domain (never left in a written file)
LAYER_OPS = ("Conv", "Gemm")  # the op a quantized layer becomes
RELU_LIKE = {"Relu"}  # commute with rounding onto a grid that holds 0
SHAPE_OPS = {"Pad", "Slice", "Split", "Concat", "Reshape", "Transpose", "Flatten", "Identity", "Squeeze",
             "Unsqueeze", "MaxPool"}  # move values without changing them: rounding before = rounding after


def refusal(geoms) -> str | None:
    """Why a model with these layer geometries gets no int8 ONNX, or None."""
    wide = [g for g in geoms if g.bits > MAX_BITS]
    if wide:
        return (f"layer {wide[0].name} has {wide[0].bits}-bit weights ({len(wide)} layer(s) above {MAX_BITS} bits); "
                f"int8 ONNX holds layers of 1..{MAX_BITS} bits")
    return None


# ---- per-layer data ------------------------------------------------------------------------

@dataclass
class _Layer:
    """What the ONNX nodes of one quantized conv / linear need (from its payload record)."""

    name: str
    kind: str  # conv | linear
    w_bits: int
    a_bits: int
    signed: bool
    clip: float | None
    weight: np.ndarray  # int8 codes (1..8 bits) or float32, (C_out, C_in_g, kh, kw) / (C_out, C_in_g)
    w_scale: np.ndarray | None  # (C_out,) float32 for int8 weights
    bias: np.ndarray  # (C_out,) float32
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1

    @property
    def int8_input(self) -> bool:
        """Input codes as uint8 through Q / DQ (PACT sites)."""
        return 2 <= self.a_bits <= 8

    @property
    def int8_kernel(self) -> bool:
        """Runs on onnxruntime's int8 kernels: int8 weights and an int8 input."""
        return self.int8_input and self.w_bits <= MAX_BITS

    @property
    def weight_dtype(self) -> str:
        """How the file stores the weights (see the module docstring): int8 where no kernel can
        saturate on them or the conv runs in float, uint8 at zero point 128 otherwise."""
        if self.w_scale is None:
            return "float32"
        if self.int8_kernel and np.abs(self.weight).max(initial=0) > SATURATION_FREE:
            return "uint8 (zero point 128)"
        return "int8"

    def act_scale(self) -> np.float32:
        from nas.quant.integer import act_scale

        return np.float32(act_scale(self.clip, self.a_bits, self.signed).item())


def eight_bit_int8(w_int: np.ndarray) -> np.ndarray:
    """8-bit DoReFa w_int (odd, -255..255) -> int8 at twice the scale: round half to even, clamped."""
    return np.clip(np.rint(w_int / 2.0), -128, 127).astype(np.int8)


def _widened(w_int: np.ndarray, scale: np.ndarray, widen: bool = True, limit: int = 127
              ) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights, scale) holding w_int · scale exactly with w_int times the largest whole
    K_c that stays within ±limit, per output channel. Exact (K_c is an integer), and it makes
    the scale K_c times finer: QLinearConv's int32 bias is rounded at s_x · scale, so a
    2-bit layer's bias goes from a third of a level to a 63rd (limit 63). `widen` False: K_c = 1
    (a float conv: the dequantized weight is then exactly w_int · scale)."""
    k = limit // np.maximum(np.abs(w_int).max(axis=1), 1) if widen else np.ones(w_int.shape[0], np.int64)
    return (w_int * k[:, None]).astype(np.int8), (scale / k.astype(np.float32)).astype(np.float32)


def int8_layer(rec, module: nn.Module, limit: int = 127) -> _Layer:
    """One payload record as the int8 table holds it (weights, scales, bias, site); shared with
    `nas.export.tflite`. `limit`: how far 1/2/4-bit weights are widened (`_widened`)."""
    g = rec.geom
    w_shape = (g.c_out, g.c_in_g) if g.kind == "linear" else (g.c_out, g.c_in_g, g.k_h, g.k_w)
    widen = 2 <= g.a_bits <= 8  # the conv runs on int8 kernels
    if g.bits == 1:
        w_int = module.signs().numpy().astype(np.int32).reshape(g.c_out, -1)  # ±1
        weight, w_scale = _widened(w_int, rec.scale, widen, limit)
    elif g.bits < 8:
        levels = 2 ** g.bits - 1
        w_int = 2 * rec.weight.astype(np.int32) - levels  # (C_out, C_in_g * kh * kw), odd
        weight, w_scale = _widened(w_int, rec.scale / np.float32(levels), widen, limit)
    elif g.bits == 8:
        w_int = 2 * rec.weight.astype(np.int32) - 255
        weight, w_scale = eight_bit_int8(w_int), (rec.scale * np.float32(2.0 / 255)).astype(np.float32)
    else:
        weight, w_scale = module.weight.detach().float().numpy(), None
    weight = weight.reshape(w_shape)
    act = module.act_quant
    layer = _Layer(g.name, g.kind, g.bits, g.a_bits, bool(act.signed),
                   None if rec.clip is None else float(rec.clip), weight, w_scale, rec.bias.astype(np.float32))
    if g.kind == "conv":
        if g.bits == 1:
            k = (module.stride, module.stride)
            layer.stride, layer.padding, layer.groups = k, (module.padding, module.padding), module.groups
        else:
            layer.stride, layer.padding = tuple(module.stride), tuple(module.padding)
            layer.dilation, layer.groups = tuple(module.dilation), module.groups
    return layer


# ---- tracing the packed model with placeholders ----------------------------------------------

_TRACED: dict[int, torch.Tensor] = {}  # key -> the layer's output on the example (a shape for the trace)


class _Placeholder(torch.autograd.Function):
    """One quantized layer as a single `nas::Layer` node (key = its index) in the trace."""

    @staticmethod
    def forward(ctx, x, key: int):
        return _TRACED[key].clone()

    @staticmethod
    def symbolic(g, x, key: int):
        return g.op(f"{DOMAIN}::Layer", x, key_i=key).setType(x.type().with_sizes([None] + list(_TRACED[key].shape[1:])))


class _Stand(nn.Module):
    """Stands in for a packed layer: records its output on the example (`record`), then is
    traced as a placeholder. A binary layer's residual is added after, as its own Add."""

    def __init__(self, key: int, inner: nn.Module):
        super().__init__()
        self.key, self.inner, self.record = key, inner, True

    def forward(self, x, residual=None):
        if self.record:
            _TRACED[self.key] = y = self.inner(x)
        else:
            y = _Placeholder.apply(x, self.key)
        return y if residual is None else y + residual


def _traced_graph(model: nn.Module, names: list[str], example: torch.Tensor) -> "onnx.ModelProto":  # noqa: F821
    import io

    import onnx

    stands = [_Stand(key, model.get_submodule(name)) for key, name in enumerate(names)]
    for name, stand in zip(names, stands):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, stand)
    buf = io.BytesIO()
    try:
        with torch.no_grad():
            model(example)
        for stand in stands:
            stand.record = False
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), buf, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=20,
                              dynamo=False, custom_opsets={DOMAIN: 1})
    finally:
        _TRACED.clear()
    return onnx.load_from_string(buf.getvalue())


# ---- writing the quantized nodes --------------------------------------------------------------

class _Writer:
    """Appends nodes and initializers with unique names."""

    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0
        self.site_steps: dict[str, int] = {}  # a site's Q scale name -> its PACT steps

    def name(self, hint: str) -> str:
        self.n += 1
        return f"{hint}_{self.n}"

    def const(self, hint: str, array) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, outputs: list[str] | None = None, **attrs) -> str:
        from onnx import helper

        out = outputs or [self.name(hint)]
        name = hint if op_type in LAYER_OPS else ""  # the profiler reports a conv under its layer's name
        self.nodes.append(helper.make_node(op_type, inputs, out, name=name, **attrs))
        return out[0]


def _site(w: _Writer, x: str, layer: _Layer) -> str:
    """The layer's input quantizer: its output is the float value the conv reads."""
    from nas.quant.functions import act_steps

    h = layer.name
    if layer.a_bits == 32:
        return x
    if layer.a_bits == 16:
        return w.op("Cast", [w.op("Cast", [x], h + ".half", to=10)], h + ".float", to=1)
    if layer.a_bits == 1:  # sign with sign(0) = +1, then the one-padding
        x = w.op("Where", [w.op("GreaterOrEqual", [x, w.const(h + ".zero", np.float32(0))], h + ".ge0"),
                           w.const(h + ".one", np.float32(1)), w.const(h + ".minus_one", np.float32(-1))], h + ".sign")
        ph, pw = layer.padding
        if ph or pw:
            pads = np.array([0, 0, ph, pw, 0, 0, ph, pw], dtype=np.int64)
            x = w.op("Pad", [x, w.const(h + ".pads", pads), w.const(h + ".one_pad", np.float32(1))], h + ".pad")
        return x
    alpha = np.float32(layer.clip)
    scale, zp = layer.act_scale(), np.uint8(128 if layer.signed else 0)
    lo = np.float32(-alpha) if layer.signed else np.float32(0)
    q_low, q_high = (np.float32(0) - np.float32(zp)) * scale, (np.float32(255) - np.float32(zp)) * scale
    if not (lo <= q_low and alpha >= q_high):  # the Q's own saturation does not already clip to [lo, α]
        x = w.op("Clip", [x, w.const(h + ".lo", lo), w.const(h + ".clip", alpha)], h + ".clip")
    s, z = w.const(h + ".x_scale", scale), w.const(h + ".x_zero", zp)
    w.site_steps[s] = act_steps(layer.a_bits, layer.signed)
    return w.op("DequantizeLinear", [w.op("QuantizeLinear", [x, s, z], h + ".q"), s, z], h + ".dq")


def _weights(w: _Writer, layer: _Layer) -> tuple[str, str]:
    """(weight, bias) tensor names: DQ of int8 / int32 initializers, or float ones."""
    h = layer.name
    if layer.w_scale is None:
        return w.const(h + ".weight", layer.weight), w.const(h + ".bias", layer.bias)
    c_out = layer.weight.shape[0]
    if layer.int8_kernel and layer.weight_dtype == "int8":  # zero point 0
        stored, zero = layer.weight.astype(np.int8), [w.const(h + ".w_zero", np.zeros(c_out, np.int8))]
    elif layer.int8_kernel:  # uint8 at zero point 128 (see WEIGHT_ZERO_POINT)
        stored = (layer.weight.astype(np.int16) + WEIGHT_ZERO_POINT).astype(np.uint8)
        zero = [w.const(h + ".w_zero", np.full(c_out, WEIGHT_ZERO_POINT, np.uint8))]
    else:  # DQ -> float conv: int8, zero point left out (DequantizeLinear's default 0)
        stored, zero = layer.weight, []
    wdq = w.op("DequantizeLinear", [w.const(h + ".weight_q", stored), w.const(h + ".w_scale", layer.w_scale)] + zero,
               h + ".w", axis=0)
    if not layer.int8_kernel:
        return wdq, w.const(h + ".bias", layer.bias)
    b_scale = (layer.act_scale() * layer.w_scale).astype(np.float32)
    b_int = np.rint(layer.bias.astype(np.float64) / b_scale.astype(np.float64))
    b_int = np.clip(b_int, -2 ** 31, 2 ** 31 - 1).astype(np.int32)
    b_zero = [w.const(h + ".b_zero", np.zeros(c_out, np.int32))] if layer.kind == "linear" else []  # QGemm needs it
    bdq = w.op("DequantizeLinear", [w.const(h + ".bias_int32", b_int), w.const(h + ".b_scale", b_scale)] + b_zero,
               h + ".b", axis=0)
    return wdq, bdq


def _write_layer(w: _Writer, x: str, out: str, layer: _Layer) -> None:
    xq = _site(w, x, layer)
    wt, b = _weights(w, layer)
    if layer.kind == "linear":
        w.op("Gemm", [xq, wt, b], layer.name, outputs=[out], transB=1)
        return
    pads = [0, 0, 0, 0] if layer.a_bits == 1 else [layer.padding[0], layer.padding[1]] * 2
    w.op("Conv", [xq, wt, b], layer.name, outputs=[out], kernel_shape=list(layer.weight.shape[2:]),
         strides=list(layer.stride), pads=pads, dilations=list(layer.dilation), group=layer.groups)


# ---- the output quantizers onnxruntime needs for QLinearConv ------------------------------------

def _consumers(nodes) -> dict[str, list]:
    out: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _downstream_q(tensor: str, consumers) -> tuple[str, str, bool] | None:
    """(scale, zero point, exact) of the first QuantizeLinear reached from `tensor` (breadth
    first); exact when only value-preserving ops lie on the way. None when no Q is reached,
    or when a sign site (GreaterOrEqual) reads the value first: rounding would turn small
    negative values into 0, whose sign is +1."""
    frontier, seen = [(tensor, True)], {tensor}
    while frontier:
        nxt = []
        for t, exact in frontier:
            for n in consumers.get(t, []):
                if n.op_type == "QuantizeLinear":
                    return n.input[1], n.input[2], exact
                if n.op_type == "GreaterOrEqual":
                    return None
                keep = exact and (n.op_type == "Clip" or n.op_type in RELU_LIKE or n.op_type in SHAPE_OPS)
                for o in n.output:
                    if o not in seen:
                        seen.add(o)
                        nxt.append((o, keep))
        frontier = nxt
    return None


def refinement(steps: int, unsigned: bool) -> int:
    """n for an inserted output quantizer at 1/n of the downstream site's step: the largest
    odd n whose uint8 grid still spans the site's clip range. With n odd the site's rounding
    boundaries are midpoints of the finer grid too, so rounding to the fine grid first and
    then to the site's changes nothing; an Add / HardSwish / gate / pool in between sees a
    value off by at most half a fine step (1/n of the site's)."""
    n = (255 if unsigned else 128) // steps
    return n if n % 2 else n - 1


def _zero_at_min(zp_name: str, inits) -> bool:
    return int(np.asarray(inits[zp_name]).reshape(-1)[0]) == 0


def _add_output_quantizers(w: _Writer, nodes, int8_convs: dict[str, str], inits) -> list[dict]:
    """Insert Q -> DQ after every int8 conv whose output reaches no Q directly (see the module
    docstring). Returns, per conv, where its output quantizer comes from."""
    consumers = _consumers(nodes)
    report, extra = [], []
    for out, name in int8_convs.items():
        users = consumers.get(out, [])
        direct = len(users) == 1 and users[0].op_type == "QuantizeLinear"
        relu = (len(users) == 1 and users[0].op_type == "Relu" and len(consumers.get(users[0].output[0], [])) == 1)
        if relu:
            after = consumers[users[0].output[0]][0]
            if after.op_type == "QuantizeLinear" and _zero_at_min(after.input[2], inits):
                direct = True  # onnxruntime folds the ReLU into the Q
        if direct:
            report.append({"layer": name, "output_q": "own"})
            continue
        found = _downstream_q(out, consumers)
        if found is None:  # no Q downstream (QGemm's float logits), or a sign reads it: stays float
            report.append({"layer": name, "output_q": "none"})
            continue
        site_scale, zp, exact = found
        n = refinement(w.site_steps[site_scale], _zero_at_min(zp, inits))
        scale = w.const(name + ".out_scale", np.float32(inits[site_scale] / np.float32(n)))
        at = out
        if relu and _zero_at_min(zp, inits):
            at = users[0].output[0]  # quantize after the ReLU: conv + ReLU + Q fuse
        q = w.op("QuantizeLinear", [at, scale, zp], name + ".out_q")
        dq = w.op("DequantizeLinear", [q, scale, zp], name + ".out_dq")
        extra.append((at, dq))
        report.append({"layer": name, "output_q": f"downstream / {n}", "exact": exact})
    for at, dq in extra:  # the original consumers of `at` now read the dequantized value
        for node in nodes:  # (the inserted Q nodes are not in `nodes`)
            for i, tensor in enumerate(node.input):
                if tensor == at:
                    node.input[i] = dq
    return report


# ---- the whole model -------------------------------------------------------------------------

@dataclass
class Int8Onnx:
    """What `build` returns: the model and, per layer, how it is held (the manifest's `layers`)."""

    model: "onnx.ModelProto"  # noqa: F821
    layers: list[dict]  # per quantized layer: name, bits, how it is held, its output quantizer


def build(arch, payload: bytes, example: torch.Tensor) -> Int8Onnx:
    """The int8 QDQ model of `arch` with the weights of `payload` (UsageError if it cannot be held)."""
    import onnx
    from onnx import helper

    from nas.blocks.model import build_model
    from nas.export.deploy import packed_model
    from nas.export.fold import geometries
    from nas.export.payload import decode_payload

    geoms = geometries(build_model(arch))
    why = refusal(geoms)
    if why:
        raise UsageError(f"int8 ONNX: {why}")
    records = decode_payload(payload, geoms)
    model = packed_model(arch, payload, integer=False)  # the float form: its quantized layers are replaced
    layers = [int8_layer(rec, model.get_submodule(rec.geom.name), SATURATION_FREE) for rec in records]
    traced = _traced_graph(model, [rec.geom.name for rec in records], example)

    w = _Writer()
    nodes, int8_convs = [], {}
    for n in traced.graph.node:
        if n.domain != DOMAIN:
            nodes.append(n)
            continue
        layer = layers[next(a.i for a in n.attribute if a.name == "key")]
        start = len(w.nodes)
        _write_layer(w, n.input[0], n.output[0], layer)
        nodes.extend(w.nodes[start:])
        if layer.int8_kernel:
            int8_convs[n.output[0]] = layer.name
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in list(traced.graph.initializer) + w.inits}
    start = len(w.nodes)
    out_q = {r["layer"]: r for r in _add_output_quantizers(w, nodes, int8_convs, inits)}
    nodes = _insert_after(nodes, w.nodes[start:])
    graph = helper.make_graph(nodes, "nas_int8", list(traced.graph.input), list(traced.graph.output),
                              list(traced.graph.initializer) + w.inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="nas")
    m.ir_version = 10
    _short_names(m.graph)
    onnx.checker.check_model(m, full_check=True)  # full_check: types and shapes infer through every node
    info = []
    for layer in layers:
        held = ("float" if layer.w_scale is None else "int8 ±1 (1-bit, not packed)" if layer.w_bits == 1
                else "int8 rounded at 2m/L (8-bit DoReFa)" if layer.w_bits == 8 else "int8 exact")
        info.append({"layer": layer.name, "w_bits": layer.w_bits, "a_bits": layer.a_bits, "weights": held,
                     "weight_dtype": layer.weight_dtype,
                     "int8_kernel": layer.int8_kernel, **{k: v for k, v in out_q.get(layer.name, {}).items()
                                                          if k != "layer"}})
    return Int8Onnx(m, info)


def _short_names(graph) -> None:
    """Intermediate tensors renamed t0, t1, ... and node names dropped except the quantized
    layers' convs (the profiler names those): the exporter's scope paths are most of the graph's bytes."""
    keep = {v.name for v in list(graph.input) + list(graph.output)} | {t.name for t in graph.initializer}
    names: dict[str, str] = {}
    for n in graph.node:
        for i, o in enumerate(n.output):
            if o not in keep:
                names[o] = f"t{len(names)}"
                n.output[i] = names[o]
        for i, x in enumerate(n.input):
            n.input[i] = names.get(x, x)
        if n.name.startswith("/"):  # the exporter's scope path
            n.name = ""


def _insert_after(nodes, extra) -> list:
    """Put each inserted Q / DQ pair right after the node producing its input (topological order)."""
    by_input: dict[str, list] = {}
    for n in extra:
        by_input.setdefault(n.input[0], []).append(n)
    out = []
    inserted = {id(n) for n in extra}
    for n in nodes:
        out.append(n)
        for o in n.output:
            for q in by_input.get(o, []):
                out.append(q)
                dq = next(d for d in extra if d.op_type == "DequantizeLinear" and d.input[0] == q.output[0])
                out.append(dq)
    if len(out) != len(nodes) + len(inserted):
        raise AssertionError("onnx_int8: an inserted output quantizer has no producer in the graph")
    return out


# ---- running it: onnxruntime sessions, agreement, latency, executed kernels ----------------------

def session(path_or_bytes, threads: int = 1, profile_prefix: str | None = None):
    """An onnxruntime CPU session, `threads` intra-op threads, every graph optimisation on."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if profile_prefix is not None:
        so.enable_profiling, so.profile_file_prefix = True, profile_prefix
    source = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])


def ort_predictions(sess, dataset, batch_size: int = 512) -> torch.Tensor:
    """argmax of the session's logits over `dataset` in order, (N,) int64."""
    name = sess.get_inputs()[0].name
    out = []
    for start in range(0, len(dataset), batch_size):
        x, _ = dataset.batch(torch.arange(start, min(start + batch_size, len(dataset))))
        out.append(torch.from_numpy(sess.run(None, {name: x.numpy()})[0]).argmax(dim=1))
    return torch.cat(out)


class _Run:
    """`sess.run` on one input as a callable, for the timing protocol (which calls model(x))."""

    def __init__(self, sess):
        self.sess, self.name = sess, sess.get_inputs()[0].name

    def __call__(self, x: torch.Tensor):
        return self.sess.run(None, {self.name: x.numpy()})


def ort_latency_ms(sess, x: torch.Tensor, repeats: int = 30, warmup: int = 5) -> float:
    """Median ms of one batch-1 run: `nas.measure.timing`'s protocol with the same counts
    as the bundle's own `latency_measured_ms` (`warmup` runs, then `repeats` timed ones)."""
    from nas.measure.timing import Protocol, time_runs

    protocol = Protocol(warmup_runs=warmup, warmup_s=0.0, min_repeats=repeats, min_time_s=0.0, max_repeats=repeats)
    return round(float(np.median(time_runs(_Run(sess), x, protocol))), 4)


def executed_kernels(path: Path, x: torch.Tensor, workdir: Path) -> dict[str, int]:
    """{op type onnxruntime executed: count} for one run of the model at `path`, from its profiler."""
    import json

    sess = session(path, profile_prefix=str(workdir / "ort_profile"))
    sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    profile = Path(sess.end_profiling())
    try:
        events = json.loads(profile.read_text(encoding="utf-8"))
    finally:
        profile.unlink(missing_ok=True)
    counts: dict[str, int] = {}
    for e in events:
        op = e.get("args", {}).get("op_name") if e.get("cat") == "Node" else None
        if op and e.get("name", "").endswith("_kernel_time"):
            counts[op] = counts.get(op, 0) + 1
    return counts


FLOAT_CONVS = ("Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul")


def float_convs_in(kernels: dict[str, int]) -> int:
    return sum(kernels.get(op, 0) for op in FLOAT_CONVS)


# ---- the bundle's model.int8.onnx -------------------------------------------------------------

def write_int8_onnx(bundle_dir, arch, payload: bytes, manifest: dict, test, packed_preds: torch.Tensor) -> dict:
    """Write `model.int8.onnx` into `bundle_dir` (next to the float model.onnx) when every
    layer is at most 8 bits; return its manifest entry (or, when it has no int8 model, why).

    manifest: the bundle's figures so far (weight_bytes, latency_ms). test: the test split;
    packed_preds: `nas infer`'s (the packed model's) predictions on it, to agree with."""
    import onnx

    from nas.blocks.model import build_model
    from nas.export.fold import geometries

    d = Path(bundle_dir)
    why = refusal(geometries(build_model(arch)))
    if why:
        return {"file": None, "skipped": why}
    x1, _ = test.batch(torch.arange(1))
    built = build(arch, payload, x1)
    path = d / FILE
    onnx.save(built.model, str(path))
    size = path.stat().st_size
    sess = session(path)
    preds = ort_predictions(sess, test)
    kernels = executed_kernels(path, x1, d)  # its profile file is removed again before the bundle is hashed
    latency = ort_latency_ms(sess, x1)
    float_latency = ort_latency_ms(session(d / "model.onnx"), x1) if (d / "model.onnx").is_file() else None
    stored = sum(np.asarray(onnx.numpy_helper.to_array(t)).nbytes for t in built.model.graph.initializer)
    weight_bytes = manifest["weight_bytes"]
    return {
        "file": FILE, "opset": OPSET, "bytes": size, "weight_bytes": weight_bytes,
        "bytes_per_weight_byte": round(size / weight_bytes, 4), "initializer_bytes": int(stored),
        "graph_bytes": int(size - stored),
        "prediction_agreement": int((preds == packed_preds).sum()) / len(test),
        "accuracy": int((preds == test.labels).sum()) / len(test), "test_images": len(test),
        "latency_ms": manifest.get("latency_ms"), "latency_measured_ms": latency,
        "float_onnx_latency_measured_ms": float_latency,
        "speedup_vs_float_onnx": None if not float_latency else round(float_latency / latency, 3),
        "threads": 1, "runtime": f"onnxruntime {_ort_version()} CPUExecutionProvider",
        "executed_kernels": kernels,
        "binary_layers_unpacked": [r["layer"] for r in built.layers if r["w_bits"] == 1],
        "eight_bit_layers_rounded": [r["layer"] for r in built.layers if r["w_bits"] == 8],
        "layers": built.layers,
    }


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def convert_bundle(bundle_dir, out) -> Path:
    """`python -m nas.export.onnx_int8 --bundle DIR -o FILE`: the int8 model of an exported
    bundle (after `verify_bundle`), written atomically to `out`. A bundle whose layers int8
    ONNX cannot hold is a UsageError naming the first such layer."""
    import onnx

    from nas import fsio
    from nas.export.bundle import verify_bundle
    from nas.space import decode

    d = Path(bundle_dir)
    manifest = verify_bundle(d)
    arch = decode(manifest["arch"])
    x1 = torch.zeros(1, arch.in_chs, arch.resolution, arch.resolution)  # a shape for the trace only
    built = build(arch, (d / "payload.bin").read_bytes(), x1)
    target = fsio.check_output_path(out)
    fsio.write_bytes(target, built.model.SerializeToString())
    return target


def main(argv=None) -> int:
    """`python -m nas.export.onnx_int8 --bundle DIR -o FILE`; errors are raised, and said in
    one line by the script's boundary below (`nas.cli`'s, imported only when run as a script)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m nas.export.onnx_int8", description=convert_bundle.__doc__)
    p.add_argument("--bundle", required=True)
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args(argv)
    target = convert_bundle(args.bundle, args.output)
    print(f"{target}: {target.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    from nas.cli import _one_line

    try:
        sys.exit(main())
    except Exception as e:  # noqa: BLE001 (the CLI's one-line boundary)
        line, code = _one_line(e)
        print(f"nas: error: {line}", file=sys.stderr)
        sys.exit(code)
