"""Architecture specs: frozen dataclasses that describe a network as plain data.

A spec is decoded from an arch string (`codec.py`), built into modules (`nas.blocks`) and
costed analytically (`nas.cost`). Decoding never builds; building never parses.

Network layout, in execution order::

    input (resolution x resolution x in_chs)
    stem      conv k x k, stride s, in_chs -> c, BN, act
    blocks    one BlockSpec per stage, see below
    head      conv 1x1 -> c, BN, act            (absent when c == 0)
    pool      global average pool
    fc        linear -> num_classes, with bias

Block kinds (`BlockSpec.kind`); `r` repeats a block, only the first repeat has stride `s`
and changes the channel count, a residual add is used wherever stride is 1 and the
channel count is unchanged:

- ``ir``      inverted residual (MBConv, timm's blocks). e == 1: depthwise k x k + BN + act,
              [SE], pointwise 1x1 + BN (timm's DepthwiseSeparableConv). e > 1: pointwise
              1x1 to mid = make_divisible(in * e) + BN + act, depthwise k x k + BN + act,
              [SE], pointwise 1x1 + BN (timm's InvertedResidual). SE squeezes to
              max(1, round(in * se)) channels, ReLU inside, sigmoid gate.
- ``shift``   ShiftNet's shift block: pointwise 1x1 to mid = make_divisible(in * e) + BN
              + act, grouped shift over a k x k neighbourhood (channels split into k*k
              groups, each moved by one offset, zero fill, stride by subsampling),
              pointwise 1x1 + BN.
- ``grouped`` grouped k x k conv (g groups, stride s) + BN + act, channel shuffle (g),
              grouped 1x1 conv (g groups) + BN.
- ``dense``   DenseNet-style block: r dense layers, each 1x1 conv to 4*gr + BN + act,
              k x k conv to gr + BN + act, concatenated onto the running features;
              then a linear transition 1x1 conv to c + BN (no activation, as in
              pre-activation DenseNet), and 2x2 average pool when s == 2.
              (For ``dense``, ``r`` counts dense layers inside one block.)

Bit widths: every conv/linear in a block quantizes its weights to `w_bits` and its
input activations to `a_bits`; or, per layer, layer i of the stage (execution order:
repeat by repeat, `block_layers` convs each; dense: 2 per dense layer, then the
transition) to `layer_w_bits[i]` / `layer_a_bits[i]`, each list empty (the stage's one
value) or one entry per layer. A list whose entries are all equal is stored as the one
value (`w_bits` / `a_bits`), so a spec has one form; with a mixed list `w_bits` /
`a_bits` hold its widest entry (the elementwise ops' rule reads it). A stage's layers
are all 1-bit-weight (Bi-Real) or none: the Bi-Real structure (shortcuts, no block
residual, no activation) belongs to the stage. Squeeze-excite's two 1x1 convs take the
weight bits of the depthwise conv they follow (their inputs stay float). A block with w_bits == 1 is Bi-Real style: each conv is
a binary unit  y = BN(binconv(sign(x))) + shortcut(x)  with one-padding, no activation
function, and a real-valued shortcut (identity; 2x2 average pool when strided; plus a
1x1 conv at SHORTCUT_BITS + BN when the channel count changes). a_bits == 1 requires
w_bits == 1 (XNOR-popcount); SE is not allowed in binary blocks. sign() needs a centred
input: a layer feeding a binary block should end linear (act "none" for a stem; ir, shift
and grouped blocks and the dense transition end with BN and no activation anyway).
"""

from dataclasses import dataclass, field, fields

from nas.errors import UsageError
from nas.limits import check_magnitude

BITS = (1, 2, 4, 8, 16, 32)
BLOCK_KINDS = ("ir", "shift", "grouped", "dense")
DILATED_KINDS = ("ir", "grouped", "dense")  # kinds whose k x k conv takes a dilation (arch-string key d)
ACTS = ("relu", "hswish", "none")  # "none": linear output (e.g. a stem feeding binary blocks)
STRIDES = (1, 2)
SHORTCUT_BITS = 8  # weight bits of the 1x1 shortcut conv in binary units (Bi-Real keeps it real)
MAX_CODEBOOK_BITS = 8  # searched weight sharing: a codebook of at most 2^8 values per layer


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round `v` to the nearest multiple of `divisor` (halves round up), at least `min_value`
    (default `divisor`); if that loses more than 10% of `v`, add one `divisor`.

    The rule of timm's `make_divisible` (timm/layers/helpers.py, from the TF MobileNet
    reference), written here so costing and arch strings need neither torch nor timm;
    `tests/test_cost.py` checks it against timm's."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def block_layers(kind: str, expand: float, repeats: int) -> int:
    """The convs of one block that carry bit widths (the Bi-Real shortcut's 1x1 conv and the
    squeeze-excite convs excluded): ir 2 (expand == 1: dw, pw) or 3 (pw, dw, pwl); shift 2
    (pw, pwl); grouped 2 (conv_g, conv_g1); dense, one block per stage: 2 per dense layer
    (conv1, conv2) + the transition. `tests/test_layer_bits.py` checks it against each kind's
    expansion (`nas.blocks.<kind>.expand`)."""
    if kind == "ir":
        return 2 if expand == 1 else 3
    if kind == "dense":
        return 2 * repeats + 1
    return 2


