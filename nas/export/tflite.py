"""`model.tflite`: the packed model as a full-integer int8 TFLite flatbuffer, via litert-torch.

`nas export --format tflite` (pip install nas[tflite]: litert-torch, ai-edge-litert,
tflite-micro). Every op of the file reads and writes int8 (int32 biases); the graph input
is the stem's PACT codes as int8, the output the logits as int8 (`quantize_input` /
the output tensor's scale and zero point convert).

How it is built. The network's structure comes from the one builder: the packed model's
float form (`deploy.packed_model(integer=False)`) with each payload layer replaced by a
module that states its quantization explicitly with PyTorch's `quantized_decomposed`
quantize / dequantize ops, the form PT2E's `convert_pt2e` produces. litert-torch lowers
those ops and its converter fuses each DQ -> op -> Q into an int8 TFLite op. So the
model's own numbers go in, as in `nas.export.onnx_int8` (whose per-layer table,
`int8_layer`, this module reads):

- input sites, PACT 2..8 bit: Q / DQ at s_x = α / steps (`nas.quant.integer.act_scale`),
  zero point -128 (unsigned: codes 0..2^k-1 as -128..) or 0 (signed), and a clamp to
  [lo, α] where the int8 range is wider than the site's (k < 8, signed): TFLite MINIMUM /
  MAXIMUM in int8. Exact: the site's codes.
- weights, per output channel, symmetric (zero point 0, -127..127 as TFLite requires):
  2- and 4-bit exact (w_int times a whole K_c); 8-bit DoReFa w_int (odd, -255..255)
  rounded to int8 at twice the scale, as in the int8 ONNX (one DoReFa level at most),
  clamped to -127..127.
- bias: float in the graph, stored by the converter as int32 at s_x · s_w[c].
- every other tensor (a conv output that reaches no site directly, residual adds,
  hard-swish, pools, the squeeze-excite path, the logits) has no quantizer in the model,
  and TFLite needs one: its scale and zero point are **calibrated** (min / max over
  `CALIBRATION_IMAGES` training images, asymmetric int8; the test split only where the
  caller passes none, and the manifest then says so) and the manifest says
  which tensors (`calibrated`). litert-torch's PT2E path quantizes exactly these too, by
  observers; here the observers only see tensors the model itself leaves unquantized.

Not expressible (a one-line UsageError naming the layer): 1-bit layers (sign inputs and
±1 weights have no int8 TFLite op with the Bi-Real shortcut semantics), 16/32-bit weights
(full-integer holds 2..8-bit weights), searched sparse / codebook layers (float records of a
``p`` / ``cb`` stage), active shift (no payload record).

Checks recorded in the manifest (`write`): the file's bytes beside `weight_bytes`; the
LiteRT interpreter's predictions against `nas infer`'s on the test split; TFLite Micro's
arena (`print_allocations()`, captured from its C++ stdout / stderr by fd redirection)
beside the cost model's `peak_act_bytes`, with the file's own tensor-liveness peak and, per
op, what TFLite holds that the cost model does not.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nas.errors import UsageError

FILE = "model.tflite"
EXTRA = "pip install nas[tflite]"
PACKAGES = ("litert_torch", "ai_edge_litert", "tflite_micro")
CALIBRATION_IMAGES = 256
MICRO_ARENA_BYTES = 64 << 20  # the arena handed to TFLite Micro (its report says how much it used)
ARENA_SLACK = 1.10  # issue 17: TFLM arena <= 1.10 x peak_act_bytes, or explained op by op


def require_extra() -> None:
    """UsageError (exit 2, one line) unless litert-torch, ai-edge-litert and tflite-micro import."""
    import importlib.util

    missing = [p for p in PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise UsageError(f"--format tflite: {', '.join(missing)} not installed; expected the tflite extra: {EXTRA}")


def refusal(geoms) -> str | None:
    """Why a model with these layer geometries has no full-integer TFLite form, or None."""
    for g in geoms:  # named first: the searched axes are what makes such a layer float
        if g.searched:
            return (f"layer {g.name} is a searched sparse / codebook record (sparsity {g.sparsity:g}, codebook "
                    f"{g.codebook} bits) of float weights: full-integer TFLite holds dense 2..8-bit weights")
    for g in geoms:
        if g.bits == 1 or g.a_bits == 1:
            return (f"layer {g.name} is 1-bit (w{g.bits} a{g.a_bits}): sign inputs and Bi-Real binary convs have no "
                    f"int8 TFLite op; full-integer TFLite holds 2..8-bit layers")
        if g.bits > 8:
            return (f"layer {g.name} has {g.bits}-bit weights: full-integer TFLite holds 2..8-bit weights "
                    f"(int8 per channel)")
    return None


# ---- the QDQ model -----------------------------------------------------------------------------

def _qd():
    import torch.ao.quantization.fx._decomposed  # noqa: F401 (registers torch.ops.quantized_decomposed)

    return torch.ops.quantized_decomposed


def _qdq(x, scale: float, zero_point: int):
    qd = _qd()
    q = qd.quantize_per_tensor(x, scale, zero_point, -128, 127, torch.int8)
    return qd.dequantize_per_tensor(q, scale, zero_point, -128, 127, torch.int8)


def site_params(layer) -> tuple[float, int, float, float] | None:
    """(scale, zero point, lo, α) of a layer's PACT input site in int8, or None (float input)."""
    if not 2 <= layer.a_bits <= 8:
        return None
    scale = float(layer.act_scale())
    alpha = float(np.float32(layer.clip))
    return scale, (0 if layer.signed else -128), (-alpha if layer.signed else 0.0), alpha


