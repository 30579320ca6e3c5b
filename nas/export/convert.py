"""The conversion table: which deployable module runs each layer of a fake-quant network.

One table, `CONVERSIONS`, read top to bottom; the first row that takes a layer converts it::

    fake-quant module             bits (w = weight, a = the layer's input)   deployable module      path
    BinaryConv2d / QuantLinear    w 1 (a BiRealUnit's conv: the whole unit)  PackedBinaryConv2d     binary
                                                                             (PackedBinaryUnit)
    QuantConv2d / QuantLinear     w 2/4/8, a 2/4/8 (PACT), no dilation,      PackedIntegerConv2d    integer
                                  taps x C_in/g <= MAX_K
    QuantConv2d / QuantLinear     anything else: w 16/32, or w 2/4/8 with a  float_layer            float
                                  16/32-bit input, or dilated                (QuantConv2d, w 32)

and the BatchNorm2d that reads a conv is folded into that conv's record (`nas.export.fold`):
it becomes an Identity, and the ReLU / h-swish right after it is fused into an integer
layer's epilogue (else that activation stays, `_bn_remainder`).

Integer from layer to layer (`chain_integer_layers`): where an integer layer's output is read
by exactly one module and that module is an integer layer, the producer requantizes straight
to the consumer's codes (the same float32 rounding the consumer's own quantizer would do, so
the numbers do not change) and the consumer skips its quantizer. A shift or a channel shuffle
in between (`CODE_TRANSPARENT`) moves values without changing them and fills with zeros, and
the quantizer maps 0 to code 0 pointwise, so it runs on the codes and the chain goes through.

Residual adds in the epilogue (`fuse_residual_adds`): a block with its shortcut whose last
layer is integer becomes a `ResidualBlock`, that layer adding the shortcut in its epilogue.

`packed_model` (`nas.export.deploy`) applies this table, so `nas export` (its figures and its
prediction agreement), `nas infer` and `nas bench infer` run the same conversion. Each converted
model carries `layer_paths`: one entry per payload record saying which path it runs on (and, on
the float path, why not integer); the bundle manifest records it.
"""

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from nas.cost.kernel_path import integer_refusal
from nas.export.fold import bn_partners
from nas.export.packed import (FixedOrderAvgPool, PackedBinaryConv2d, PackedBinaryUnit, PackedIntegerConv2d,
                               ResidualBlock, float_layer)
from nas.export.payload import LayerGeometry, LayerRecord
from nas.quant import BinaryConv2d, BiRealUnit, QuantConv2d, QuantLinear

FUSED_ACTIVATIONS = {nn.ReLU: "relu", nn.Hardswish: "hswish"}  # module type -> IntegerConv epilogue


def _binary(geom: LayerGeometry, m: nn.Module) -> str | None:
    return None if geom.bits == 1 else f"w_bits={geom.bits}"


def _integer(geom: LayerGeometry, m: nn.Module) -> str | None:
    """None when the integer kernels take this layer, else why not (recorded in the manifest):
    `nas.cost.kernel_path.integer_refusal`, the predicate the latency model prices with."""
    dilation = max(m.dilation) if isinstance(m, QuantConv2d) else 1
    return integer_refusal(geom.bits, geom.a_bits, geom.row, dilation)


def _float(geom: LayerGeometry, m: nn.Module) -> str | None:
    return None if geom.bits != 1 else "w_bits=1"


@dataclass(frozen=True)
class Conversion:
    """One row of the table: `sources` at the bits `takes` accepts become `target`."""

    path: str  # "binary" | "integer" | "float"
    sources: tuple[type, ...]  # fake-quant module types
    bits: str  # the bits the row takes, in words
    target: Callable  # deployable module (class or factory), called (record, fake-quant module, ...)
    takes: Callable[[LayerGeometry, nn.Module], str | None]  # None: takes it; else why not


CONVERSIONS = (
    Conversion("binary", (BinaryConv2d, QuantLinear), "w 1", PackedBinaryConv2d, _binary),
    Conversion("integer", (QuantConv2d, QuantLinear), "w 2/4/8, input a 2/4/8, no dilation",
               PackedIntegerConv2d, _integer),
    Conversion("float", (QuantConv2d, QuantLinear), "w 2..32 otherwise", float_layer, _float),
)
PATHS = tuple(dict.fromkeys(c.path for c in CONVERSIONS))


