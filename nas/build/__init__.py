"""Spec -> modules: `build_model(arch)` builds the fake-quant network an ArchSpec describes."""

from nas.build.blocks import BLOCK_BUILDERS, Block, ChannelShuffle, DenseBlock, Shift, build_stage
from nas.build.model import QuantLayer, QuantNet, build_model

__all__ = ["BLOCK_BUILDERS", "Block", "ChannelShuffle", "DenseBlock", "QuantLayer", "QuantNet", "Shift",
           "build_model", "build_stage"]