class QDQLayer(nn.Module):
    """One payload layer with its quantization written out: input site Q / DQ (+ clamp),
    per-channel weight Q / DQ of its own codes, float bias (int32 in the file)."""

    def __init__(self, layer):
        super().__init__()
        self.name, self.kind = layer.name, layer.kind
        self.site = site_params(layer)
        self.clamp = False
        if self.site is not None:
            scale, zp, lo, alpha = self.site
            # the Q's own saturation clips to [(-128 - zp) s, (127 - zp) s]; clamp where wider than [lo, α]
            # k < 8 bits: the site's range is narrower than int8's, a clamp (int8 MINIMUM / MAXIMUM)
            # keeps the codes in it. 8 bits: the Q saturates at [lo, α] itself, except signed
            # sites' code -128 (the site's lowest is -127): not clamped, as the converter refuses
            # a clamp on a requantized tensor (see docs/deploy-tflite.md)
            self.clamp = layer.a_bits < 8
        weight = np.clip(layer.weight.astype(np.int32), -127, 127)  # TFLite: symmetric -127..127
        scale = layer.w_scale.astype(np.float32)
        shape = (-1,) + (1,) * (weight.ndim - 1)
        self.register_buffer("w_scale", torch.from_numpy(scale.copy()))
        self.register_buffer("w_zero", torch.zeros(len(scale), dtype=torch.int64))
        # the float weight code · scale: the per-channel Q below gives the codes back exactly
        self.register_buffer("weight", torch.from_numpy(weight.astype(np.float32) * scale.reshape(shape)))
        self.register_buffer("bias", torch.from_numpy(layer.bias.astype(np.float32).copy()))
        self.codes = torch.from_numpy(weight.astype(np.int8))
        self.stride, self.padding, self.dilation, self.groups = layer.stride, layer.padding, layer.dilation, layer.groups

    def forward(self, x):
        if self.site is not None:
            scale, zp, lo, alpha = self.site
            x = _qdq(x, scale, zp)
            if self.clamp:
                x = _qdq(torch.clamp(x, lo, alpha), scale, zp)
        qd = _qd()
        w = qd.dequantize_per_channel(
            qd.quantize_per_channel(self.weight, self.w_scale, self.w_zero, 0, -127, 127, torch.int8),
            self.w_scale, self.w_zero, 0, -127, 127, torch.int8)
        if self.kind == "linear":
            return F.linear(x, w, self.bias)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def qdq_model(arch, payload: bytes) -> tuple[nn.Module, list]:
    """(the packed model's float form with every payload layer a `QDQLayer`, the layers)."""
    from nas.blocks.model import build_model
    from nas.export.deploy import packed_model
    from nas.export.fold import geometries
    from nas.export.onnx_int8 import int8_layer
    from nas.export.payload import decode_payload

    geoms = geometries(build_model(arch))
    why = refusal(geoms)
    if why:
        raise UsageError(f"TFLite: {why}")
    if any(b.active_shift for b in arch.blocks):
        i = next(i for i, b in enumerate(arch.blocks) if b.active_shift)
        raise UsageError(f"TFLite: block {i} (as1): active shift has no payload record; expected as0")
    records = decode_payload(payload, geoms)
    model = packed_model(arch, payload, integer=False)
    layers = [int8_layer(rec, model.get_submodule(rec.geom.name)) for rec in records]
    for layer in layers:
        parent, _, child = layer.name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, QDQLayer(layer))
    return model.eval(), layers