def conversion_for(geom: LayerGeometry, module: nn.Module, integer: bool = True) -> tuple[Conversion, str | None]:
    """(the row that converts this layer, why the integer row declined it or None).
    `integer=False` skips the integer row: every 2..32-bit layer takes the float path."""
    declined = None
    for row in CONVERSIONS:
        if row.path == "integer" and not integer:
            continue
        if isinstance(module, row.sources):
            why = row.takes(geom, module)
            if why is None:
                return row, declined if row.path == "float" else None
            if row.path == "integer":
                declined = why
    raise TypeError(f"{geom.name}: no conversion for {type(module).__name__} at w_bits={geom.bits}, "
                    f"a_bits={geom.a_bits}; expected one of the rows of nas.export.convert.CONVERSIONS")


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _bn_remainder(bn: nn.BatchNorm2d) -> nn.Module:
    """What is left of a BatchNorm once folded: nothing, or timm BatchNormAct2d's drop + act."""
    if hasattr(bn, "act"):
        return nn.Sequential(bn.drop, bn.act)
    return nn.Identity()


def fusable_activation(model: nn.Module, bn_name: str, bn: nn.BatchNorm2d) -> tuple[str, list[str]] | None:
    """(epilogue activation, modules it replaces) for the activation right after a folded
    BatchNorm, or None when what follows cannot be fused (the remainder then stays).

    timm's BatchNormAct2d holds its activation (drop must be an Identity); a plain BatchNorm2d
    in a Sequential is followed by its next sibling when that is a ReLU / Hardswish."""
    if hasattr(bn, "act"):
        if not isinstance(bn.drop, nn.Identity):
            return None
        if isinstance(bn.act, nn.Identity):
            return "none", []
        act = FUSED_ACTIVATIONS.get(type(bn.act))
        return None if act is None else (act, [])
    parent_name, _, child = bn_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.Sequential):
        names = [n for n, _ in parent.named_children()]
        i = names.index(child)
        if i + 1 < len(names):
            act = FUSED_ACTIVATIONS.get(type(getattr(parent, names[i + 1])))
            if act is not None:
                return act, [f"{parent_name}.{names[i + 1]}" if parent_name else names[i + 1]]
    return "none", []


def convert(model: nn.Module, records: list[LayerRecord], integer: bool = True) -> list[dict]:
    """Swap every quantized layer of `model` (a `QuantNet` in eval mode) for its deployable
    module per `CONVERSIONS`, holding the record's weights; fold the BatchNorms; chain
    consecutive integer layers. Returns the layer paths (one dict per record, payload order).
    `integer=False`: no integer layers (the float form the QDQ ONNX export traces)."""
    pairs = bn_partners(model)
    layers = {layer.name: layer.module for layer in model.quant_layers()}
    units = {f"{name}.conv": name for name, m in model.named_modules() if isinstance(m, BiRealUnit)}
    paths, binary = [], []
    for rec in records:  # 2..32 bits first: the binary units then take their converted shortcuts
        g = rec.geom
        src = layers[g.name]
        row, declined = conversion_for(g, src, integer)
        entry = {"name": g.name, "w_bits": g.bits, "a_bits": g.a_bits, "path": row.path}
        if declined:
            entry["why_not_integer"] = declined
        activation = "none"
        if g.name in pairs:
            bn_name, bn = pairs[g.name]
            fused = fusable_activation(model, bn_name, bn) if row.path == "integer" else None
            if fused is None:
                _replace(model, bn_name, _bn_remainder(bn))
            else:
                activation, absorbed = fused
                for name in (bn_name, *absorbed):
                    _replace(model, name, nn.Identity())
        if row.path == "binary":
            binary.append((rec, src))
        elif row.path == "integer":
            _replace(model, g.name, row.target(rec, src, activation))
            entry["activation"] = activation
        else:
            _replace(model, g.name, row.target(rec, src))
        paths.append(entry)
    for rec, src in binary:
        conv = PackedBinaryConv2d(rec, src)
        name = rec.geom.name
        if name in units:
            unit = model.get_submodule(units[name])
            _replace(model, units[name], PackedBinaryUnit(unit.shortcut, conv))
        else:
            _replace(model, name, conv)
    if integer:  # the global pool in a stated float32 order (the C export reproduces it)
        for name, m in list(model.named_modules()):
            if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
                _replace(model, name, FixedOrderAvgPool())
    fused = fuse_residual_adds(model)
    chained = chain_integer_layers(model)
    for entry in paths:
        if entry["name"] in chained:
            entry["output"] = f"codes of {chained[entry['name']]}"
        if entry["name"] in chained.values():
            entry["input"] = "codes"
        if entry["name"] in fused:
            entry["residual"] = "fused"
    return paths


def _execution_order(block: nn.Module) -> list[str] | None:
    """The child names a residual block runs, in order (without the add), or None when this
    is not a block `fuse_residual_adds` knows. timm's blocks: their forward, written out."""
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual

    from nas.blocks.layers import Block

    if isinstance(block, Block):
        return [n for n, _ in block.named_children()]
    if isinstance(block, (DepthwiseSeparableConv, InvertedResidual)) and block.conv_s2d is None:
        if isinstance(block, DepthwiseSeparableConv):
            return ["conv_dw", "bn1", "aa", "se", "conv_pw", "bn2"]
        return ["conv_pw", "bn1", "conv_dw", "bn2", "aa", "se", "conv_pwl", "bn3"]
    return None


