"""Quantizers against their formulas: forward values and backward gradients (atol=0 where exact)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nas.errors import UsageError
from nas.quant import (BITS, PACT, ActQuant, ApproxSign, BinaryConv2d, BiRealUnit, QuantConv2d, QuantLinear,
                       act_steps, dorefa_weight, pact_reference, packed_kernels, quantize_weight, sign)
from nas.space.spec import BITS as SPEC_BITS

EXACT = dict(atol=0, rtol=0)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _ref_sign(x):
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def test_bits_match_the_spec():
    assert BITS == SPEC_BITS


# ---- 1 bit ------------------------------------------------------------------------------------

def test_sign_of_zero_and_negative_zero_is_plus_one():
    x = torch.tensor([-2.0, -1e-30, -0.0, 0.0, 1e-30, 3.0])
    assert sign(x).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]
    assert ApproxSign.apply(x).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]


def test_approx_sign_gradient_is_bireal_piecewise_polynomial():
    x = torch.tensor([-3.0, -1.0, -0.75, -0.5, -1e-3, -0.0, 0.0, 0.25, 0.5, 0.999, 1.0, 1.5],
                     requires_grad=True)
    upstream = torch.linspace(0.5, 2.0, x.numel())
    y = ApproxSign.apply(x)
    y.backward(upstream)
    xd = x.detach()
    d = torch.where((xd >= -1) & (xd < 0), 2 + 2 * xd, torch.where((xd >= 0) & (xd < 1), 2 - 2 * xd, 0.0))
    torch.testing.assert_close(x.grad, upstream * d, **EXACT)
    assert x.grad[1] == 0 and x.grad[-2] == 0 and x.grad[5] == 2 * upstream[5]  # -1 and 1 are 0, 0 is 2
    assert set(y.tolist()) <= {-1.0, 1.0}


def test_binary_conv_forward_and_gradients_match_formulas():
    g = _gen(1)
    conv = QuantConv2d(3, 5, 3, stride=1, padding=1, bias=False, w_bits=1, a_bits=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.1)
        conv.weight[0, 0, 0, 0] = 0.0  # sign(0) = +1 for weights too
    x = torch.randn(2, 3, 6, 6, generator=g)
    x[0, 0, 0, 0] = -0.0
    x.requires_grad_(True)
    y = conv(x)
    upstream = torch.randn(y.shape, generator=g)
    y.backward(upstream)

    alpha = conv.weight.detach().abs().mean(dim=(1, 2, 3))  # (C_out,) mean |W|
    xb = _ref_sign(x.detach()).requires_grad_(True)
    wb = _ref_sign(conv.weight.detach()).requires_grad_(True)
    y_ref = F.conv2d(F.pad(xb, (1, 1, 1, 1), value=1.0), wb) * alpha.reshape(1, -1, 1, 1)
    y_ref.backward(upstream)
    torch.testing.assert_close(y, y_ref, **EXACT)
    # weights: sign passes the gradient straight through, the scale is a constant
    torch.testing.assert_close(conv.weight.grad, wb.grad, **EXACT)
    # inputs: ApproxSign derivative max(0, 2 - 2|x|)
    approx = (2 - 2 * x.detach().abs()).clamp_min(0)
    torch.testing.assert_close(x.grad, xb.grad * approx, **EXACT)
    # accumulators are integers: y / alpha_c is whole
    acc = y.detach() / alpha.reshape(1, -1, 1, 1)
    torch.testing.assert_close(acc, acc.round(), atol=1e-4, rtol=0)
    # the fake-quant weight takes only the two values ±alpha_c per channel
    wq = conv.quant_weight().detach()
    assert torch.equal(wq.abs(), alpha.reshape(-1, 1, 1, 1).expand_as(wq))


def test_binary_conv_pads_with_plus_one():
    conv = BinaryConv2d(2, 1, 3, stride=1, padding=1)
    with torch.no_grad():
        conv.weight.fill_(0.5)  # all +1, alpha = 0.5
    x = -torch.ones(1, 2, 4, 4)  # every input pixel is -1
    y = conv(x)
    # corner: 4 pixels inside (-1) + 5 padded (+1) per channel -> +1 per channel, 2 channels
    assert y[0, 0, 0, 0].item() == 0.5 * 2 * (5 - 4)
    # edge: 6 inside, 3 padded -> -3 per channel; centre: 9 inside -> -9 per channel
    assert y[0, 0, 0, 1].item() == 0.5 * 2 * (3 - 6)
    assert y[0, 0, 1, 1].item() == 0.5 * 2 * -9


def test_binary_linear_matches_formula():
    g = _gen(2)
    lin = QuantLinear(6, 3, bias=True, w_bits=1, a_bits=1)
    x = torch.randn(4, 6, generator=g)
    alpha = lin.weight.detach().abs().mean(dim=1)
    y_ref = F.linear(_ref_sign(x), _ref_sign(lin.weight.detach())) * alpha + lin.bias.detach()
    torch.testing.assert_close(lin(x), y_ref, **EXACT)


# ---- 2/4/8 bit weights: DoReFa, ternary --------------------------------------------------------

@pytest.mark.parametrize("bits", [2, 4, 8])
def test_dorefa_weights_match_eqs_2_32_2_33(bits):
    g = _gen(bits)
    w = (torch.randn(4, 3, 3, 3, generator=g) * 0.3).requires_grad_(True)
    q = dorefa_weight(w, bits)
    t = torch.tanh(w.detach())
    m = t.abs().amax(dim=(1, 2, 3), keepdim=True)  # per output channel
    levels = 2**bits - 1
    ref = m * (2 * torch.round(levels * (t / (2 * m) + 0.5)) / levels - 1)
    torch.testing.assert_close(q, ref, **EXACT)
    for c in range(4):  # symmetric per channel: at most 2^k levels in [-m_c, m_c], the extreme hits ±m_c
        vals = q[c].detach().unique()
        assert len(vals) <= 2**bits
        assert vals.abs().max() == m[c].item()
        assert (vals.abs() <= m[c]).all()
    # gradient: STE through round, m_c constant -> d q / d W = 1 - tanh(W)^2  (eq. 2-39 times m_c)
    q.backward(torch.ones_like(q))
    torch.testing.assert_close(w.grad, 1 - t * t, atol=1e-6, rtol=1e-6)
    # what export stores: integer codes j in [0, 2^k - 1] and the scale m_c, q = m_c (2 j / (2^k - 1) - 1)
    conv = QuantConv2d(3, 4, 3, bias=False, w_bits=bits, a_bits=32)
    scale = conv.weight_scale().reshape(-1, 1, 1, 1)
    codes = (conv.quant_weight().detach() / scale + 1) * levels / 2
    torch.testing.assert_close(codes, codes.round(), atol=1e-3, rtol=0)
    assert codes.round().min() >= 0 and codes.round().max() <= levels


def test_ternary_weights_are_minus_one_zero_plus_one_times_scale():
    g = _gen(3)
    w = (torch.randn(3, 8, generator=g) * 0.5).requires_grad_(True)
    q = dorefa_weight(w, 2, ternary=True)
    t = torch.tanh(w.detach())
    m = t.abs().amax(dim=1, keepdim=True)
    n = t / m
    delta = 0.7 * n.abs().mean(dim=1, keepdim=True)
    ref = m * torch.where(n > delta, 1.0, torch.where(n < -delta, -1.0, 0.0))
    torch.testing.assert_close(q, ref, **EXACT)
    assert set((q.detach() / m).unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert (q == 0).any() and (q != 0).any()
    q.sum().backward()
    torch.testing.assert_close(w.grad, 1 - t * t, atol=1e-6, rtol=1e-6)
    lin = QuantLinear(8, 3, w_bits=2, a_bits=32, ternary=True)
    assert set((lin.quant_weight() / lin.quant_weight().abs().amax(1, keepdim=True)).unique().tolist()) \
        <= {-1.0, 0.0, 1.0}


# ---- 2/4/8 bit activations: PACT ---------------------------------------------------------------

@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # pact.c, and the PyTorch-ops path
def test_pact_forward_and_gradients(bits, signed, dtype):
    alpha0 = 1.5
    x = torch.tensor([-3.0, -1.5, -1.49, -0.7, -0.0, 0.0, 0.1, 0.33, 0.9, 1.49, 1.5, 2.0, 7.0], dtype=dtype,
                     requires_grad=True)
    q = ActQuant(bits, signed=signed, clip_init=alpha0).to(dtype)
    y = q(x)
    steps = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    assert act_steps(bits, signed) == steps
    s = torch.tensor(alpha0, dtype=dtype) / steps
    lo = -alpha0 if signed else 0.0
    ref = torch.round(x.detach().clamp(lo, alpha0) / s) * s
    torch.testing.assert_close(y, ref, **EXACT)
    assert len(y.detach().unique()) <= (2 * steps + 1 if signed else steps + 1)
    y.backward(torch.ones_like(y))
    xd = x.detach()
    inside = (xd > -alpha0) & (xd < alpha0) if signed else (xd >= 0) & (xd < alpha0)
    torch.testing.assert_close(x.grad, inside.to(dtype), **EXACT)
    expected_clip_grad = (xd >= alpha0).sum() - ((xd <= -alpha0).sum() if signed else 0)
    assert q.clip.grad.item() == float(expected_clip_grad)


def test_pact_clip_gradient_is_weighted_by_upstream():
    x = torch.tensor([0.5, 3.0, 4.0, -5.0])
    alpha = torch.tensor(2.0, requires_grad=True)
    y = PACT.apply(x, alpha, 3, True)
    y.backward(torch.tensor([10.0, 1.0, 2.0, 4.0]))
    assert alpha.grad.item() == 1.0 + 2.0 - 4.0  # above: +g, below -alpha: -g


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("steps", [3, 7, 127, 255])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_pact_kernel_equals_the_pytorch_formula(signed, steps, layout):
    """pact.c against `pact_reference` (PyTorch ops) on an activation-sized tensor: values and
    dy/dx bit-exact, in both memory layouts, multi-threaded; the clip gradient (summed in
    double by pact.c, in float32 by PyTorch) to float32 rounding."""
    x = (torch.randn(16, 13, 17, 17, generator=_gen(steps)) * 3).contiguous(memory_format=layout)
    x.requires_grad_()
    alpha = torch.tensor(2.37, requires_grad=True)
    g = torch.randn(x.shape, generator=_gen(steps + 1))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        y = PACT.apply(x, alpha, steps, signed)
        y.backward(g)
    finally:
        torch.set_num_threads(threads)
    xd, ad = x.detach(), alpha.detach()
    assert y.stride() == x.stride()
    torch.testing.assert_close(y, pact_reference(xd, ad, steps, signed), **EXACT)
    above = xd >= ad
    below = (xd <= -ad) if signed else (xd < 0)
    torch.testing.assert_close(x.grad, g * ~(above | below), **EXACT)
    expected = (g * above).double().sum() - ((g * below).double().sum() if signed else 0.0)
    assert alpha.grad.item() == pytest.approx(expected.item(), rel=1e-6, abs=1e-4)


# ---- 16 / 32 bit --------------------------------------------------------------------------------

def test_half_precision_and_identity():
    x = torch.tensor([1.0 / 3.0, 1e-8, 70000.0, -1e6, 0.1], requires_grad=True)
    y = ActQuant(16)(x)
    assert y[0].item() == torch.tensor(1.0 / 3.0).half().float().item()
    assert y[2].item() == 65504.0 and y[3].item() == -65504.0  # clamped, never inf
    y.backward(torch.full_like(x, 3.0))
    torch.testing.assert_close(x.grad, torch.full_like(x, 3.0), **EXACT)
    w = torch.randn(4, 4, generator=_gen(4))
    torch.testing.assert_close(quantize_weight(w, 16), w.half().float(), **EXACT)
    assert quantize_weight(w, 32) is w
    assert ActQuant(32)(x) is x


# ---- modules: parameter contract, conversions, errors ------------------------------------------

@pytest.mark.parametrize("a_bits", BITS)
def test_only_2_to_8_bit_sites_own_one_clip(a_bits):
    w_bits = 1 if a_bits == 1 else 8
    conv = QuantConv2d(4, 6, 3, padding=1, bias=False, w_bits=w_bits, a_bits=a_bits)
    n_clip = 1 if 2 <= a_bits <= 8 else 0
    assert sum(p.numel() for p in conv.parameters()) == 4 * 6 * 9 + n_clip
    lin = QuantLinear(4, 3, w_bits=w_bits, a_bits=a_bits)
    assert sum(p.numel() for p in lin.parameters()) == 4 * 3 + 3 + n_clip
    assert isinstance(conv, nn.Conv2d) and isinstance(lin, nn.Linear)


def test_from_conv_and_to_conv():
    g = _gen(5)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=True)
    x = torch.randn(2, 3, 7, 7, generator=g)
    q32 = QuantConv2d.from_conv(conv, 32, 32)
    assert q32.weight is conv.weight and q32.bias is conv.bias
    torch.testing.assert_close(q32(x), conv(x), **EXACT)
    q4 = QuantConv2d.from_conv(conv, 4, 32)
    torch.testing.assert_close(q4.to_conv()(x), q4(x), atol=1e-6, rtol=1e-6)
    lin = nn.Linear(5, 2)
    ql = QuantLinear.from_linear(lin, 8, 32)
    xl = torch.randn(3, 5, generator=g)
    torch.testing.assert_close(ql.to_linear()(xl), ql(xl), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(w_bits=3, a_bits=8), "w_bits=3"),
    (dict(w_bits=8, a_bits=5), "a_bits=5"),
    (dict(w_bits=8, a_bits=1), "a_bits=1 with w_bits=8"),
    (dict(w_bits=4, a_bits=4, ternary=True), "ternary"),
])
def test_bad_bits_are_usage_errors(kwargs, fragment):
    with pytest.raises(UsageError, match=fragment):
        QuantConv2d(2, 2, 1, **kwargs)


# ---- Bi-Real unit -------------------------------------------------------------------------------

@pytest.mark.parametrize("in_chs, out_chs, stride, parts", [
    (8, 8, 1, []), (8, 8, 2, ["pool"]), (8, 16, 1, ["conv", "bn"]), (8, 16, 2, ["pool", "conv", "bn"]),
])
def test_bireal_unit_shortcut_rule(in_chs, out_chs, stride, parts):
    unit = BiRealUnit(in_chs, out_chs, 3, stride, shortcut_bits=8)
    assert [n for n, _ in unit.shortcut.named_children()] == parts
    conv_params = in_chs * out_chs * 9 + 2 * out_chs  # binary conv (no bias) + BN
    shortcut_params = (in_chs * out_chs + 2 * out_chs) if in_chs != out_chs else 0
    assert sum(p.numel() for p in unit.parameters()) == conv_params + shortcut_params
    if in_chs != out_chs:
        assert (unit.shortcut.conv.w_bits, unit.shortcut.conv.a_bits) == (8, 32)
    x = torch.randn(2, in_chs, 7, 7, generator=_gen(6))
    y = unit(x)
    assert y.shape == (2, out_chs, 4 if stride == 2 else 7, 4 if stride == 2 else 7)
    ref = unit.bn(F.conv2d(F.pad(_ref_sign(x), (1, 1, 1, 1), value=1.0), _ref_sign(unit.conv.weight), stride=stride)
                  * unit.conv.weight.abs().mean(dim=(1, 2, 3)).reshape(1, -1, 1, 1)) + unit.shortcut(x)
    torch.testing.assert_close(y, ref, **EXACT)


def test_bireal_unit_trains_every_parameter():
    unit = BiRealUnit(4, 8, 3, 2, shortcut_bits=8)
    unit(torch.randn(2, 4, 5, 5, generator=_gen(7))).square().mean().backward()
    for name, p in unit.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.skipif(packed_kernels() is None, reason="nas.kernels not built or not available on this CPU")
@pytest.mark.parametrize("in_chs, out_chs, stride", [(64, 64, 1), (32, 64, 2), (40, 24, 1)])
def test_bireal_unit_kernel_path_matches_fake_quant(in_chs, out_chs, stride):
    g = _gen(8)
    unit = BiRealUnit(in_chs, out_chs, 3, stride, shortcut_bits=8)
    with torch.no_grad():  # non-trivial BN statistics so the folding is exercised
        for bn in (m for m in unit.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
            bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
            bn.weight.copy_(torch.randn(bn.num_features, generator=g))
            bn.bias.copy_(torch.randn(bn.num_features, generator=g))
    unit.eval()
    x = torch.randn(3, in_chs, 9, 9, generator=g)
    x[0, 0, 0, :3] = torch.tensor([0.0, -0.0, 1e-30])
    with torch.no_grad():
        assert unit.conv.kernel_ready(x)
        y_kernel = unit(x)
        unit.conv.use_kernels = False
        y_fake = unit(x)
    torch.testing.assert_close(y_kernel, y_fake, atol=1e-4, rtol=1e-5)
    unit.conv.use_kernels = True
    with torch.inference_mode():  # the evaluator's mode: packed weights must stay usable across calls
        assert unit.conv.kernel_ready(x)
        torch.testing.assert_close(unit(x), y_kernel, **EXACT)
        torch.testing.assert_close(unit(x), y_kernel, **EXACT)
    conv = unit.conv
    conv.use_kernels = True
    with torch.no_grad():
        y_conv_kernel = conv(x)
        conv.use_kernels = False
        y_conv_fake = conv(x)
    torch.testing.assert_close(y_conv_kernel, y_conv_fake, atol=1e-4, rtol=1e-5)


def test_kernel_path_is_not_taken_when_training_or_grouped():
    unit = BiRealUnit(8, 8, 3, 1, groups=8, shortcut_bits=8).eval()
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        assert not unit.conv.kernel_ready(x)  # groups > 1
    unit = BiRealUnit(8, 8, 3, 1, shortcut_bits=8).train()
    assert not unit.conv.kernel_ready(x)
