"""Packed-binary kernels: bit-exact (atol=0) against the fake-quant PyTorch reference.

Every kernel level the CPU runs (avx512 / avx2 / portable) is forced in turn with
`set_isa`; one subprocess checks the NAS_KERNEL_ISA variable itself. Inputs are random
tensors on purpose: this is kernel arithmetic, not a data set.
"""

import os
import subprocess
import sys

import pytest
import torch

import nas.kernels as K
from nas.kernels import reference as R

pytestmark = pytest.mark.skipif(not K.available(), reason="nas.kernels._binary is not built (pip install -e .)")

LEVELS = K.supported_isas() if K.available() else []


@pytest.fixture(params=LEVELS)
def level(request):
    K.set_isa(request.param)
    yield request.param
    K.set_isa(None)


def _signed_input(g, shape, zeros=True):
    """Normal values with exact +0.0 and -0.0 sprinkled in (both must binarize to +1)."""
    x = torch.randn(shape, generator=g)
    if zeros:
        r = torch.rand(shape, generator=g)
        x = torch.where(r < 0.1, torch.zeros(()), x)
        x = torch.where((r >= 0.1) & (r < 0.2), torch.full((), -0.0), x)
    return x


def _scale_bias(g, cout, hard=True):
    scale = torch.randn(cout, generator=g)
    bias = torch.randn(cout, generator=g) * 4
    if hard and cout >= 4:
        scale[0], scale[1], scale[2] = 0.0, -0.0, -abs(scale[2])  # zero and negative BN scale
        bias[1], bias[3] = -0.0, 0.0
    return scale, bias


def _check(x, w, stride, padding, scale, bias, residual=None, threads=1):
    """Run the kernel with float and packed outputs and compare both to the reference."""
    xp, wp = K.pack_activations(x), K.pack_weights(w)
    k = tuple(w.shape[2:])
    yf, yp = K.binary_conv2d(xp, wp, x.shape[-1], k, stride, padding, scale, bias, residual,
                             out_float=True, out_packed=True, threads=threads)
    ref = R.binary_conv2d(x, w, stride, padding, scale, bias, residual)
    torch.testing.assert_close(yf, ref, atol=0, rtol=0, equal_nan=True)  # NaN only from an inf scale
    assert torch.equal(yp, R.pack(ref)), "packed output bits differ"
    # The packed-only call runs the threshold form of the epilogue: same bits.
    if residual is None:
        _, yq = K.binary_conv2d(xp, wp, x.shape[-1], k, stride, padding, scale, bias, None,
                                out_float=False, out_packed=True, threads=threads)
        assert torch.equal(yq, yp), "threshold-form packed output differs from the float path"
    return yf, yp


def test_levels_include_portable_and_isa_reports_forced_level():
    assert LEVELS[-1] == "portable"
    for name in LEVELS:
        K.set_isa(name)
        assert K.isa() == name
    K.set_isa(None)
    assert K.isa() == (os.environ.get("NAS_KERNEL_ISA") or LEVELS[0])


@pytest.mark.parametrize("C", [1, 3, 31, 63, 64, 65, 130])
def test_pack_activations_matches_reference(level, C):
    g = torch.Generator().manual_seed(C)
    x = _signed_input(g, (2, 3, 5, C))
    xp = K.pack_activations(x)
    assert xp.shape == (2, 3, 5, K.words(C)) and xp.dtype == torch.int64
    assert torch.equal(xp, R.pack(x))
    assert torch.equal(R.unpack(xp, C), R.sign(x))


