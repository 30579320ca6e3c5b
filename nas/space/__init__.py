"""Search spaces: spec dataclasses, the arch-string codec, YAML spaces, scaling, sampling."""

from nas.space.codec import decode, encode, encode_block
from nas.space.file import Space, load_space
from nas.space.sample import Sample, random_archs, random_samples, replay, sample_arch, space_size
from nas.space.scaling import Scaling, scale_arch
from nas.space.spec import BITS, BLOCK_KINDS, ArchSpec, BlockSpec, ConvSpec, FcSpec

__all__ = [
    "ArchSpec", "BlockSpec", "ConvSpec", "FcSpec", "BITS", "BLOCK_KINDS", "Sample", "Scaling", "Space",
    "decode", "encode", "encode_block", "load_space", "random_archs",
    "random_samples", "replay", "sample_arch", "scale_arch", "space_size",
]