# ---- calibrated quantizers for the tensors the model leaves unquantized -----------------------

# ops that only move values (or clip at 0): TFLite gives their output the input's scale
_PASSTHROUGH = {"relu", "relu_", "view", "reshape", "_unsafe_view", "permute", "transpose", "pad",
                "constant_pad_nd", "slice", "cat", "concat", "clone", "flatten", "max_pool2d", "squeeze",
                "unsqueeze", "contiguous", "alias", "t", "expand", "split", "split_with_sizes", "chunk",
                "dropout", "identity", "select", "narrow", "getitem", "pixel_shuffle", "channel_shuffle"}
# int8 ops whose output quantization TFLite fixes: LiteRT's reference kernel refuses any other,
# TFLite Micro's computes as if it were this one
FIXED_OUTPUT = {"sigmoid": (1.0 / 256, -128), "tanh": (1.0 / 128, 0), "softmax": (1.0 / 256, -128)}
_QDQ_OPS = {"quantize_per_tensor", "dequantize_per_tensor", "quantize_per_channel", "dequantize_per_channel"}


def _op_name(node) -> str:
    t = node.target
    name = getattr(t, "__name__", str(t))
    return name.split(".")[0]


def _is_float_tensor(node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.dtype == torch.float32


def _quantizer_targets(graph) -> list:
    """The float op outputs that need a calibrated Q / DQ, in graph order. A tensor is
    quantized when a DQ produces it, or an op that only moves values (`_PASSTHROUGH`) reads
    only quantized tensors; an unquantized op output gets a quantizer unless every consumer
    is a Q (the converter then gives the op that Q's scale) or it is a conv / linear / add
    whose one consumer is a ReLU (conv -> ReLU -> Q fuses; the ReLU is decided in turn)."""
    quantized, targets = set(), []
    for node in graph.nodes:
        if node.op == "placeholder":
            continue
        name = _op_name(node) if node.op == "call_function" else ""
        if name.startswith("dequantize"):
            quantized.add(node)
            continue
        if node.op != "call_function" or not _is_float_tensor(node) or name in _QDQ_OPS:
            continue
        tensors = [a for a in node.all_input_nodes if _is_float_tensor(a) or a.op == "placeholder"]
        if not tensors:
            continue
        if name in _PASSTHROUGH and all(a in quantized for a in tensors):
            quantized.add(node)
            continue
        users = list(node.users)
        if users and all(_op_name(u) == "quantize_per_tensor" for u in users):
            continue
        if len(users) == 1 and _op_name(users[0]) in ("relu", "relu_") and name not in _PASSTHROUGH:
            continue
        targets.append(node)
        quantized.add(node)
    return targets


def _calibrate(gm, nodes, batches) -> dict:
    """{node: (min, max)} of each node's output over the batches (torch.fx.Interpreter)."""
    ranges: dict = {}
    wanted = set(nodes)

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n in wanted:
                lo, hi = float(out.min()), float(out.max())
                old = ranges.get(n)
                ranges[n] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
            return out

    with torch.no_grad():
        for x in batches:
            Recorder(gm).run(x)
    return ranges


def affine_int8(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero point) of asymmetric int8 covering [min(lo, 0), max(hi, 0)]."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = float(np.float32(max(hi - lo, 1e-8) / 255.0))
    zp = int(np.clip(round(-128 - lo / scale), -128, 127))
    return scale, zp


def calibrated_graph(model: nn.Module, example: torch.Tensor, batches) -> tuple[torch.fx.GraphModule, list[dict]]:
    """The exported graph of `model` with a calibrated Q / DQ after every float op output that
    meets no quantizer; (graph module, [{tensor, op, min, max, scale, zero_point}])."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = torch.export.Dim("batch", min=1, max=4096)
        ep = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    gm = ep.module()
    targets = _quantizer_targets(gm.graph)
    ranges = _calibrate(gm, targets, batches)
    qd = _qd()
    report = []
    for n in targets:
        lo, hi = ranges[n]
        site = next((u for u in n.users if _op_name(u) == "quantize_per_tensor"), None)
        if _op_name(n) in FIXED_OUTPUT:  # the int8 kernel assumes these (TFLite's int8 spec)
            (scale, zp), source = FIXED_OUTPUT[_op_name(n)], "fixed by TFLite's int8 spec"
        elif site is not None:  # read by a site too: its scale, so that the site's Q changes nothing
            scale, zp, source = float(site.args[1]), int(site.args[2]), "site"
        else:
            (scale, zp), source = affine_int8(lo, hi), "calibrated"
        users = list(n.users)
        with gm.graph.inserting_after(n):
            q = gm.graph.call_function(qd.quantize_per_tensor.default, (n, scale, zp, -128, 127, torch.int8))
        with gm.graph.inserting_after(q):
            dq = gm.graph.call_function(qd.dequantize_per_tensor.default, (q, scale, zp, -128, 127, torch.int8))
        for u in users:
            u.replace_input_with(n, dq)
        saturated = lo < (-128 - zp) * scale - scale / 2 or hi > (127 - zp) * scale + scale / 2
        report.append({"tensor": n.name, "op": _op_name(n), "min": round(lo, 6), "max": round(hi, 6),
                       "scale": scale, "zero_point": zp, "from": source, "saturates": bool(saturated)})
    gm.graph.lint()
    gm.recompile()
    return gm, report


# ---- conversion -------------------------------------------------------------------------------

class _Capture:
    """What the C++ side printed while `_quiet` was active (`text()`, during or after)."""

    def __init__(self, sink):
        self.sink, self.saved = sink, None

    def text(self) -> str:
        if self.saved is not None:
            return self.saved
        self.sink.flush()
        self.sink.seek(0)
        return self.sink.read().decode("utf-8", "replace")


@contextlib.contextmanager
def _quiet():
    """litert-torch and the runtimes print progress and absl logs on fd 1 / 2 (stdout is for
    --json), and TFLite Micro prints its allocation report there: both fds go to a temporary
    file for the duration (`_Capture`)."""
    with tempfile.TemporaryFile(mode="w+b") as sink:
        capture = _Capture(sink)
        saved = [os.dup(1), os.dup(2)]
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield capture
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            capture.saved = capture.text()


def _static_qdq_config():
    """litert-torch converts a graph's Q / DQ ops into int8 TFLite ops only in its PT2E static
    mode, which it takes from the quant_config's quantizer (`qdq_conversion_mode = "STATIC"`).
    Our graph already holds its Q / DQ ops, so the quantizer only marks the mode: it is never
    asked to annotate or observe anything (no prepare_pt2e / convert_pt2e)."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    return QuantConfig(pt2e_quantizer=quantizer)


class _NHWC(nn.Module):
    """The graph with an NHWC input (TFLite's and TFLite Micro's layout: no transpose op at the input)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.training = False  # an exported graph module refuses train() / eval()

    def forward(self, x):  # x: (N, H, W, C)
        return self.inner(x.permute(0, 3, 1, 2))


def convert(arch, payload: bytes, calibration: torch.Tensor) -> tuple[bytes, dict]:
    """(the .tflite bytes, what went into it) for `arch` with `payload`'s weights;
    `calibration`: normalised NCHW images for the calibrated tensors."""
    import litert_torch

    model, layers = qdq_model(arch, payload)
    batches = list(torch.split(calibration, 128))
    gm, calibrated = calibrated_graph(model, calibration[:2], batches)  # batch 2: a batch of 1 would be specialised
    example = calibration[:1].permute(0, 2, 3, 1).contiguous()
    with _quiet() as log:
        try:
            converted = litert_torch.convert(_NHWC(gm), (example,), quant_config=_static_qdq_config())
            data = converted.model_content()
        except Exception as e:  # noqa: BLE001 (the converter's own message, one line, with its log's last line)
            tail = [line for line in log.text().splitlines() if line.strip()][-1:]
            raise UsageError(f"TFLite: litert-torch could not convert {arch.resolution}px model "
                             f"({str(e).splitlines()[0][:300]}{'; ' + tail[0][:200] if tail else ''})") from None
    info = {
        "layers": [{"layer": l.name, "w_bits": l.w_bits, "a_bits": l.a_bits,
                    "weights": ("int8 rounded at 2m/L (8-bit DoReFa)" if l.w_bits == 8 else "int8 exact"),
                    "input": "own PACT scale" if site_params(l) else "calibrated"} for l in layers],
        "calibrated": calibrated,
    }
    return bytes(data), info


# ---- running it -----------------------------------------------------------------------------

def input_site(arch, payload: bytes) -> tuple[float, int, float, float]:
    """(scale, zero point, lo, α) of the graph input: the stem's PACT site."""
    model, layers = qdq_model(arch, payload)
    site = site_params(layers[0])
    if site is None:
        raise UsageError(f"TFLite: the stem {layers[0].name} reads a {layers[0].a_bits}-bit input; "
                         f"expected a 2..8-bit PACT site (the int8 graph input)")
    return site


def quantize_input(x: torch.Tensor, site) -> np.ndarray:
    """Normalised NCHW float images -> the graph's int8 NHWC input (the stem site's codes)."""
    scale, zp, lo, alpha = site
    codes = torch.round(torch.clamp(x.float(), lo, alpha) / np.float32(scale)) + zp
    return codes.clamp(-128, 127).to(torch.int8).permute(0, 2, 3, 1).contiguous().numpy()


def litert_interpreter(data: bytes, threads: int = 1, reference: bool = False):
    """LiteRT's interpreter on the file, tensors allocated: its default kernels (XNNPACK for
    int8), or with `reference` its builtin reference kernels (the ones TFLite Micro's match).

    On some hosts XNNPACK refuses to prepare a node of these graphs (seen on an AVX-512 host:
    "failed to create XNNPACK runtime ... failed to prepare", the same file preparing on an
    AVX2 one); the interpreter is then made with LiteRT's builtin optimised kernels and no
    default delegate. `kernels_of(it)` says which ran."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kinds = [OpResolverType.BUILTIN_REF] if reference else [OpResolverType.AUTO,
                                                            OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES]
    for i, kind in enumerate(kinds):
        with _quiet():
            it = Interpreter(model_content=data, num_threads=threads, experimental_op_resolver_type=kind)
            try:
                it.allocate_tensors()
            except RuntimeError as e:
                if "XNNPACK" not in str(e) or i + 1 == len(kinds):
                    raise
                continue
        _KERNELS[id(it)] = {OpResolverType.BUILTIN_REF: "builtin reference", OpResolverType.AUTO: "xnnpack",
                            OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES: "builtin (xnnpack refused)"}[kind]
        return it


_KERNELS: dict = {}  # id(interpreter) -> which kernels it runs


def kernels_of(it) -> str:
    return _KERNELS.get(id(it), "unknown")


def litert_predictions(data: bytes, dataset, site, batch_size: int = 512) -> torch.Tensor:
    """argmax of LiteRT's int8 logits over `dataset` in order, (N,) int64 (first index on ties,
    as torch.argmax). One image per invoke: the converted graph has a static batch of 1."""
    it = litert_interpreter(data)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    preds = []
    for start in range(0, len(dataset), batch_size):
        x, _ = dataset.batch(torch.arange(start, min(start + batch_size, len(dataset))))
        for image in quantize_input(x, site):
            it.set_tensor(inp, image[None])
            it.invoke()
            preds.append(int(np.argmax(it.get_tensor(out)[0])))
    return torch.tensor(preds, dtype=torch.int64)


ALLOCATION_LINE = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")


def micro_arena(data: bytes, x_int8: np.ndarray) -> dict:
    """TFLite Micro runs the file on one image; its RecordingMicroAllocator's report
    (`print_allocations`, printed by C++ on fd 1 / 2 and captured here) as numbers, and the
    int8 logits it computed."""
    from tflite_micro.python.tflite_micro import runtime

    with _quiet() as log:
        try:
            # a generous arena (the runtime's default is 10 x the file); the report gives what it used
            interp = runtime.Interpreter.from_bytes(data, arena_size=max(10 * len(data), MICRO_ARENA_BYTES))
            interp.set_input(x_int8[:1], 0)
            interp.invoke()
            logits = np.array(interp.get_output(0))
            interp.print_allocations()
            failed = None
        except RuntimeError as e:
            failed = e
    text = log.text()
    if failed is not None:
        why = [line for line in text.splitlines() if line.strip()][-3:]
        raise UsageError(f"TFLite Micro cannot run model.tflite ({failed}: {' / '.join(why)[:400]})") from None
    found = {k: int(v) for k, v in ALLOCATION_LINE.findall(text)}
    if set(found) != {"total", "head", "tail"}:
        raise AssertionError(f"tflite-micro print_allocations: no arena figures in its output ({text[-300:]!r})")
    return {"arena_bytes": found["total"], "head_bytes": found["head"], "tail_bytes": found["tail"],
            "allocations": [line.split("] ", 1)[-1] for line in text.splitlines() if "RecordingMicroAllocator" in line
                            and "Arena allocation" not in line],
            "logits": logits.reshape(-1).tolist()}


def tensor_liveness(data: bytes) -> dict:
    """The file's activation tensors under the cost model's rule (`nas.cost.model.peak_act_bytes`:
    live from the op that writes a tensor to the last op that reads it, the input from the
    start, the output to the end; an op's inputs and output live together), per op."""
    it = litert_interpreter(data)
    details = {d["index"]: d for d in it.get_tensor_details()}
    ops = it._get_ops_details()  # noqa: SLF001 (the interpreter's only op list; stable across 2.x)
    graph_in = [d["index"] for d in it.get_input_details()]
    graph_out = [d["index"] for d in it.get_output_details()]
    produced = {t for op in ops for t in op["outputs"]}
    act = set(graph_in) | produced

    def nbytes(t):
        d = details[t]
        return int(np.prod(d["shape"])) * np.dtype(d["dtype"]).itemsize

    last = {t: -1 for t in graph_in}
    for i, op in enumerate(ops):
        for t in op["inputs"]:
            if t in act:
                last[t] = i
    for t in graph_out:
        last[t] = len(ops)
    live = sum(nbytes(t) for t in graph_in)
    peak, at, rows = live, "input", []
    for i, op in enumerate(ops):
        outs = [t for t in op["outputs"] if t in act]
        live += sum(nbytes(t) for t in outs)
        rows.append({"op": op["op_name"], "output_bytes": sum(nbytes(t) for t in outs), "live_bytes": live})
        if live > peak:
            peak, at = live, f"{i}:{op['op_name']}"
        for t in set(op["inputs"]):
            if t in act and last.get(t) == i:
                live -= nbytes(t)
    dtypes = sorted({np.dtype(details[t]["dtype"]).name for t in act})
    return {"peak_bytes": peak, "peak_at": at, "ops": rows, "activation_dtypes": dtypes,
            "op_counts": {name: sum(1 for op in ops if op["op_name"] == name) for name in
                          dict.fromkeys(op["op_name"] for op in ops)}}


NOT_IN_COST_MODEL = {"PAD": "explicit zero padding (the cost model's conv reads its input unpadded)",
                     "QUANTIZE": "requantization to a consumer's scale (one scale per int8 tensor)",
                     "TRANSPOSE": "layout change", "DEQUANTIZE": "float tensor"}


def arena_explanation(arch, liveness: dict, micro: dict, peak_act_bytes: int) -> dict:
    """Where TFLite Micro's planned activations differ from `peak_act_bytes`, op by op."""
    from nas.cost import arch_cost

    cost = arch_cost(arch)
    sub_byte = [(layer.name, layer.out_bits) for layer in cost.layers if 1 < layer.out_bits < 8]
    extra = {}
    for row in liveness["ops"]:
        if row["op"] in NOT_IN_COST_MODEL:
            e = extra.setdefault(row["op"], {"why": NOT_IN_COST_MODEL[row["op"]], "ops": 0, "output_bytes": 0})
            e["ops"] += 1
            e["output_bytes"] += row["output_bytes"]
    return {
        "head_over_peak_act_bytes": round(micro["head_bytes"] / peak_act_bytes, 4),
        "file_liveness_peak_bytes": liveness["peak_bytes"], "file_liveness_peak_at": liveness["peak_at"],
        "cost_model_peak_at": cost.peak_act_at,
        "tensors_not_in_cost_model": extra,
        "sub_byte_tensors_stored_as_int8": [{"op": n, "bits": b} for n, b in sub_byte],
        "persistent_tail_bytes": micro["tail_bytes"],
        "note": ("head = TFLite Micro's planned (non-persistent) tensors, the counterpart of peak_act_bytes; "
                 "tail = its persistent interpreter data (tensor structs, quantization params, kernel buffers), "
                 "which the cost model does not price"),
    }


# ---- the bundle's model.tflite ------------------------------------------------------------------

def write(tmp, arch, payload: bytes, manifest: dict, test, predictions, calibration=None) -> dict:
    """Write model.tflite into the bundle directory `tmp`; return its manifest entry
    (`nas.export.formats`). `calibration`: training images for the calibrated tensors (None:
    the test split's first images, recorded as such in the manifest)."""
    require_extra()
    split = "train" if calibration is not None else "test"
    source = calibration if calibration is not None else test
    calibration, _ = source.batch(torch.arange(min(CALIBRATION_IMAGES, len(source))))
    data, info = convert(arch, payload, calibration)
    path = Path(tmp) / FILE
    path.write_bytes(data)
    site = input_site(arch, payload)
    preds = litert_predictions(data, test, site)
    try:
        micro = micro_arena(data, quantize_input(calibration[:1], site))
    except UsageError as e:  # e.g. a 5 x 5 shift's 25-input concat: TFLite Micro takes at most 10
        micro = {"ran": False, "why": str(e)}
    liveness = tensor_liveness(data)
    it = litert_interpreter(data)
    litert_logits = _one_logits(it, quantize_input(calibration[:1], site))
    reference_logits = _one_logits(litert_interpreter(data, reference=True), quantize_input(calibration[:1], site))
    peak = manifest["peak_act_bytes"]
    weight_bytes = manifest["weight_bytes"]
    entry = {
        "file": FILE, "bytes": len(data), "weight_bytes": weight_bytes,
        "bytes_per_weight_byte": round(len(data) / weight_bytes, 4),
        "full_integer": liveness["activation_dtypes"] == ["int8"] or set(liveness["activation_dtypes"]) <= {"int8"},
        "activation_dtypes": liveness["activation_dtypes"],
        "input": {"layout": "NHWC int8", "scale": site[0], "zero_point": site[1], "clip": [site[2], site[3]],
                  "from": "the stem's PACT site: round(clip((x / 255 - mean) / std, lo, alpha) / scale) + zero_point"},
        "output": {"layout": "int8 logits", **_output_q(it)},
        "prediction_agreement": int((preds == predictions).sum()) / len(test),
        "litert_kernels": kernels_of(it),
        "accuracy": int((preds == test.labels).sum()) / len(test), "test_images": len(test),
        "calibration": {"split": split, "images": int(len(calibration)),
                        "tensors": len(info["calibrated"]), "how": "min / max, asymmetric int8"},
        "micro": micro if "logits" not in micro else {
                  "ran": True, "arena_bytes": micro["arena_bytes"], "head_bytes": micro["head_bytes"],
                  "tail_bytes": micro["tail_bytes"], "logits_equal_litert_reference_kernels": micro["logits"] == reference_logits,
                  "logits_max_abs_diff_vs_litert_xnnpack": int(np.max(np.abs(np.subtract(micro["logits"],
                                                                                         litert_logits)))),
                  "allocations": micro["allocations"]},
        "peak_act_bytes": peak,
        "arena_head_over_peak_act_bytes": round(micro["head_bytes"] / peak, 4) if "head_bytes" in micro else None,
        "op_counts": liveness["op_counts"],
        "runtime": f"ai-edge-litert {_version('ai-edge-litert')}, tflite-micro {_version('tflite-micro')}, "
                   f"litert-torch {_version('litert-torch')}",
        "layers": info["layers"], "calibrated": info["calibrated"],
    }
    if "head_bytes" in micro and micro["head_bytes"] > ARENA_SLACK * peak:
        entry["arena_explained"] = arena_explanation(arch, liveness, micro, peak)
    return entry


def _one_logits(it, x_int8: np.ndarray) -> list:
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x_int8[:1])
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]).reshape(-1).tolist()


def _output_q(it) -> dict:
    scale, zp = it.get_output_details()[0]["quantization"]
    return {"scale": float(scale), "zero_point": int(zp)}


def _version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