def test_pack_layout_is_lsb_first_little_endian():
    # channel c -> word c // 64, bit c % 64; bit 1 = +1; zero tail; -0.0 and 0 are +1.
    x = torch.full((1, 1, 1, 70), -1.0)
    x[..., 0] = 0.5
    x[..., 2] = -0.0
    x[..., 63] = 0.0
    x[..., 64] = 3.0
    x[..., 69] = 1.0
    xp = K.pack_activations(x)
    assert xp.view(-1).tolist() == [1 | (1 << 2) | -(1 << 63), 1 | (1 << 5)]
    # weights (Cout, Cin, kh, kw) -> (Cout, kh, kw, words): the taps are the middle axes
    w = -torch.ones(2, 3, 1, 2)
    w[0, 1, 0, 1] = 1.0
    w[1, :, 0, 0] = 0.0
    assert K.pack_weights(w).tolist() == [[[[0], [2]]], [[[7], [0]]]]
    assert torch.equal(K.pack_weights(w), R.pack_weights(w))


@pytest.mark.parametrize("cin,cout,k,stride,padding,hw", [
    (1, 8, 3, 1, 1, (5, 6)),
    (3, 5, 3, 2, 1, (9, 7)),
    (63, 9, 3, 1, 1, (6, 6)),
    (65, 70, 3, 2, 1, (7, 9)),
    (130, 17, 5, 1, 2, (6, 5)),
    (64, 33, 1, 1, 0, (4, 4)),
    (64, 64, 1, 2, 0, (7, 7)),
    (32, 7, 5, 2, 2, (8, 8)),
    (16, 12, 3, 1, 0, (5, 5)),
    (70, 64, 3, (1, 2), (2, 0), (6, 9)),
    (8, 1, 3, 1, 3, (2, 3)),       # padding wider than half the kernel: whole rows of +1
])
def test_conv_hard_cases(level, cin, cout, k, stride, padding, hw):
    g = torch.Generator().manual_seed(cin * 1000 + cout)
    x = _signed_input(g, (2, *hw, cin))
    w = _signed_input(g, (cout, cin, k, k))
    scale, bias = _scale_bias(g, cout)
    _check(x, w, stride, padding, scale, bias)


def test_conv_accumulators_are_exact(level):
    """scale = 1, bias = 0: the float output is the integer accumulator itself."""
    g = torch.Generator().manual_seed(1)
    for cin, cout, k, s, p in [(64, 64, 3, 1, 1), (130, 40, 3, 2, 1), (3, 16, 5, 1, 2), (512, 16, 3, 1, 1)]:
        x = _signed_input(g, (1, 7, 6, cin))
        w = _signed_input(g, (cout, cin, k, k))
        yf, _ = K.binary_conv2d(K.pack_activations(x), K.pack_weights(w), cin, k, s, p, torch.ones(cout),
                                torch.zeros(cout))
        acc = R.accumulator(x, w, s, p)
        torch.testing.assert_close(yf, acc, atol=0, rtol=0)
        # cross-check the reference against PyTorch's own float32 conv of the +-1 tensors
        xs = torch.nn.functional.pad(R.sign(x).permute(0, 3, 1, 2), (p,) * 4, value=1.0)
        direct = torch.nn.functional.conv2d(xs, R.sign(w), stride=s).permute(0, 2, 3, 1)
        torch.testing.assert_close(acc, direct, atol=0, rtol=0)


