"""Which convs the packed-binary kernels (`nas.kernels`) run: the one statement of it.

Structure: 1-bit weights and 1-bit activations, one group, square kernel / stride /
padding, no dilation. The modules (`nas.quant.binary.BinaryConv2d`,
`nas.export.packed.PackedBinaryConv2d`) add the runtime conditions (eval mode, no
gradient, CPU float32, not tracing, kernels built); the latency model prices a conv on the
kernel path when this holds and the profiled device has the kernels.
"""


def on_packed_kernels(w_bits: int, a_bits: int, groups: int, square: bool = True, dilation: int = 1) -> bool:
    return w_bits == 1 and a_bits == 1 and groups == 1 and square and dilation == 1
