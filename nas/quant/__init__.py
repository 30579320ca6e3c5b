"""Quantization: quantizer functions with straight-through gradients, fake-quant layers,
Bi-Real binary units. Imports `nas.cost.kernel_path` (which convs the packed kernels run) and not `nas.blocks`."""

from nas.quant.binary import BinaryConv2d, BiRealUnit, bireal_shortcut, packed_kernels
from nas.quant.functions import (PACT, ApproxSign, HalfSTE, RoundSTE, SignSTE, TernarySTE, act_steps,
                                 binary_scale, dorefa_scale, dorefa_weight, pact_reference, quantize_weight, sign)
from nas.quant.modules import BITS, CLIP_INIT, PACT_BITS, ActQuant, QuantConv2d, QuantLinear, check_bits

__all__ = [
    "BITS", "CLIP_INIT", "PACT_BITS", "PACT", "ActQuant", "ApproxSign", "BiRealUnit", "BinaryConv2d",
    "HalfSTE", "QuantConv2d", "QuantLinear", "RoundSTE", "SignSTE", "TernarySTE", "act_steps",
    "binary_scale", "bireal_shortcut", "check_bits", "dorefa_scale", "dorefa_weight", "packed_kernels",
    "pact_reference", "quantize_weight", "sign",
]