def test_conv_randomised_shapes(level):
    g = torch.Generator().manual_seed(7)
    n_cases = 12 if level != "portable" else 6
    for _ in range(n_cases):
        cin = int(torch.randint(1, 200, (), generator=g))
        cout = int(torch.randint(1, 100, (), generator=g))
        k = int(torch.randint(1, 4, (), generator=g)) * 2 - 1  # 1, 3, 5
        s = int(torch.randint(1, 3, (), generator=g))
        p = int(torch.randint(0, k // 2 + 2, (), generator=g))
        n = int(torch.randint(1, 3, (), generator=g))
        h, w_ = (int(v) for v in torch.randint(max(1, k - 2 * p), 11, (2,), generator=g))
        x = _signed_input(g, (n, h, w_, cin))
        w = _signed_input(g, (cout, cin, k, k))
        scale, bias = _scale_bias(g, cout)
        residual = None
        if torch.rand((), generator=g) < 0.5:
            Ho, Wo = (h + 2 * p - k) // s + 1, (w_ + 2 * p - k) // s + 1
            residual = _signed_input(g, (n, Ho, Wo, cout))
        _check(x, w, s, p, scale, bias, residual)


def test_residual_add_and_packed_chaining(level):
    """Bi-Real chain: y1 = bn(conv(sign(x))) + x, y2 = bn(conv(sign(y1))) + y1, fed packed."""
    g = torch.Generator().manual_seed(3)
    C = 72
    x = _signed_input(g, (2, 8, 8, C))
    w1, w2 = _signed_input(g, (C, C, 3, 3)), _signed_input(g, (C, C, 3, 3))
    (s1, b1), (s2, b2) = _scale_bias(g, C), _scale_bias(g, C)
    y1, p1 = K.binary_conv2d(K.pack_activations(x), K.pack_weights(w1), C, 3, 1, 1, s1, b1, x, True, True)
    y2, p2 = K.binary_conv2d(p1, K.pack_weights(w2), C, 3, 1, 1, s2, b2, y1, True, True)
    r1 = R.binary_conv2d(x, w1, 1, 1, s1, b1, x)
    r2 = R.binary_conv2d(r1, w2, 1, 1, s2, b2, r1)
    torch.testing.assert_close(y1, r1, atol=0, rtol=0)
    torch.testing.assert_close(y2, r2, atol=0, rtol=0)
    assert torch.equal(p2, R.pack(r2))
    # an XNOR-style chain with packed outputs only (threshold form) between the layers
    _, q1 = K.binary_conv2d(K.pack_activations(x), K.pack_weights(w1), C, 3, 2, 1, s1, b1, None, False, True)
    _, q2 = K.binary_conv2d(q1, K.pack_weights(w2), C, 3, 1, 1, s2, b2, None, False, True)
    t1 = R.binary_conv2d(x, w1, 2, 1, s1, b1)
    assert torch.equal(q2, R.pack(R.binary_conv2d(t1, w2, 1, 1, s2, b2)))


def test_threshold_form_on_adversarial_scales(level):
    """Packed-only outputs use an integer window per channel; it must reproduce the float
    epilogue's rounding exactly, including ties at y = 0, tiny / huge / zero / -0.0 scales."""
    g = torch.Generator().manual_seed(11)
    cin, cout = 40, 96
    x = _signed_input(g, (1, 6, 6, cin))
    w = _signed_input(g, (cout, cin, 3, 3))
    acc = R.accumulator(x, w, 1, 1)
    scale = torch.randn(cout, generator=g)
    scale[:8] = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e35, -1e35, 1e-45, 0.1])
    # bias = -acc * scale at a real accumulator value puts y exactly on (or next to) zero
    pick = acc.reshape(-1, cout)[5]
    bias = -(pick * scale)
    bias[8:16] = torch.nextafter(bias[8:16], torch.full((8,), 1e9))
    bias[16:24] = torch.nextafter(bias[16:24], torch.full((8,), -1e9))
    bias[24:28] = torch.tensor([0.0, -0.0, 1e30, -1e30])
    _check(x, w, 1, 1, scale, bias)
    # non-finite scale: no threshold form, the float path still gives the reference bits
    scale[30], scale[31] = float("inf"), float("-inf")
    _check(x, w, 1, 1, scale, bias)


def test_one_vs_two_threads_identical(level):
    g = torch.Generator().manual_seed(5)
    x = _signed_input(g, (2, 15, 13, 96))
    w = _signed_input(g, (80, 96, 3, 3))
    scale, bias = _scale_bias(g, 80)
    res = _signed_input(g, (2, 15, 13, 80))
    xp, wp = K.pack_activations(x, threads=2), K.pack_weights(w)
    assert torch.equal(xp, K.pack_activations(x, threads=1))
    out1 = K.binary_conv2d(xp, wp, 96, 3, 1, 1, scale, bias, res, True, True, threads=1)
    out2 = K.binary_conv2d(xp, wp, 96, 3, 1, 1, scale, bias, res, True, True, threads=2)
    assert torch.equal(out1[0], out2[0]) and torch.equal(out1[1], out2[1])
    _check(x, w, 1, 1, scale, bias, res, threads=2)
    _check(x, w, 2, 1, scale, bias, threads=2)


