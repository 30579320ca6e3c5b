"""Which path a conv / linear takes in the packed model (`nas.export.convert`): the one statement of it.

Three paths, decided from a layer's structure alone (torch-free, so that the latency model
prices a spec on the path the deployed model will really run):

- *binary* (`on_packed_kernels`): 1-bit weights and 1-bit activations, one group, square
  kernel / stride / padding, no dilation: the packed XNOR-popcount kernels (`nas.kernels`).
  The modules (`nas.quant.binary.BinaryConv2d`, `nas.export.packed.PackedBinaryConv2d`)
  add the runtime conditions (eval mode, no gradient, CPU float32, not tracing, kernels
  built); the latency model prices a conv on the kernel path when this holds and the
  profiled device has the kernels. Other 1-bit layers run the packed module's torch fallback.
- *integer* (`integer_refusal` is None): 2/4/8-bit weights reading a 2/4/8-bit PACT input,
  no dilation, C_in/g x taps <= MAX_K (int32 accumulators): the integer kernels
  (`nas.kernels.integer`); `nas.export.convert`'s conversion table asks this function.
- *float*: everything else (16/32-bit weights, or a 2..8-bit layer whose input is 16/32-bit,
  or dilated): dequantized weights in PyTorch.
"""

INT_BITS = (2, 4, 8)  # weight / activation widths with an integer kernel
MAX_K = 33024  # taps x input channels per output: 255 * 255 * K must stay < 2^31
ACTIVATIONS = ("none", "relu", "hswish")  # what an integer layer's epilogue fuses (= NAS_ACT_* in int.h)


def check_int_bits(where: str, name: str, bits: int) -> None:
    """UsageError unless `bits` has an integer kernel (2, 4 or 8)."""
    from nas.errors import UsageError
    if bits not in INT_BITS:
        raise UsageError(f"{where}: {name}={bits!r} has no integer kernel; expected one of {list(INT_BITS)}")


def on_packed_kernels(w_bits: int, a_bits: int, groups: int, square: bool = True, dilation: int = 1) -> bool:
    return w_bits == 1 and a_bits == 1 and groups == 1 and square and dilation == 1


def integer_refusal(w_bits: int, a_bits: int, row: int, dilation: int = 1) -> str | None:
    """None when the integer kernels take a layer with these bits, `row` = C_in/g x k_h x k_w
    weights per output channel and `dilation`; else why not, in words (the bundle manifest
    records it as `why_not_integer`)."""
    if w_bits not in INT_BITS:
        return f"w_bits={w_bits} has no integer kernel (integer: {list(INT_BITS)})"
    if a_bits not in INT_BITS:
        return f"input a_bits={a_bits} is not a 2/4/8-bit PACT input"
    if dilation != 1:
        return f"dilation {(dilation, dilation)} (the integer kernels have none)"
    if row > MAX_K:
        return f"C_in/g x taps = {row} exceeds {MAX_K} (int32 accumulators)"
    return None


def on_integer_kernels(w_bits: int, a_bits: int, row: int, dilation: int = 1) -> bool:
    return integer_refusal(w_bits, a_bits, row, dilation) is None


def layer_path(w_bits: int, a_bits: int, row: int, dilation: int = 1) -> str:
    """"binary" (any 1-bit weight: the packed binary module), "integer" or "float"."""
    if w_bits == 1:
        return "binary"
    return "integer" if on_integer_kernels(w_bits, a_bits, row, dilation) else "float"
