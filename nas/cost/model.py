"""Analytic costs of an `ArchSpec`: per-op records and totals, no module built.

Each op of `nas.cost.graph.expand` is priced here:

- `params`: learnable parameters exactly as the built module has them: conv / linear
  weights, BatchNorm affine (2 * C_out), own biases (squeeze-excite convs, post-pool conv,
  classifier), one PACT clip per quantized activation site (2 <= a_bits <= 8), an active
  shift's 2 * C learned offsets (float32 in `weight_bytes`; its bilinear mix counts no macs,
  like every shift). A binary
  conv's per-channel scale is computed from its weights, not a parameter.
- `macs`: conv k_h*k_w*(C_in/g)*C_out*H_out*W_out; linear in*out; squeeze-excite convs
  count; elementwise ops, pooling, shift, shuffle, sign: 0 (DESIGN.md vocabulary).
- `weight_bytes`: the deployable payload, `nas.cost.layout` (weights + scale + bias per
  conv / linear, + one float32 clip per quantized activation site; a stage's searched
  sparse / codebook convs: `layout.searched_layer_bytes`, exact before training). `params`
  stays the module's count: a pruned weight is still a parameter of the module.
- `mem_access`: elements read and written by the op: its inputs + its output + its weights
  (the kernel's elements; not bias / scale). For a 1x1 conv with g groups this is
  h*w*(c1 + c2) + c1*c2/g (ShuffleNet V2; seed 000, ch. 4 sec. 2).
- `mem_access_bytes`: the same at the tensors' storage widths (`nas.cost.graph`), the
  weights counted as the layer's payload bytes (`weight_bytes`: what is actually read).
- `receptive_field`: input pixels (one side) the last feature map sees; a conv with
  dilation d spans d * (k - 1) + 1 input pixels, at the same macs and params.
- `bops`: macs * w_bits * a_bits, a_bits being the width the op reads its input at.
- `peak_act_bytes`: the largest sum of live activation tensors over the execution order of
  `nas.cost.graph`: the input image is counted; a tensor is live from the op that writes
  it to the last op that reads it (the logits to the end); while an op runs, its inputs
  and its output are live together.
"""

from dataclasses import asdict, dataclass

from nas.cost import layout
from nas.cost.graph import PROJECT, Conventions, Graph, Op, expand, receptive_field, tensor_bytes
from nas.space.spec import ArchSpec

TOTALS = ("params", "macs", "weight_bytes", "peak_act_bytes", "mem_access", "mem_access_bytes", "bops")


@dataclass(frozen=True)
class LayerCost:
    """One op's costs, rich enough to fit a latency model over (kind, shapes, bits, counts)."""

    name: str
    op: str
    block: int  # index into arch.blocks; -1 stem, len(blocks) head / pool / classifier
    in_shapes: tuple[tuple[int, int, int], ...]  # (C, H, W) per input
    out_shape: tuple[int, int, int]
    kernel: int
    stride: int
    groups: int
    w_bits: int  # 0: no weights
    a_bits: int  # width the (first) input is read at
    out_bits: int  # width the output is stored at
    act: str | None
    params: int
    macs: int
    weight_bytes: int
    mem_access: int
    mem_access_bytes: int
    bops: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["in_shapes"] = [list(s) for s in self.in_shapes]
        d["out_shape"] = list(self.out_shape)
        return d


@dataclass(frozen=True)
class Cost:
    """Totals over the network plus the per-op breakdown (`layers`, execution order)."""

    params: int
    macs: int
    weight_bytes: int
    peak_act_bytes: int
    mem_access: int
    mem_access_bytes: int
    bops: int
    peak_act_at: str  # the op during which the peak occurs
    layers: tuple[LayerCost, ...]
    receptive_field: int = 0  # input pixels (one side) the last feature map sees (`graph.receptive_field`)

    def to_dict(self) -> dict:
        """Vocabulary names; `layers` as a list of dicts. JSON-serialisable."""
        d = {name: getattr(self, name) for name in TOTALS}
        d["peak_act_at"] = self.peak_act_at
        d["receptive_field"] = self.receptive_field
        d["layers"] = [layer.to_dict() for layer in self.layers]
        return d