def stage_blocks(kind: str, repeats: int) -> int:
    """Blocks in a stage: `repeats`, except dense (one block, `repeats` dense layers inside)."""
    return 1 if kind == "dense" else repeats


def _check_choice(where: str, name: str, value, allowed) -> None:
    if value not in allowed:
        raise UsageError(f"{where}: {name}={value!r} is not allowed; expected one of {list(allowed)}")


def _check_min(where: str, name: str, value, minimum) -> None:
    if not isinstance(value, (int, float)) or value < minimum:
        raise UsageError(f"{where}: {name}={value!r} is not allowed; expected a number >= {minimum}")
    check_magnitude(where, name, value)  # before anything is built from it


def _check_bits(where: str, w_bits: int, a_bits: int) -> None:
    _check_choice(where, "w_bits", w_bits, BITS)
    _check_choice(where, "a_bits", a_bits, BITS)
    if a_bits == 1 and w_bits != 1:
        raise UsageError(
            f"{where}: a_bits=1 with w_bits={w_bits} is not allowed; 1-bit activations need "
            f"1-bit weights (XNOR-popcount), expected w_bits=1"
        )


@dataclass(frozen=True)
class ConvSpec:
    """The stem (k x k conv) or the head (1x1 conv; out_chs == 0 means no head conv)."""

    out_chs: int
    kernel: int = 3
    stride: int = 1
    act: str = "relu"
    w_bits: int = 32
    a_bits: int = 32

    def __post_init__(self):
        where = "conv spec"
        _check_min(where, "out_chs", self.out_chs, 0)
        _check_min(where, "kernel", self.kernel, 1)
        _check_choice(where, "stride", self.stride, STRIDES)
        _check_choice(where, "act", self.act, ACTS)
        _check_bits(where, self.w_bits, self.a_bits)


@dataclass(frozen=True)
class FcSpec:
    """The classifier: global-pooled features -> num_classes logits, with bias."""

    num_classes: int
    w_bits: int = 32
    a_bits: int = 32

    def __post_init__(self):
        _check_min("classifier spec", "num_classes", self.num_classes, 2)
        _check_bits("classifier spec", self.w_bits, self.a_bits)