def test_binary_linear(level):
    g = torch.Generator().manual_seed(9)
    for n, cin, cout in [(1, 512, 10), (5, 100, 130), (3, 64, 64)]:
        x = _signed_input(g, (n, cin))
        w = _signed_input(g, (cout, cin))
        scale, bias = _scale_bias(g, cout)
        res = torch.randn(n, cout, generator=g)
        ref = R.binary_linear(x, w, scale, bias, res)
        wp = K.pack_weights(w)
        assert wp.shape == (cout, K.words(cin))
        yf, yp = K.binary_linear(K.pack_activations(x), wp, cin, scale, bias, res, True, True)
        torch.testing.assert_close(yf, ref, atol=0, rtol=0)
        assert torch.equal(yp, R.pack(ref))
        # the (N, 1, 1, words) / (Cout, 1, 1, words) form and the threshold form agree
        _, yq = K.binary_linear(K.pack_activations(x.view(n, 1, 1, cin)), wp.view(cout, 1, 1, -1), cin, scale, bias,
                                None, False, True)
        assert torch.equal(yq, R.pack(R.binary_linear(x, w, scale, bias)))


def test_layer_object_reuses_prepared_weights(level):
    g = torch.Generator().manual_seed(13)
    x = _signed_input(g, (1, 6, 6, 64))
    w = _signed_input(g, (32, 64, 3, 3))
    scale, bias = _scale_bias(g, 32)
    layer = K.BinaryConv2d(K.pack_weights(w), 64, 3, 1, 1, scale, bias)
    ref = R.binary_conv2d(x, w, 1, 1, scale, bias)
    for _ in range(2):
        yf, yp = layer(K.pack_activations(x), out_packed=True)
        torch.testing.assert_close(yf, ref, atol=0, rtol=0)
        _, yq = layer(K.pack_activations(x), out_float=False, out_packed=True)
        assert torch.equal(yq, R.pack(ref)) and torch.equal(yp, yq)


def test_weight_cache_follows_in_place_changes():
    g = torch.Generator().manual_seed(17)
    x, w = _signed_input(g, (1, 5, 5, 64)), _signed_input(g, (16, 64, 3, 3))
    wp = K.pack_weights(w)
    one, zero = torch.ones(16), torch.zeros(16)
    K.binary_conv2d(K.pack_activations(x), wp, 64, 3, 1, 1, one, zero)
    w2 = -w
    wp.copy_(K.pack_weights(w2))  # same tensor, new contents: the lane cache must notice
    yf, _ = K.binary_conv2d(K.pack_activations(x), wp, 64, 3, 1, 1, one, zero)
    torch.testing.assert_close(yf, R.accumulator(x, w2, 1, 1), atol=0, rtol=0)


