"""Expand an `ArchSpec` into ops in execution order, with tensor shapes and bit widths.

This is the one place that knows a network's structure for costing; `nas.cost.model`
prices the ops, `nas.cost.layout` prices the weights. It follows the layer structure in
`nas.space.spec`'s module docstring exactly. Pure Python: never imports torch or
`nas.blocks.layers` / `nas.blocks.model`.

Ops (`Op.kind`): ``conv`` (any conv, groups and 1x1 included; BatchNorm folded into it
and its activation fused, so BN / act are not separate ops), ``linear``, ``sign``
(sign-and-pack of a binary unit's input), ``add`` (residual / shortcut), ``mul`` (the
squeeze-excite gate), ``concat`` (dense blocks), ``avgpool`` (2x2, stride 2, ceil mode),
``global_pool``, ``shift``, ``shuffle``.

Execution order (the order `peak_act_bytes` is measured in): stem; then block by block,
repeat by repeat, the ops in the order the spec lists them; a binary unit runs its
shortcut first (pool, then 1x1 conv; the fused kernel takes it as its residual input),
then sign-and-pack -> binary conv -> add; a residual add comes last in its block; then
head, global pool, [post-pool conv], classifier. Every op reads its inputs and writes its
output whole (the packed-binary kernels fuse the residual add, so for them this order is
an upper bound). This is the order `nas.blocks.model` registers and runs its modules in.

Each block kind's ops come from its own file, `nas.blocks.<kind>.expand` (the file that
also builds its modules). Structure decisions the spec leaves open, stated once:
- a residual add joins block input and output wherever a repeat of an ``ir``, ``shift``
  or ``grouped`` block has stride 1 and keeps the channel count; dense blocks have none
  (concatenation is their shortcut); 1-bit blocks have none (every binary conv has its
  own Bi-Real shortcut);
- channel shuffle exists only when groups > 1 (with one group it is the identity);
- 2x2 average pools (dense transition when s == 2, binary shortcuts) use ceil mode, so a
  stride-2 block's output is ceil(H / 2) whatever its kind;
- squeeze-excite: global pool, 1x1 conv to `rd` + bias + ReLU, 1x1 conv back + bias +
  gate, multiply; its convs take the depthwise conv's w_bits and read unquantized (32-bit) inputs;
- convs in stem / head / classifier with w_bits == 1 are plain binary-weight layers
  (no Bi-Real shortcut: that belongs to blocks).

Bit widths. An op reads each input at a stated width:
- conv / linear: its `a_bits` (quantized on read; 1 = signs; per layer when the block
  has per-layer bits, `BlockSpec.block_bits`), except the squeeze-excite
  convs and the binary shortcut's 1x1 conv, which read 32-bit;
- sign: 32 (the real-valued stream of a binary block);
- add / mul / concat / pools / shift / shuffle: max(a_bits of their block (the widest of its
  layers), 8); in binary
  (w_bits == 1) blocks 32, the real-valued stream; the global pool belongs to the
  classifier (max(fc a_bits, 8)).
A tensor is stored at the widest width any consumer reads it at (the input image: the
stem's a_bits; the logits: 32). A 1-bit tensor is packed along channels into uint64
words: H*W*ceil(C/64)*8 bytes; a 2..7-bit tensor packs each pixel's channels into whole
bytes: H*W*ceil(C*b/8); wider tensors take H*W*C*b/8 bytes.
"""

import math
from dataclasses import dataclass

from nas.blocks import KINDS
from nas.blocks.common import shift_groups
from nas.cost.layout import has_clip
from nas.blocks.ir import se_chs
from nas.space.spec import SHORTCUT_BITS, ArchSpec, BlockSpec, make_divisible

REAL_BITS = 32  # the real-valued stream, unquantized conv inputs, logits
MIN_ELEMENTWISE_BITS = 8  # add / concat / pool / shift consumers never read below 8 bits


@dataclass(frozen=True)
class Conventions:
    """Structure choices where timm's reference models differ from this project's blocks.

    `PROJECT` is what `nas.blocks` builds; the others exist so that `nas cost --model timm:...`
    costs timm's MobileNetV3 exactly through the same expansion.
    """

    se_rd: str = "block_in"  # "block_in": max(1, round(block in_chs * se)) (spec);
    # "mid_divisible": make_divisible(SE channels * se, 8) (timm MobileNetV3, se_from_exp)
    post_pool_chs: int = 0  # > 0: a 1x1 conv with bias (no BN) + head act after the global
    # pool (timm MobileNetV3's conv_head)

    def __post_init__(self):
        if self.se_rd not in ("block_in", "mid_divisible"):
            raise ValueError(f"se_rd={self.se_rd!r}; expected 'block_in' or 'mid_divisible'")