@dataclass(frozen=True)
class BlockSpec:
    """One stage: `repeats` blocks of one kind (see the module docstring for each kind)."""

    kind: str
    out_chs: int
    repeats: int = 1
    kernel: int = 3
    stride: int = 1
    expand: float = 1.0  # ir, shift: mid channels = make_divisible(in_chs * expand)
    se: float = 0.0  # ir: squeeze-excite ratio of the block's input channels (0 = none)
    groups: int = 1  # grouped: group count of both convs
    growth: int = 0  # dense: channels each dense layer adds
    dilation: int = 1  # ir, grouped, dense: dilation of the k x k conv (padding d * (k // 2) keeps the shape)
    shift_frac: float = 1.0  # shift: fraction of channels shifted (1: ShiftNet's grouped shift; < 1: sparse shift)
    active_shift: int = 0  # shift: 1 = active shift (learned fractional per-channel offsets, bilinear)
    sparsity: float = 0.0  # w32 a32 stages: fraction of each conv's weights magnitude-pruned (arch key p, percent)
    codebook: int = 0  # w32 a32 stages: bits of each conv's k-means codebook (arch key cb; 0 = none)
    act: str = "relu"
    w_bits: int = 32  # with a mixed layer_w_bits: its widest entry (derived)
    a_bits: int = 32  # with a mixed layer_a_bits: its widest entry (derived)
    layer_w_bits: tuple[int, ...] = ()  # per conv layer, execution order (module docstring); () = w_bits for all
    layer_a_bits: tuple[int, ...] = ()  # per conv layer; () = a_bits for all

    def __post_init__(self):
        where = f"{self.kind} block"
        _check_choice("block", "kind", self.kind, BLOCK_KINDS)
        _check_min(where, "out_chs", self.out_chs, 1)
        _check_min(where, "repeats", self.repeats, 1)
        _check_min(where, "expand", self.expand, 1.0 if self.kind == "ir" else 0.25)
        self._normalise_layer_bits(where)
        _check_min(where, "kernel", self.kernel, 1)
        if self.kernel % 2 == 0:
            raise UsageError(f"{where}: kernel={self.kernel} is not allowed; expected an odd kernel size")
        _check_choice(where, "stride", self.stride, STRIDES)
        if not 0.0 <= self.se < 1.0:
            raise UsageError(f"{where}: se={self.se!r} is not allowed; expected 0 <= se < 1")
        _check_choice(where, "act", self.act, ACTS)
        _check_bits(where, self.w_bits, self.a_bits)
        for i, (w, a) in enumerate(self.all_layer_bits()):
            _check_bits(f"{where} layer {i}", w, a)
        ws = {w for w, _ in self.all_layer_bits()}
        if 1 in ws and len(ws) > 1:
            raise UsageError(f"{where}: weight bits {self._list_text('w', self.layer_w_bits)} mix 1-bit and "
                             f"multi-bit layers; expected all layers 1-bit (a Bi-Real block) or none")
        if self.se and self.kind != "ir":
            raise UsageError(f"{where}: se={self.se} is not allowed; squeeze-excite exists only in ir blocks")
        if self.se and self.w_bits == 1:
            raise UsageError(f"{where}: se={self.se} is not allowed in a 1-bit (Bi-Real) block; expected se=0")
        if self.kind == "grouped":
            _check_min(where, "groups", self.groups, 1)
            if self.out_chs % self.groups:
                raise UsageError(
                    f"{where}: out_chs={self.out_chs} is not divisible by groups={self.groups}; "
                    f"expected a multiple of {self.groups}"
                )
        elif self.groups != 1:
            raise UsageError(f"{where}: groups={self.groups} is not allowed; groups exist only in grouped blocks")
        _check_min(where, "dilation", self.dilation, 1)
        if self.dilation != 1 and self.kind not in DILATED_KINDS:
            raise UsageError(f"{where}: dilation={self.dilation} is not allowed; dilation exists only in "
                             f"{'/'.join(DILATED_KINDS)} blocks (their k x k conv), expected d1")
        if self.dilation != 1 and self.w_bits == 1:
            raise UsageError(f"{where}: dilation={self.dilation} is not allowed in a 1-bit (Bi-Real) block; "
                             f"the packed binary kernels and their export have no dilation, expected d1")
        if not 0.0 < self.shift_frac <= 1.0:
            raise UsageError(f"{where}: shift_frac={self.shift_frac!r} is not allowed; expected 0 < sf <= 1")
        if self.shift_frac != 1.0 and self.kind != "shift":
            raise UsageError(f"{where}: shift_frac={self.shift_frac} is not allowed; the shifted fraction (sf) "
                             f"exists only in shift blocks, expected sf1")
        _check_choice(where, "active_shift", self.active_shift, (0, 1))
        if self.active_shift and self.kind != "shift":
            raise UsageError(f"{where}: active_shift={self.active_shift} is not allowed; active shift (as1) "
                             f"exists only in shift blocks, expected as0")
        if self.active_shift and self.shift_frac != 1.0:
            raise UsageError(f"{where}: active_shift=1 with shift_frac={self.shift_frac} is not allowed; an active "
                             f"shift learns every channel's offset, expected sf1")
        self._check_compression(where)
        if self.kind == "dense":
            _check_min(where, "growth", self.growth, 1)
        elif self.growth:
            raise UsageError(f"{where}: growth={self.growth} is not allowed; growth exists only in dense blocks")

    def _check_compression(self, where: str) -> None:
        """Searched sparsity / codebook: only on full-precision stages (DoReFa codes have no zero
        level, so a quantized layer cannot be pruned in its own record; docs/compression.md)."""
        s, cb = self.sparsity, self.codebook
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s < 1.0:
            raise UsageError(f"{where}: sparsity={s!r} is not allowed; expected 0 <= sparsity < 1 "
                             f"(arch key p: a percentage below 100, e.g. p75)")
        if isinstance(cb, bool) or not isinstance(cb, int) or not 0 <= cb <= MAX_CODEBOOK_BITS:
            raise UsageError(f"{where}: codebook={cb!r} is not allowed; expected codebook bits 0 (none) or "
                             f"1..{MAX_CODEBOOK_BITS} (arch key cb, e.g. cb4)")
        object.__setattr__(self, "sparsity", float(s))
        if (s or cb) and any(pair != (32, 32) for pair in self.all_layer_bits()):
            bad = next(pair for pair in self.all_layer_bits() if pair != (32, 32))
            raise UsageError(f"{where}: sparsity={s} / codebook={cb} with w{bad[0]} a{bad[1]} layers is not allowed; "
                             f"searched pruning and codebooks apply only to full-precision stages, expected w32 a32")

    @property
    def compressed(self) -> bool:
        """Its bit-carrying convs are searched sparse / codebook records (`nas.cost.layout`)."""
        return bool(self.sparsity or self.codebook)

    def _normalise_layer_bits(self, where: str) -> None:
        """Lists to tuples; check each list's length; a uniform list becomes the one value."""
        n = self.layer_count
        for key, name, one in (("w", "layer_w_bits", "w_bits"), ("a", "layer_a_bits", "a_bits")):
            values = getattr(self, name)
            if not isinstance(values, (tuple, list)):
                raise UsageError(f"{where}: {name}={values!r} is not allowed; expected a tuple of bit widths")
            values = tuple(values)
            for v in values:
                _check_choice(where, name, v, BITS)
            if values and len(values) != n:
                blocks = stage_blocks(self.kind, self.repeats)
                per = block_layers(self.kind, self.expand, self.repeats)
                how = f"{blocks} block(s) x {per} conv layers" if self.kind != "dense" else \
                    f"2 per dense layer x {self.repeats} + the transition"
                raise UsageError(f"{where}: {len(values)} {'weight' if key == 'w' else 'activation'} bit widths "
                                 f"given ({self._list_text(key, values)}), expected 1 or {n} (one per conv layer: "
                                 f"{how})")
            if values and len(set(values)) == 1:
                object.__setattr__(self, one, values[0])
                values = ()
            elif values:
                object.__setattr__(self, one, max(values))
            object.__setattr__(self, name, values)

    @staticmethod
    def _list_text(key: str, values) -> str:
        """'w8x4x8' as written (the first 16 entries of a longer list, then '...')."""
        text = key + "x".join(str(v) for v in values[:16])
        return text + "x..." if len(values) > 16 else text

    @property
    def layer_count(self) -> int:
        """Bit-carrying conv layers in the stage (`block_layers` x blocks)."""
        return stage_blocks(self.kind, self.repeats) * block_layers(self.kind, self.expand, self.repeats)

    @property
    def per_layer_bits(self) -> bool:
        return bool(self.layer_w_bits or self.layer_a_bits)

    def layer_bits(self, i: int) -> tuple[int, int]:
        """(w_bits, a_bits) of the stage's conv layer i (execution order)."""
        w = self.layer_w_bits[i] if self.layer_w_bits else self.w_bits
        a = self.layer_a_bits[i] if self.layer_a_bits else self.a_bits
        return w, a

    def all_layer_bits(self) -> tuple[tuple[int, int], ...]:
        return tuple(self.layer_bits(i) for i in range(self.layer_count))

    def block_bits(self, j: int) -> tuple[tuple[int, int], ...]:
        """(w_bits, a_bits) of each conv layer of block j (repeat j; dense: j == 0, the whole stage)."""
        per = block_layers(self.kind, self.expand, self.repeats)
        return tuple(self.layer_bits(j * per + i) for i in range(per))

    @property
    def binary(self) -> bool:
        """Bi-Real style block (1-bit weights; all layers or none, see the module docstring)."""
        return self.w_bits == 1