def test_bad_inputs_fail_with_clear_messages():
    xp = K.pack_activations(torch.randn(1, 4, 4, 64))
    wp = K.pack_weights(torch.randn(8, 64, 3, 3))
    one = torch.ones(8)
    with pytest.raises(ValueError, match="input channels"):
        K.binary_conv2d(xp, wp, 65, 3, 1, 1, one, None)
    with pytest.raises(ValueError, match="kernel"):
        K.binary_conv2d(xp, wp, 64, 5, 1, 1, one, None)
    with pytest.raises(ValueError, match="scale: expected shape"):
        K.binary_conv2d(xp, wp, 64, 3, 1, 1, torch.ones(7), None)
    with pytest.raises(TypeError, match="x_packed"):
        K.binary_conv2d(xp.float(), wp, 64, 3, 1, 1, one, None)
    with pytest.raises(ValueError, match="residual"):
        K.binary_conv2d(xp, wp, 64, 3, 1, 1, one, None, residual=torch.zeros(1, 4, 4, 7))
    with pytest.raises(ValueError, match="empty output"):
        K.binary_conv2d(K.pack_activations(torch.randn(1, 2, 2, 64)), wp, 64, 3, 1, 0, one, None)
    with pytest.raises(ValueError, match="out_float, out_packed"):
        K.binary_conv2d(xp, wp, 64, 3, 1, 1, one, None, out_float=False)
    with pytest.raises(TypeError, match="float32"):
        K.pack_activations(torch.randn(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="not a kernel level"):
        K.set_isa("sse9")


def _run_with_env(isa_name: str, body: str) -> subprocess.CompletedProcess:
    """Run `body` in a fresh interpreter with NAS_KERNEL_ISA set; the compiled module is
    loaded from its file as `ext`, without importing torch (keeps these tests fast)."""
    code = ("import importlib.util\n"
            f"spec = importlib.util.spec_from_file_location('_binary', {K._ext.__file__!r})\n"
            "ext = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(ext)\n" + body)
    env = dict(os.environ, NAS_KERNEL_ISA=isa_name)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", LEVELS)
def test_env_var_forces_level(name):
    # the forced level packs 100 channels: signs of 0, -0.0 and negatives land on the right bits
    body = ("import numpy as np\n"
            "x = np.linspace(-1, 1, 300, dtype=np.float32).reshape(3, 100); x[:, 7] = 0.0; x[:, 8] = -0.0\n"
            "out = np.empty((3, 2), np.int64); ext.pack(x, out, 3, 100, 1)\n"
            "bits = np.zeros((3, 128), np.uint64); bits[:, :100] = x >= 0\n"
            "want = (bits.reshape(3, 2, 64) << np.arange(64, dtype=np.uint64)).sum(-1).astype(np.uint64)\n"
            "assert (out.view(np.uint64) == want).all()\n"
            "print(ext.isa())\n")
    proc = _run_with_env(name, body)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == name


def test_env_var_with_unknown_level_errors_at_first_use():
    proc = _run_with_env("sse9", "ext.isa()\n")
    assert proc.returncode != 0
    assert "NAS_KERNEL_ISA=sse9 is not a kernel level" in proc.stderr


def _bench_args(*argv):
    import argparse

    from nas.measure import bench_kernels as bench
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return bench, parser.parse_args(list(argv))


def test_bench_json_smoke(capsys):
    import json
    bench, args = _bench_args("--threads", "1", "--seconds", "0.001", "--no-network", "--json")
    assert bench.run(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["layer"] for r in out["layers"]] == [row[0] for row in bench.LAYERS]
    assert out["all_bit_exact"] and out["popcount_peak_bmacs_per_s"] > 0
    assert all(r["binary_packed_ms"] > 0 and r["fp32_ms"] > 0 for r in out["layers"])


@pytest.mark.slow
def test_bench_network_is_bit_exact(capsys):
    bench, args = _bench_args("--threads", "1", "--seconds", "0.01")
    assert bench.run(args) == 0
    assert "bit-exact yes" in capsys.readouterr().out


def test_inference_mode_tensors_work():
    g = torch.Generator().manual_seed(19)
    x, w = _signed_input(g, (1, 5, 5, 64)), _signed_input(g, (16, 64, 3, 3))
    with torch.inference_mode():
        wp = K.pack_weights(w)
        yf, _ = K.binary_conv2d(K.pack_activations(x), wp, 64, 3, 1, 1, torch.ones(16), torch.zeros(16))
        wp.bitwise_not_()  # sign(-W) in place on an inference tensor (no version counter): still seen
        yn, _ = K.binary_conv2d(K.pack_activations(x), wp, 64, 3, 1, 1, torch.ones(16), torch.zeros(16))
    torch.testing.assert_close(yf, R.accumulator(x, w, 1, 1), atol=0, rtol=0)
    torch.testing.assert_close(yn, -yf, atol=0, rtol=0)