PROJECT = Conventions()

Shape = tuple[int, int, int]  # (C, H, W)


@dataclass(frozen=True)
class Op:
    """One op in execution order. Tensors are integer ids into `Graph.shapes`."""

    name: str
    kind: str
    inputs: tuple[int, ...]
    output: int
    read_bits: tuple[int, ...]  # bits at which this op reads each input
    block: int  # index into arch.blocks; -1 stem, len(blocks) head / pool / classifier
    kernel: int = 0
    stride: int = 1
    groups: int = 1
    dilation: int = 1  # conv: taps d apart; macs / params do not depend on it
    float_params: int = 0  # learned float32 values outside conv / linear weights (active shift: 2 per channel)
    w_bits: int = 0  # 0: no weights
    bn: bool = False  # BatchNorm after it (2*C_out params, folded at deployment)
    bias: bool = False  # a bias of its own (SE convs, post-pool conv, classifier)
    act: str | None = None  # fused activation / gate
    clip: bool = False  # a quantized activation site: learns and stores one clip value
    binary: bool = False  # 1-bit weights (scale computed from the weights, not a parameter)
    sparsity: float = 0.0  # a searched sparse record: this fraction of the weights pruned (`layout.searched_*`)
    codebook: int = 0  # a searched codebook record: bits of its k-means codebook (0 = none)


@dataclass(frozen=True)
class Graph:
    shapes: tuple[Shape, ...]  # per tensor id
    bits: tuple[int, ...]  # storage bits per tensor id (the widest consumer)
    ops: tuple[Op, ...]
    input: int  # the image tensor


