"""`build_model`: an `ArchSpec` -> a fake-quant `nn.Module` (never parses strings).

Layout (spec.py): stem conv k x k (stride s, padding k // 2) + BN + act; the stages; head
1x1 conv + BN + act when head.out_chs > 0; global average pool; linear classifier with
bias. Stem, head and classifier use their own bits; their inputs are activation sites
too (the image and the block output are signed; the classifier's input is unsigned only
after a ReLU head). A stem or head with w_bits == 1 is a plain binary conv + BN + act
(no shortcut: the Bi-Real unit belongs to blocks).
"""

from typing import NamedTuple

import torch
from torch import nn

from nas.blocks import KINDS
from nas.blocks.layers import Block, act_output_signed, conv_bn_act
from nas.errors import UsageError
from nas.quant import BinaryConv2d, QuantConv2d, QuantLinear
from nas.space.spec import ArchSpec, BlockSpec


def build_stage(b: BlockSpec, in_chs: int) -> nn.Sequential:
    """A stage: `b.repeats` blocks (the first strided and changing channels); dense: one block."""
    kind = KINDS[b.kind]
    if getattr(kind, "ONE_BLOCK_PER_STAGE", False):
        return nn.Sequential(kind.build(b, in_chs, b.stride, b.block_bits(0)))
    return nn.Sequential(*[kind.build(b, in_chs if i == 0 else b.out_chs, b.stride if i == 0 else 1, b.block_bits(i))
                           for i in range(b.repeats)])


def mark_compressed(stage: nn.Module, b: BlockSpec) -> None:
    """Mark a stage's bit-carrying convs (squeeze-excite's excluded, as `nas.cost.graph`'s
    `unit` marks their ops) with the stage's searched sparsity / codebook: attributes
    `sparsity` and `codebook` that training (`nas.train.sparsify`) and the payload
    (`nas.export.fold`) read. Unmarked convs have neither attribute (read as 0)."""
    if not b.compressed:
        return
    convs = [m for name, m in stage.named_modules() if isinstance(m, QuantConv2d) and ".se." not in f".{name}."]
    if len(convs) != b.layer_count:
        raise AssertionError(f"{b.kind} stage: {len(convs)} convs to mark, expected {b.layer_count} (block_layers)")
    for m in convs:
        m.sparsity, m.codebook = b.sparsity, b.codebook


class QuantLayer(NamedTuple):
    """One quantized conv / linear of a model, in execution order."""

    name: str  # qualified module name in the model
    module: nn.Module  # a QuantConv2d (or BinaryConv2d) or QuantLinear
    w_bits: int
    a_bits: int


class QuantNet(nn.Module):
    """The network an ArchSpec describes; `arch` keeps the spec it was built from."""

    def __init__(self, arch: ArchSpec):
        super().__init__()
        self.arch = arch
        stem, head, fc = arch.stem, arch.head, arch.fc
        self.stem = Block(conv_bn_act(arch.in_chs, stem.out_chs, stem.kernel, stem.stride, w_bits=stem.w_bits,
                                      a_bits=stem.a_bits, signed=True, act=stem.act))
        stages, chs = [], stem.out_chs
        for b in arch.blocks:
            stages.append(build_stage(b, chs))
            mark_compressed(stages[-1], b)
            chs = b.out_chs
        self.blocks = nn.Sequential(*stages)
        if head.out_chs:
            self.head = Block(conv_bn_act(chs, head.out_chs, 1, w_bits=head.w_bits, a_bits=head.a_bits,
                                          signed=True, act=head.act))
            fc_signed = act_output_signed(head.act)
        else:
            self.head = nn.Identity()
            fc_signed = True
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.fc = QuantLinear(arch.feature_chs, fc.num_classes, bias=True, w_bits=fc.w_bits, a_bits=fc.a_bits,
                              signed=fc_signed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chs, resolution, resolution) float images -> (N, num_classes) logits."""
        if not torch.jit.is_tracing():
            a = self.arch
            if x.dim() != 4 or x.shape[1] != a.in_chs or tuple(x.shape[2:]) != (a.resolution, a.resolution):
                raise UsageError(f"model input of shape {tuple(x.shape)} is not allowed; expected "
                                 f"(N, {a.in_chs}, {a.resolution}, {a.resolution}) (resize to the arch's resolution)")
        return self.fc(self.pool(self.head(self.blocks(self.stem(x)))))

    def quant_layers(self) -> list[QuantLayer]:
        """Every quantized conv / linear with its bits, in execution order.

        Module registration order is execution order throughout (a binary unit registers its
        shortcut first: the fused kernel needs the shortcut's output as its residual).
        """
        return [QuantLayer(name, m, m.w_bits, m.a_bits) for name, m in self.named_modules()
                if isinstance(m, (QuantConv2d, QuantLinear))]

    def use_kernels(self, enabled: bool = True) -> "QuantNet":
        """Allow (default) or forbid the packed binary kernels in eval mode."""
        for m in self.modules():
            if isinstance(m, BinaryConv2d):
                m.use_kernels = enabled
        return self


def build_model(arch: ArchSpec) -> QuantNet:
    """Build the fake-quant network for `arch` (float weights, quantized on the fly)."""
    if not isinstance(arch, ArchSpec):
        raise UsageError(f"build_model: got {type(arch).__name__}; expected an ArchSpec "
                         f"(decode an arch string with nas.space.decode first)")
    return QuantNet(arch)