@dataclass(frozen=True)
class ArchSpec:
    """A whole network. The arch string (`codec.encode`) is its one-line record."""

    resolution: int
    in_chs: int
    stem: ConvSpec
    blocks: tuple[BlockSpec, ...]
    head: ConvSpec
    fc: FcSpec
    meta: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self):
        where = "arch"
        _check_min(where, "resolution", self.resolution, 1)
        _check_min(where, "in_chs", self.in_chs, 1)
        if not self.blocks:
            raise UsageError(f"{where}: no blocks; expected at least one block between stem and head")
        object.__setattr__(self, "blocks", tuple(self.blocks))
        chs = self.stem.out_chs
        for i, b in enumerate(self.blocks):
            if b.kind == "grouped" and chs % b.groups:
                raise UsageError(
                    f"{where}: block {i} ({b.kind}) input channels {chs} are not divisible by "
                    f"groups={b.groups}; expected the previous block's out_chs to be a multiple of {b.groups}"
                )
            chs = b.out_chs

    @property
    def feature_chs(self) -> int:
        """Channels entering the classifier."""
        return self.head.out_chs or self.blocks[-1].out_chs


def replace(spec, **changes):
    """dataclasses.replace that keeps validation (frozen specs)."""
    values = {f.name: getattr(spec, f.name) for f in fields(spec)}
    unknown = set(changes) - set(values)
    if unknown:
        raise TypeError(f"{type(spec).__name__} has no field(s) {sorted(unknown)}")
    values.update(changes)
    return type(spec)(**values)
