"""Integer (2..8-bit) kernels: equal to the numpy int64 reference at atol=0 on every kernel
level this CPU runs, and in agreement with the fake-quant PyTorch layer they stand for.

Inputs are random codes on purpose: this is kernel arithmetic, not a data set.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nas.errors import UsageError
from nas.kernels import int_reference as R
from nas.kernels import integer as I
from nas.quant import integer as Q
from nas.quant.functions import act_steps
from nas.quant.modules import QuantConv2d

pytestmark = pytest.mark.skipif(not I.available(), reason="nas.kernels._int is not built (pip install -e .)")

LEVELS = I.supported_isas() if I.available() else []


@pytest.fixture(params=LEVELS)
def level(request):
    I.set_isa(request.param)
    yield request.param
    I.set_isa(None)


def _codes(g, shape, a_bits, signed):
    top = act_steps(a_bits, signed)
    lo = -top if signed else 0
    x = g.integers(lo, top + 1, shape)
    x[..., :1] = top  # the extreme code in every pixel
    return x.astype(np.int8 if signed else np.uint8)


def _weights(g, shape, w_bits):
    L = 2**w_bits - 1
    w = 2 * g.integers(0, L + 1, shape) - L  # DoReFa codes: odd, -L..L
    w.reshape(-1)[:2] = (-L, L)
    return w.astype(np.int16)


def _run(x, w, w_bits, stride, padding, groups, scale, bias, residual=None, activation="none", requant=None):
    t = torch.from_numpy
    y = I.int_conv2d(t(x), t(w), w_bits, stride, padding, groups, t(scale), t(bias),
                     None if residual is None else t(residual), activation, requant, threads=2)
    ref = R.conv2d(x, w, (stride, stride), (padding, padding), groups, scale, bias, residual, activation, requant)
    return y.numpy(), ref


# (N, H, W, Cin, Cout, k, stride, padding, groups): odd channel counts, strides, paddings,
# grouped, depthwise (with and without multiplier), 1x1, a 5x5 and a non-square input.
SHAPES = [
    (2, 7, 9, 5, 19, 3, 1, 1, 1),
    (1, 8, 8, 3, 33, 3, 2, 1, 1),
    (1, 9, 7, 12, 12, 3, 1, 1, 12),   # depthwise
    (1, 10, 10, 7, 7, 3, 2, 1, 7),    # depthwise, stride 2, odd C
    (2, 11, 9, 40, 40, 3, 1, 1, 40),  # depthwise: two 16-channel blocks + 8, odd output width
    (1, 8, 7, 23, 23, 5, 2, 2, 23),   # depthwise 5x5 (odd tap count), stride 2, 16 + 7 channels
    (1, 6, 6, 32, 32, 2, 1, 0, 32),   # depthwise 2x2 (even tap count)
    (1, 6, 6, 4, 8, 3, 1, 1, 4),      # channel multiplier 2: general grouped loop
    (1, 9, 9, 10, 6, 3, 1, 0, 2),     # grouped, no padding
    (1, 5, 5, 17, 31, 1, 1, 0, 1),    # 1x1
    (1, 11, 11, 6, 9, 5, 2, 2, 1),    # 5x5, stride 2
    (1, 3, 3, 64, 40, 3, 1, 2, 1),    # padding beyond the kernel's half
]


@pytest.mark.parametrize("w_bits,a_bits,signed", [(8, 8, False), (4, 4, False), (2, 2, False), (8, 8, True),
                                                   (2, 8, True), (4, 8, False)])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv_equals_int64_reference(level, shape, w_bits, a_bits, signed):
    g = np.random.default_rng(hash((shape, w_bits, a_bits, signed)) % 2**32)
    N, H, W, cin, cout, k, s, p, groups = shape
    x = _codes(g, (N, H, W, cin), a_bits, signed)
    w = _weights(g, (cout, cin // groups, k, k), w_bits)
    scale = (g.standard_normal(cout) * 1e-3).astype(np.float32)
    bias = g.standard_normal(cout).astype(np.float32)
    scale[:3], bias[:2] = (0.0, -0.0, -1e-3), (-0.0, -0.0)  # signed zeros into relu / hswish
    for activation in ("none", "relu", "hswish"):
        y, ref = _run(x, w, w_bits, s, p, groups, scale, bias, activation=activation)
        np.testing.assert_array_equal(y.view(np.int32), ref.view(np.int32))  # float32 bit for bit, -0.0 too


# Byte path (AVX-512 VNNI): register blocks of 6 pixels x 4 lane blocks, chunks of 24 pixels
# that cross rows and images, partial lane blocks, split 8-bit weights, grouped.
BYTE_SHAPES = [
    (2, 9, 7, 20, 70, 3, 1, 1, 1),    # 5 lane blocks (4 + 1), pixels across rows and images
    (1, 13, 13, 64, 64, 3, 1, 1, 1),  # 4 lane blocks, Wo = 13 (6 + 6 + 1)
    (3, 5, 5, 9, 24, 3, 2, 1, 3),     # grouped, stride 2, cin_g = 3 (one padded quad)
    (1, 6, 6, 128, 17, 1, 1, 0, 1),   # 1x1, 17 channels
    (2, 11, 11, 1, 16, 3, 1, 1, 1),   # a 1-channel stem: a kernel row is 3 bytes, one quad
    (1, 16, 16, 3, 20, 7, 2, 3, 1),   # a 3-channel 7x7/2 stem: 21 bytes, 6 quads
    (1, 7, 7, 6, 8, 5, 1, 2, 1),      # 5x5, 6 channels: rows straddle quads
]


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("w_bits", [8, 4, 2])
@pytest.mark.parametrize("shape", BYTE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_byte_path_equals_int64_reference(level, shape, w_bits, signed):
    g = np.random.default_rng(hash((shape, w_bits, signed)) % 2**32)
    N, H, W, cin, cout, k, s, p, groups = shape
    x = _codes(g, (N, H, W, cin), 8, signed)
    w = _weights(g, (cout, cin // groups, k, k), w_bits)
    scale = (g.standard_normal(cout) * 1e-4).astype(np.float32)
    bias = g.standard_normal(cout).astype(np.float32)
    res = g.standard_normal((N, (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1, cout)).astype(np.float32)
    for activation, requant in (("relu", (0.0, 2.0, float(np.float32(2.0) / np.float32(255)))),
                                ("hswish", None), ("none", (-1.0, 1.0, float(np.float32(1.0) / np.float32(127))))):
        y, ref = _run(x, w, w_bits, s, p, groups, scale, bias, res, activation, requant)
        np.testing.assert_array_equal(y.view(np.int32) if y.dtype == np.float32 else y.astype(np.int32),
                                      ref.view(np.int32) if ref.dtype == np.float32 else ref)


def test_byte_weights_forms():
    """|w| <= 127 is its own int8 code; odd codes beyond split as 2 s + 1; anything else has no
    byte form (the int16 path runs it, still exact)."""
    w = np.array([[[[127, -127]]], [[[3, -5]]]], np.int16)  # (2, 1, 1, 2)
    codes, split, wsum = I.byte_weights(w, 1)
    assert not split and codes.dtype == np.int8 and codes.size == 1 * 1 * 1 * 1 * 1 * 16 * 4  # (G, nb, kh, nseg, segq, 16, 4): kw * cin = 2 bytes, 1 quad
    assert sorted(codes[codes != 0].tolist()) == [-127, -5, 3, 127] and wsum.tolist() == [0, -2]
    codes, split, _ = I.byte_weights(np.array([[[[255, -255, 1, -1]]]], np.int16), 1)
    assert split and sorted(codes[codes != 0].tolist()) == [-128, -1, 127]  # (w - 1) / 2; 1 -> 0
    assert I.byte_weights(np.array([[[[200, 2]]]], np.int16), 1) is None
    g = np.random.default_rng(5)
    x = _codes(g, (1, 5, 5, 4), 8, False)
    w = np.where(g.random((6, 4, 3, 3)) < 0.5, 200, -130).astype(np.int16)  # even, beyond int8
    one, zero = np.ones(6, np.float32), np.zeros(6, np.float32)
    y, ref = _run(x, w, 8, 1, 1, 1, one, zero)
    np.testing.assert_array_equal(y, ref)


def test_the_avx512_and_avx2_levels_have_the_byte_path(level):
    """Every level this CPU runs says whether it has the byte path: AVX-512 VNNI (any int8 code,
    split 8-bit codes) and AVX2 (vpmaddubsw: codes within +-15, i.e. 2- and 4-bit weights) do,
    the portable level runs the int16 path (the exactness tests above cover both on whatever
    CPU this is)."""
    assert I.byte_path() == (level in ("avx512", "avx2"))


@pytest.mark.parametrize("signed", [False, True])
def test_byte_path_bound_of_small_codes_is_exact(level, signed):
    """Codes at +-15 (the AVX2 byte path's bound) against the largest inputs: each int16 that
    vpmaddubsw and the add of two quads produce holds 4 * 255 * 15 = 15300 at most, no
    saturation; 16 and beyond go to the int16 path. Equal to the int64 reference either way."""
    g = np.random.default_rng(11)
    x = np.full((1, 5, 5, 40), 127 if signed else 255, np.int8 if signed else np.uint8)
    if signed:
        x[0, ::2] = -128
    one, zero = np.ones(24, np.float32), np.zeros(24, np.float32)
    for bound in (15, 16):
        w = np.where(g.random((24, 40, 3, 3)) < 0.7, bound, -bound).astype(np.int16)
        w[::3] = bound  # whole channels at +bound: the largest sums
        y, ref = _run(x, w, 8 if bound > 15 else 4, 1, 1, 1, one, zero)
        np.testing.assert_array_equal(y, ref)


def test_accumulator_extremes_are_exact(level):
    """Largest codes everywhere: the int32 accumulator reaches 255 * 255 * K; scale 1 so the
    float output is acc itself (exact below 2^24)."""
    x = np.full((1, 4, 4, 128), 255, np.uint8)
    w = np.full((16, 128, 3, 3), -255, np.int16)
    one, zero = np.ones(16, np.float32), np.zeros(16, np.float32)
    y, ref = _run(x, w, 8, 1, 0, 1, one, zero)
    assert int(ref.min()) == -255 * 255 * 128 * 9 and y.min() == ref.min()
    np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize("signed_out", [False, True])
def test_residual_and_requantization(level, signed_out):
    g = np.random.default_rng(7)
    x = _codes(g, (2, 8, 8, 24), 4, False)
    w = _weights(g, (24, 24, 3, 3), 4)
    scale = (g.standard_normal(24) * 0.01).astype(np.float32)
    bias = g.standard_normal(24).astype(np.float32)
    res = g.standard_normal((2, 8, 8, 24)).astype(np.float32)
    alpha = np.float32(3.0)
    bits = 4
    s_next = np.float32(alpha / np.float32(act_steps(bits, signed_out)))
    lo = -alpha if signed_out else np.float32(0)
    for activation in ("none", "relu", "hswish"):
        y, ref = _run(x, w, 4, 1, 1, 1, scale, bias, res, activation, (lo, alpha, s_next))
        assert y.dtype == (np.int8 if signed_out else np.uint8)
        np.testing.assert_array_equal(y.astype(np.int32), ref)
        # the codes are what PACT makes of the kernel's float output (the next layer's input)
        yf, _ = _run(x, w, 4, 1, 1, 1, scale, bias, res, activation)
        codes = Q.act_codes(torch.from_numpy(yf), float(alpha), bits, signed_out).numpy()
        np.testing.assert_array_equal(y.astype(np.int16), codes)


def test_linear_equals_reference(level):
    g = np.random.default_rng(3)
    x = _codes(g, (5, 37), 8, False)
    w = _weights(g, (11, 37), 8)
    scale = (g.standard_normal(11) * 1e-3).astype(np.float32)
    bias = g.standard_normal(11).astype(np.float32)
    y = I.int_linear(torch.from_numpy(x), torch.from_numpy(w), 8, torch.from_numpy(scale), torch.from_numpy(bias))
    ref = R.conv2d(x[:, None, None], w[:, :, None, None], scale=scale, bias=bias)[:, 0, 0]
    np.testing.assert_array_equal(y.numpy(), ref)


def test_split_weight_codes_identity():
    """w_int = 2 s + 1 with s an int8: Σ x w_int = 2 Σ x s + Σ x (the u8 x s8 form)."""
    g = np.random.default_rng(5)
    w = _weights(g, (8, 6, 3, 3), 8)
    s = Q.split_weight_codes(torch.from_numpy(w), 8).numpy()
    assert s.dtype == np.int8 and s.min() >= -128 and s.max() <= 127
    x = _codes(g, (1, 6, 6, 6), 8, False)
    ones = np.ones((1, 6, 3, 3), np.int64)
    lhs = R.conv_acc(x, w, (1, 1), (1, 1))
    rhs = 2 * R.conv_acc(x, s.astype(np.int64), (1, 1), (1, 1)) + R.conv_acc(x, ones, (1, 1), (1, 1))
    np.testing.assert_array_equal(lhs, rhs)


@pytest.mark.parametrize("w_bits,a_bits,groups,ternary", [(8, 8, 1, False), (4, 4, 1, False), (2, 2, 1, False),
                                                          (2, 8, 1, True), (8, 8, 16, False), (4, 8, 4, False)])
def test_integer_path_agrees_with_fake_quant_layer(w_bits, a_bits, groups, ternary):
    """QuantConv2d (unsigned input, trained-style weights) against the integer kernel.
    Exact: the activation codes times s_x are the fake-quant input, and the weight codes
    times m_c / L are the fake-quant weight to within one float32 rounding (the code itself
    is recovered exactly). Float outputs: PyTorch sums K float32 products of already-rounded
    values, the kernel scales one exact integer, so |y_int - y_fq| <= (K + 3) 2^-23 Σ|x̂ ŵ|
    + 2^-22 m_c Σ|x̂| (the fake-quant weight's own rounding) + 2^-23 |bias| (asserted)."""
    torch.manual_seed(0)
    q = QuantConv2d(16, 16, 3, stride=1, padding=1, groups=groups, w_bits=w_bits, a_bits=a_bits, signed=False,
                    ternary=ternary)
    with torch.no_grad():
        q.act_quant.clip.fill_(2.5)
        q.bias.normal_()
    x = torch.rand(2, 16, 9, 9) * 3.0
    y_fq = q(x).detach()                                             # (N, C, H, W)

    alpha = q.act_quant.clip.detach()
    codes = Q.act_codes(x, alpha, a_bits, False)                     # (N, C, H, W) int16
    s_x = Q.act_scale(alpha, a_bits, False)
    torch.testing.assert_close(codes.float() * s_x, q.act_quant(x).detach(), atol=0, rtol=0)
    w_int, w_scale = Q.weight_codes(q.weight, w_bits, ternary)
    w_fq = q.quant_weight().detach()
    recovered = torch.round(w_fq / w_scale.reshape(-1, 1, 1, 1))
    assert torch.equal(recovered.to(torch.int16), w_int)
    # fake-quant computes m (2q/L - 1): cancellation near 0 costs up to ~1 ulp of m_c, absolute
    m_c = torch.tanh(q.weight.detach()).abs().amax(dim=(1, 2, 3)).reshape(-1, 1, 1, 1)
    assert bool(((w_int.float() * w_scale.reshape(-1, 1, 1, 1) - w_fq).abs() <= 2**-22 * m_c).all())

    scale = (s_x * w_scale).float()
    xq = codes.permute(0, 2, 3, 1).contiguous().to(torch.uint8)      # NHWC codes
    y_int = I.int_conv2d(xq, w_int, w_bits, 1, 1, groups, scale, q.bias.detach(), threads=1)
    y_int = y_int.permute(0, 3, 1, 2)
    K = 9 * 16 // groups
    mag = F.conv2d(q.act_quant(x).detach().double().abs(), w_fq.double().abs(), None, 1, 1, 1, groups)
    x_sum = F.conv2d(q.act_quant(x).detach().double(), torch.ones_like(w_fq, dtype=torch.float64), None, 1, 1, 1,
                     groups)                                          # Σ|x̂| per output (x̂ >= 0)
    bound = ((K + 3) * 2.0**-23 * mag + 2.0**-22 * x_sum * m_c.double().reshape(1, -1, 1, 1)
             + 2.0**-23 * q.bias.detach().double().abs().reshape(1, -1, 1, 1))
    err = (y_int.double() - y_fq.double()).abs()
    assert bool((err <= bound).all()), f"max error {err.max():.3g} above the bound"
    assert float(err.max()) > 0 or w_bits == 2  # the two paths really are different arithmetic


# ---------------------------------------------------------------- bad input

def test_bad_inputs_raise_one_line_errors():
    g = np.random.default_rng(0)
    x = torch.from_numpy(_codes(g, (1, 5, 5, 4), 8, False))
    w = torch.from_numpy(_weights(g, (4, 4, 3, 3), 8))
    cases = [
        (UsageError, "has no integer kernel", lambda: I.int_conv2d(x, w, 16, 1, 1)),
        (UsageError, "has no integer kernel", lambda: I.int_conv2d(x, w, 3, 1, 1)),
        (ValueError, "beyond", lambda: I.int_conv2d(x, w, 4, 1, 1)),
        (ValueError, "channels", lambda: I.int_conv2d(x[..., :3].contiguous(), w, 8, 1, 1)),
        (TypeError, "uint8 / int8", lambda: I.int_conv2d(x.float(), w, 8, 1, 1)),
        (TypeError, "int16", lambda: I.int_conv2d(x, w.int(), 8, 1, 1)),
        (ValueError, "empty output", lambda: I.int_conv2d(x[:, :2, :2].contiguous(), w, 8, 1, 0)),
        (ValueError, "groups", lambda: I.int_conv2d(x, w, 8, 1, 1, groups=3)),
        (ValueError, "residual", lambda: I.int_conv2d(x, w, 8, 1, 1, residual=torch.zeros(1, 5, 5, 3))),
        (ValueError, "scale", lambda: I.int_conv2d(x, w, 8, 1, 1, scale=torch.ones(5))),
        (ValueError, "activation", lambda: I.int_conv2d(x, w, 8, 1, 1, activation="gelu")),
        (ValueError, "requant", lambda: I.int_conv2d(x, w, 8, 1, 1, requant=(0.0, 1.0, 0.0))),
        (ValueError, "stride", lambda: I.int_conv2d(x, w, 8, 0, 1)),
        (ValueError, "int_linear", lambda: I.int_linear(x, w, 8)),
    ]
    for exc, text, call in cases:
        with pytest.raises(exc) as e:
            call()
        msg = str(e.value)
        assert text in msg and "\n" not in msg, msg
    with pytest.raises(ValueError, match="not a kernel level"):
        I.set_isa("sse9")


def _run_with_env(isa_name: str, body: str) -> subprocess.CompletedProcess:
    """`body` in a fresh interpreter with NAS_KERNEL_ISA set (the module loaded as `ext`)."""
    code = ("import importlib.util, numpy as np\n"
            f"spec = importlib.util.spec_from_file_location('_int', {I._ext.__file__!r})\n"
            "ext = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(ext)\n" + body)
    env = dict(os.environ, NAS_KERNEL_ISA=isa_name)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ["avx512", "avx2", "portable", "sse9"])
def test_env_var_forces_level_or_fails_in_one_line(name):
    r = _run_with_env(name, "try:\n    print(ext.isa())\nexcept RuntimeError as e:\n    print('ERR', e)\n")
    assert r.returncode == 0, r.stderr
    out = r.stdout.strip()
    if name in LEVELS:
        assert out == name
    else:
        assert out.startswith("ERR NAS_KERNEL_ISA=" + name) and "\n" not in out, out


@pytest.mark.parametrize("kernel,stride,frac", [(3, 1, 1.0), (3, 2, 1.0), (5, 1, 1.0), (3, 1, 0.25), (5, 2, 0.5)])
@pytest.mark.parametrize("signed", [False, True])
def test_shift_and_shuffle_on_codes_equal_the_float_modules(kernel, stride, frac, signed):
    """The code movers equal the training modules on the same values (codes as floats), zero
    fill included, on NCHW-shaped views of NHWC memory as the integer layers pass them."""
    from nas.blocks.layers import ChannelShuffle, Shift
    g = np.random.default_rng(kernel * 10 + stride)
    codes = torch.from_numpy(_codes(g, (2, 7, 9, 30), 8, signed)).permute(0, 3, 1, 2)  # NCHW view of NHWC
    shift = Shift(kernel, stride, frac)
    out = shift(codes)
    assert out.dtype == codes.dtype
    assert torch.equal(out.float(), shift(codes.float()))
    for groups in (2, 3, 5):
        shuffle = ChannelShuffle(groups)
        assert torch.equal(shuffle(codes).float(), shuffle(codes.float()))


def test_code_movers_refuse_bad_input_in_one_line():
    with pytest.raises(TypeError, match="shift_codes: expected a CPU uint8 / int8"):
        I.shift_codes(torch.zeros(1, 2, 3, 3), [(0, 0, 2)], 1)
    with pytest.raises(ValueError, match="channels sum to 4"):
        I.shift_codes(torch.zeros(1, 4, 3, 3, dtype=torch.uint8), [(0, 0, 3)], 1)


@pytest.mark.parametrize("shape,channels_last", [((1, 16, 4, 4), True), ((3, 7, 5, 3), False), ((2, 64, 7, 7), True)])
def test_global_pool_equals_the_stated_float32_order(shape, channels_last):
    """The C pool adds pixels in row-major order, one float32 add at a time, then divides:
    bit for bit the Python loop of FixedOrderAvgPool (which the C export reproduces)."""
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=g) * 1e3
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    flat = x.reshape(shape[0], shape[1], -1)
    s = flat[:, :, 0].clone()
    for p in range(1, flat.shape[2]):
        s = s + flat[:, :, p]
    want = (s / flat.shape[2])[:, :, None, None]
    got = I.global_pool(x)
    assert torch.equal(got.view(torch.int32), want.contiguous().view(torch.int32))
    with pytest.raises(TypeError, match="global_pool: expected a CPU float32"):
        I.global_pool(x.double())


@pytest.mark.parametrize("bits,signed", [(8, False), (8, True), (4, False), (2, True)])
def test_quantize_codes_equal_act_codes(level, bits, signed):
    """The float -> codes boundary in C equals nas.quant.integer.act_codes bit for bit: ties
    at half steps (round half to even), signed zeros, values beyond the clip, odd lengths."""
    from nas.quant.integer import act_codes, act_code_dtype, act_scale
    alpha = torch.tensor(2.5)
    step = float(act_scale(alpha, bits, signed))
    lo = -float(alpha) if signed else 0.0
    g = torch.Generator().manual_seed(bits)
    halves = (torch.arange(-260, 260, dtype=torch.float32) + 0.5) * step  # exact ties
    x = torch.cat([torch.randn(1001, generator=g) * 2, halves, torch.tensor([0.0, -0.0, 1e30, -1e30, 2.5, -2.5])])
    x = x.reshape(1, 1, 1, -1).contiguous()
    got = I.quantize_codes(x, lo, float(alpha), step, act_code_dtype(signed))
    if got is None:
        assert not I.byte_path()  # only levels without the vector code decline
        return
    assert torch.equal(got, act_codes(x, alpha, bits, signed).to(act_code_dtype(signed)))