def fuse_residual_adds(model: nn.Module) -> set[str]:
    """Replace each residual block whose last layer is integer (no fused activation, only
    Identities after it) by a `ResidualBlock` adding the shortcut in that layer's epilogue;
    returns the names of the layers that now add it."""
    fused = set()
    for name, block in list(model.named_modules()):
        if not getattr(block, "has_skip", False):
            continue
        order = _execution_order(block)
        if order is None or not isinstance(getattr(block, "drop_path", nn.Identity()), nn.Identity):
            continue  # a block this does not know, or a drop path that is not the identity
        layers = [(n, getattr(block, n)) for n in order]
        real = [i for i, (_, m) in enumerate(layers) if not isinstance(m, nn.Identity)]
        last_name, last = layers[real[-1]]
        if not isinstance(last, PackedIntegerConv2d) or last.activation != "none":
            continue
        _replace(model, name, ResidualBlock(layers, last_name))
        fused.add(f"{name}.{last_name}")
    return fused


def _passes_input_on(m: nn.Module) -> bool:
    """A container whose forward hands its input to its first child and uses it for nothing
    else: a Sequential (a `Block` without its residual) or a timm block without its skip."""
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual

    if isinstance(m, (nn.Sequential, DepthwiseSeparableConv, InvertedResidual)):
        return not getattr(m, "has_skip", False)
    return False


def _code_transparent() -> tuple[type, ...]:
    """Modules that commute with a pointwise quantizer whose code of 0.0 is 0: they only move
    values (and fill with zeros), so they give the same result on codes as on floats."""
    from nas.blocks.layers import ChannelShuffle, Shift
    return (Shift, ChannelShuffle)


def chain_integer_layers(model: nn.Module) -> dict[str, str]:
    """Let each integer layer whose output only one integer layer reads write that layer's
    codes; returns producer name -> consumer name.

    Found by running the converted model once on an all-zero image (a probe of the graph, as
    `bn_partners`): every module's input tensor is recorded by identity. A producer's output
    is chained when the modules that receive it are, apart from Identities (which return their
    input object itself) and containers that only pass it on to the consumer, exactly one
    integer layer. Tensor uses outside modules (residual adds, concatenations, the SE gate)
    happen inside containers that are not pass-on containers (`Block` with has_skip,
    `DenseBlock`, `SqueezeExcite`), so such a tensor never has a single integer consumer.
    A code-transparent module (shift, channel shuffle) as the one reader is followed to the
    reader of its own output."""
    names = {id(m): n for n, m in model.named_modules()}
    ints = {n: m for n, m in model.named_modules() if isinstance(m, PackedIntegerConv2d)}
    if len(ints) < 2:
        return {}
    transparent = {n: m for n, m in model.named_modules() if isinstance(m, _code_transparent())}
    produced, readers, keep, passed = {}, defaultdict(list), [], {}

    def after(module, args, out):
        produced[id(out)] = names[id(module)]
        keep.append(out)

    def through(module, args, out):
        passed[names[id(module)]] = id(out)
        keep.append(out)

    def before(module, args):
        if args and isinstance(args[0], torch.Tensor):
            readers[id(args[0])].append(names[id(module)])
            keep.append(args[0])

    hooks = [m.register_forward_hook(after) for m in ints.values()]
    hooks += [m.register_forward_hook(through) for m in transparent.values()]
    hooks += [m.register_forward_pre_hook(before) for m in model.modules()]
    a = model.arch
    try:
        with torch.inference_mode():
            model(torch.zeros(1, a.in_chs, a.resolution, a.resolution))
    finally:
        for h in hooks:
            h.remove()

    def sole_reader(key) -> str | None:
        """The one module (not an Identity, not a pass-on container) that reads tensor `key`,
        followed through code-transparent modules; None where there is not exactly one."""
        mods = {n: model.get_submodule(n) for n in readers.get(key, [])}
        real = [n for n, m in mods.items() if not isinstance(m, nn.Identity) and not _passes_input_on(m)]
        if len(real) != 1 or not all(real[0].startswith(n + ".") for n, m in mods.items() if _passes_input_on(m)):
            return None
        if real[0] in transparent:
            return sole_reader(passed[real[0]]) if real[0] in passed else None
        return real[0]

    chained = {}
    for key, producer in produced.items():
        consumer = sole_reader(key)
        if consumer in ints:
            ints[producer].requant_to(ints[consumer])
            chained[producer] = consumer
    return chained