def conv_out(size: int, kernel: int, stride: int, dilation: int = 1) -> int:
    """Output size of a k x k conv with dilation d and padding d * (k // 2) (odd k): ceil(size / stride)."""
    span = dilation * (kernel - 1) + 1  # the kernel's extent on the input
    return (size + 2 * (dilation * (kernel // 2)) - span) // stride + 1


def receptive_field(g: "Graph") -> int:
    """Receptive field (pixels, one side) of the graph's output: per tensor r and jump j
    (input pixels between neighbouring outputs), a k x k op with stride s and dilation d
    gives r + d * (k - 1) * j and j * s; joins (add / concat / mul) take the widest input;
    global pooling and the classifier see the whole map (the field stays that of their input)."""
    rf, jump = {g.input: 1}, {g.input: 1}
    for op in g.ops:
        r, j = max((rf[t], jump[t]) for t in op.inputs)
        if op.kind in ("conv", "avgpool", "shift"):
            r, j = r + op.dilation * (op.kernel - 1) * j, j * op.stride
        rf[op.output], jump[op.output] = r, j
    return rf[g.ops[-1].output]


def pool_out(size: int, ceil_mode: bool) -> int:
    """2x2 average pool, stride 2."""
    return -(-size // 2) if ceil_mode else size // 2


def tensor_bytes(shape: Shape, bits: int) -> int:
    """Bytes of a stored activation tensor (see the module docstring)."""
    c, h, w = shape
    if bits == 1:
        return h * w * math.ceil(c / 64) * 8
    if bits < 8:
        return h * w * math.ceil(c * bits / 8)
    return h * w * c * bits // 8


def se_channels(block_in: int, se_in: int, se: float, conventions: Conventions) -> int:
    if conventions.se_rd == "mid_divisible":
        return make_divisible(se_in * se, 8)
    return se_chs(block_in, se)


class GraphBuilder:
    """Appends ops and tensors in execution order; one method per op kind.

    `expand` drives it from a spec; tests use it to price hand-made op sequences."""

    def __init__(self, conventions: Conventions = PROJECT):
        self.conventions = conventions
        self.shapes: list[Shape] = []
        self.ops: list[Op] = []
        self.block = -1

    def tensor(self, shape: Shape) -> int:
        self.shapes.append(tuple(shape))
        return len(self.shapes) - 1

    def graph(self, input_tensor: int = 0) -> Graph:
        """The finished graph; storage bits resolved from the consumers' read bits."""
        bits = [0] * len(self.shapes)
        for op in self.ops:
            for t, b in zip(op.inputs, op.read_bits):
                bits[t] = max(bits[t], b)
        # unread tensors (the logits): 32-bit
        return Graph(shapes=tuple(self.shapes), bits=tuple(b or REAL_BITS for b in bits), ops=tuple(self.ops),
                     input=input_tensor)

    def _op(self, name, kind, inputs, read_bits, out_shape, **kw) -> int:
        out = self.tensor(out_shape)
        self.ops.append(Op(name=name, kind=kind, inputs=tuple(inputs), output=out, read_bits=tuple(read_bits),
                           block=self.block, **kw))
        return out

    def conv(self, name, x, out_chs, kernel=1, stride=1, groups=1, *, w_bits, a_bits, act, bn=True,
             bias=False, quantized_input=True, binary=False, dilation=1, sparsity=0.0, codebook=0) -> int:
        c, h, w = self.shapes[x]
        if c % groups or out_chs % groups:
            raise ValueError(f"{name}: channels {c}->{out_chs} are not divisible by groups={groups}")
        read = a_bits if quantized_input else REAL_BITS
        out_hw = conv_out(h, kernel, stride, dilation), conv_out(w, kernel, stride, dilation)
        return self._op(name, "conv", [x], [read], (out_chs, *out_hw),
                        kernel=kernel, stride=stride, groups=groups, dilation=dilation, w_bits=w_bits, bn=bn, bias=bias, act=act,
                        clip=quantized_input and has_clip(a_bits), binary=binary, sparsity=sparsity,
                        codebook=codebook)

    def linear(self, name, x, out_features, *, w_bits, a_bits, bias=True) -> int:
        c, _, _ = self.shapes[x]
        return self._op(name, "linear", [x], [a_bits], (out_features, 1, 1), kernel=1, w_bits=w_bits, bias=bias,
                        clip=has_clip(a_bits), binary=w_bits == 1)

    def elementwise(self, name, kind, inputs, bits, out_shape=None, **kw) -> int:
        shape = out_shape or self.shapes[inputs[0]]
        read = bits if isinstance(bits, (tuple, list)) else [bits] * len(inputs)
        return self._op(name, kind, inputs, read, shape, **kw)

    def add(self, name, a, b, bits) -> int:
        if self.shapes[a] != self.shapes[b]:
            raise ValueError(f"{name}: cannot add {self.shapes[a]} and {self.shapes[b]}")
        return self.elementwise(name, "add", [a, b], bits)

    def avgpool(self, name, x, bits, ceil_mode=True) -> int:
        c, h, w = self.shapes[x]
        return self.elementwise(name, "avgpool", [x], bits, (c, pool_out(h, ceil_mode), pool_out(w, ceil_mode)),
                                kernel=2, stride=2)

    def global_pool(self, name, x, bits) -> int:
        return self.elementwise(name, "global_pool", [x], bits, (self.shapes[x][0], 1, 1))

    def shift(self, name, x, kernel, stride, bits, shift_frac=1.0, active=False) -> int:
        """A grouped (or sparse, shift_frac < 1) shift; `groups`: its non-empty channel groups.
        active: an active shift, one learned (dy, dx) per channel (2 * C float32 parameters),
        initialised to the grouped shift's offsets."""
        c, h, w = self.shapes[x]
        groups = c if active else sum(1 for _, _, n in shift_groups(c, kernel, shift_frac) if n)
        return self.elementwise(name, "shift", [x], bits, (c, conv_out(h, 1, stride), conv_out(w, 1, stride)),
                                kernel=kernel, stride=stride, groups=groups, float_params=2 * c if active else 0)

    def concat(self, name, xs, bits) -> int:
        _, h, w = self.shapes[xs[0]]
        return self.elementwise(name, "concat", xs, bits, (sum(self.shapes[x][0] for x in xs), h, w))

    def elementwise_bits(self, b: BlockSpec) -> int:
        return elementwise_bits(b)

    def se_channels(self, block_in: int, se_in: int, se: float) -> int:
        return se_channels(block_in, se_in, se, self.conventions)

    # --- composite pieces ---

    def unit(self, name, x, out_chs, kernel, stride, groups, b: BlockSpec, act, dilation=1, *,
             bits: tuple[int, int]) -> int:
        """One conv of a block at `bits` = (w_bits, a_bits), this layer's (`BlockSpec.block_bits`):
        conv + BN (+ act), or a Bi-Real binary unit when the block is 1-bit (never dilated:
        `BlockSpec` refuses dilation in 1-bit blocks). A stage's searched sparsity / codebook
        (`BlockSpec.compressed`, w32 a32 only) marks exactly these convs, not squeeze-excite's."""
        w_bits, a_bits = bits
        if not b.binary:
            return self.conv(name, x, out_chs, kernel, stride, groups, w_bits=w_bits, a_bits=a_bits, act=act,
                             dilation=dilation, sparsity=b.sparsity, codebook=b.codebook)
        if dilation != 1:
            raise ValueError(f"{name}: dilation={dilation} in a 1-bit unit; expected 1 (binary units have no dilation)")
        shortcut = x  # runs first: the fused kernel takes its output as the residual input
        if stride == 2:
            shortcut = self.avgpool(f"{name}.shortcut.pool", shortcut, REAL_BITS, ceil_mode=True)
        if self.shapes[x][0] != out_chs:
            shortcut = self.conv(f"{name}.shortcut.conv", shortcut, out_chs, w_bits=SHORTCUT_BITS, a_bits=REAL_BITS,
                                 act=None, quantized_input=False)
        src = x
        if a_bits == 1:  # sign-and-pack: the real-valued x stays live (read by the shortcut)
            src = self.elementwise(f"{name}.sign", "sign", [x], REAL_BITS)
        y = self.conv(name, src, out_chs, kernel, stride, groups, w_bits=1, a_bits=a_bits, act=None, binary=True)
        return self.add(f"{name}.add", y, shortcut, REAL_BITS)

    def squeeze_excite(self, name, x, rd, w_bits: int, elem_bits) -> int:
        """Squeeze-excite whose two 1x1 convs take `w_bits` (the depthwise conv's) and read float."""
        c = self.shapes[x][0]
        s = self.global_pool(f"{name}.pool", x, elem_bits)
        s = self.conv(f"{name}.conv_reduce", s, rd, w_bits=w_bits, a_bits=REAL_BITS, act="relu", bn=False,
                      bias=True, quantized_input=False)
        s = self.conv(f"{name}.conv_expand", s, c, w_bits=w_bits, a_bits=REAL_BITS, act="sigmoid", bn=False,
                      bias=True, quantized_input=False)
        return self.elementwise(f"{name}.mul", "mul", [x, s], [elem_bits, REAL_BITS])


def elementwise_bits(b: BlockSpec) -> int:
    """add / concat / pool / shift / shuffle width of block `b`: the real-valued stream in a
    1-bit block, else its (widest, with per-layer bits) a_bits, at least 8."""
    return REAL_BITS if b.binary else max(b.a_bits, MIN_ELEMENTWISE_BITS)


def expand_stem(net: GraphBuilder, image: int, stem) -> int:
    """The stem conv on the image (`expand`'s first piece; `nas.cost.extremes` prices the pieces apart)."""
    return net.conv("stem", image, stem.out_chs, stem.kernel, stem.stride, w_bits=stem.w_bits, a_bits=stem.a_bits,
                    act=stem.act, binary=stem.w_bits == 1)


def expand_stage(net: GraphBuilder, i: int, x: int, b: BlockSpec, in_chs: int) -> int:
    """Stage `i`: `b.repeats` blocks of its kind (one block for a kind whose repeats count its
    layers), the first with the stage's stride and `in_chs` input channels."""
    net.block = i
    kind = KINDS[b.kind]  # BlockSpec validates kinds
    repeats = 1 if getattr(kind, "ONE_BLOCK_PER_STAGE", False) else b.repeats
    chs = in_chs
    for j in range(repeats):
        stride = b.stride if j == 0 else 1
        x = kind.expand(net, f"blocks.{i}.{j}", x, b, chs, stride, b.block_bits(j))
        chs = b.out_chs
    return x


def expand_tail(net: GraphBuilder, x: int, head, fc, block: int) -> int:
    """Head conv (when it has channels), global pool, [post-pool conv], classifier; `block`:
    the index their ops are labelled with (the number of stages)."""
    net.block = block
    if head.out_chs:
        x = net.conv("head", x, head.out_chs, 1, 1, w_bits=head.w_bits, a_bits=head.a_bits, act=head.act,
                     binary=head.w_bits == 1)
    x = net.global_pool("global_pool", x, max(fc.a_bits, MIN_ELEMENTWISE_BITS))
    if net.conventions.post_pool_chs:
        x = net.conv("conv_head", x, net.conventions.post_pool_chs, w_bits=head.w_bits, a_bits=head.a_bits,
                     act=head.act, bn=False, bias=True)
    return net.linear("fc", x, fc.num_classes, w_bits=fc.w_bits, a_bits=fc.a_bits)


def expand(arch: ArchSpec, conventions: Conventions = PROJECT) -> Graph:
    """ArchSpec -> ops in execution order, tensor shapes and storage bits: stem, stages, tail.
    A stage's blocks read only the stage's input and their own tensors (no tensor crosses a
    stage boundary but the stage's output), which `nas.cost.extremes` relies on."""
    net = GraphBuilder(conventions)
    image = net.tensor((arch.in_chs, arch.resolution, arch.resolution))
    x = expand_stem(net, image, arch.stem)
    chs = arch.stem.out_chs
    for i, b in enumerate(arch.blocks):
        x = expand_stage(net, i, x, b, chs)
        chs = b.out_chs
    expand_tail(net, x, arch.head, arch.fc, len(arch.blocks))
    return net.graph(image)