def _weight_elements(op: Op, in_chs: int, out_chs: int) -> int:
    if op.kind == "conv":
        return out_chs * (in_chs // op.groups) * op.kernel * op.kernel
    if op.kind == "linear":
        return in_chs * out_chs
    return 0


def _counts(op: Op, g: Graph) -> tuple[int, int, int, int]:
    """(weight elements, params, macs, weight_bytes) of one op."""
    out_shape = g.shapes[op.output]
    c_in, out_chs = g.shapes[op.inputs[0]][0], out_shape[0]
    weights = _weight_elements(op, c_in, out_chs)
    params = weight_bytes = macs = 0
    if weights:
        params = weights + (2 * out_chs if op.bn else 0) + (out_chs if op.bias else 0) + (1 if op.clip else 0)
        if op.sparsity or op.codebook:  # a searched sparse / codebook record
            weight_bytes = layout.searched_layer_bytes(out_chs, c_in // op.groups, op.kernel, op.kernel,
                                                       op.sparsity, op.codebook)
        else:
            weight_bytes = layout.layer_bytes(op.w_bits, out_chs, c_in // op.groups, op.kernel, op.kernel)
        weight_bytes += layout.CLIP_BYTES if op.clip else 0
        macs = weights * out_shape[1] * out_shape[2]
    if op.float_params:  # an active shift's offsets: float32, in the payload as they are
        params += op.float_params
        weight_bytes += op.float_params * layout.FLOAT32_BYTES
    return weights, params, macs, weight_bytes


def weight_bytes_and_macs(g: Graph) -> tuple[int, int]:
    """(weight_bytes, macs) of a graph, without the per-op records (`nas.cost.extremes` prices
    thousands of pieces of networks): the same per-op counts as `graph_cost`."""
    weight_bytes = macs = 0
    for op in g.ops:
        _, _, op_macs, op_bytes = _counts(op, g)
        weight_bytes, macs = weight_bytes + op_bytes, macs + op_macs
    return weight_bytes, macs


def _layer(op: Op, g: Graph) -> LayerCost:
    in_shapes = tuple(g.shapes[t] for t in op.inputs)
    out_shape = g.shapes[op.output]
    weights, params, macs, weight_bytes = _counts(op, g)
    a_bits = op.read_bits[0]
    elements = sum(c * h * w for c, h, w in in_shapes) + out_shape[0] * out_shape[1] * out_shape[2]
    act_bytes = sum(tensor_bytes(g.shapes[t], g.bits[t]) for t in op.inputs)
    act_bytes += tensor_bytes(out_shape, g.bits[op.output])
    return LayerCost(
        name=op.name, op=op.kind, block=op.block, in_shapes=in_shapes, out_shape=out_shape,
        kernel=op.kernel, stride=op.stride, groups=op.groups, w_bits=op.w_bits, a_bits=a_bits,
        out_bits=g.bits[op.output], act=op.act, params=params, macs=macs, weight_bytes=weight_bytes,
        mem_access=elements + weights + op.float_params, mem_access_bytes=act_bytes + weight_bytes,
        bops=macs * op.w_bits * a_bits,
    )


def peak_act_bytes(g: Graph) -> tuple[int, str]:
    """(peak bytes, name of the op during which it occurs); rules in the module docstring."""
    n = len(g.ops)
    last_use = {g.input: -1}
    for i, op in enumerate(g.ops):
        for t in op.inputs:
            last_use[t] = i
    last_use[g.ops[-1].output] = n  # the logits are the result: live to the end
    size = [tensor_bytes(s, b) for s, b in zip(g.shapes, g.bits)]
    live = size[g.input]
    peak, at = live, "input"
    for i, op in enumerate(g.ops):
        live += size[op.output]  # inputs and output live together while the op runs
        if live > peak:
            peak, at = live, op.name
        for t in set(op.inputs):
            if last_use[t] == i:
                live -= size[t]
        if last_use.get(op.output, -1) < i:  # written, never read (cannot happen in a valid graph)
            live -= size[op.output]
    return peak, at


def graph_cost(g: Graph) -> Cost:
    layers = tuple(_layer(op, g) for op in g.ops)
    peak, at = peak_act_bytes(g)
    totals = {name: sum(getattr(layer, name) for layer in layers) for name in TOTALS if name != "peak_act_bytes"}
    return Cost(peak_act_bytes=peak, peak_act_at=at, layers=layers, receptive_field=receptive_field(g), **totals)


def arch_cost(arch: ArchSpec, conventions: Conventions = PROJECT) -> Cost:
    """Analytic costs of `arch` (see the module docstring for each figure's definition)."""
    if not isinstance(arch, ArchSpec):
        raise TypeError(f"arch_cost: got {type(arch).__name__}; expected an ArchSpec (nas.space.decode an arch string)")
    return graph_cost(expand(arch, conventions))
