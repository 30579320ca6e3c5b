"""LQ-Net's learned quantizers (nas.quant.lqnet) and MetaQuant (nas.train.metaquant), the last
two training methods of issue 19 item 3, held to their defining properties on real
tensors (Fashion-MNIST images, initialised and trained weights) and short runs on digits.

- LQ-Net: every quantized weight is exactly one of its channel's levels v^T e; the least-
  squares basis step lowers the quantization error (eq. 2-26); the basis a · [1, 2, 4, ...]
  gives DoReFa's uniform levels and, for a = m_c / (2^K - 1), DoReFa's codes; the export
  refuses a model with these quantizers, and `nas train` refuses `--save` with them;
- MetaQuant: a fresh meta network is the STE bit for bit; its inputs recover the quantized
  weight's gradient; once trained it receives gradient and scales the STE's weight gradient
  by 1 + tanh f_Φ while the forward is unchanged;
- defaults train as before; bad values are one line and exit 2.
"""

import json

import pytest
import torch
import torch.nn.functional as F

from nas.blocks.model import build_model
from nas.data import load_dataset
from nas.errors import UsageError
from nas.quant import QuantConv2d, dorefa_scale
from nas.quant.functions import quantize_weight
from nas.quant.lqnet import (LQWeight, assign, codes, has_lqnet, least_squares_basis, levels, lqnet_layers,
                             quantization_error, remove_lqnet, uniform_basis, use_lqnet)
from nas.space import decode
from nas.train.metaquant import MetaQuant, layer_terms, meta_layers
from nas.train.methods import Methods, train_with_methods
from nas.train.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")

# 8x8 digits: 8-bit stem / head / classifier, a 4-bit inverted-residual block (depthwise included)
DIGITS_4BIT = "in_r8_c1-stem_c16_k3_s1_w8_a8-ir_r1_k3_s2_e4_c24_w4_a4-head_c64_w8_a8-fc_n10_w8_a8"
DIGITS_BINARY = ("in_r8_c1-stem_c16_k3_s1_w8_a8_noact-ir_r1_k3_s1_e1_c16_w1_a1-ir_r1_k3_s2_e1_c32_w1_a1"
                 "-head_c0_w8_a8-fc_n10_w8_a8")
FM_4BIT = "in_r28_c1-stem_c16_k3_s1_w8_a8-ir_r2_k3_s2_e6_c24_w4_a4-head_c128_w8_a8-fc_n10_w8_a8"  # docs' N2
KW = dict(progress=False, measure_inference=False)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _net(arch=DIGITS_4BIT, seed=0):
    torch.manual_seed(seed)
    return build_model(decode(arch))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _on_levels(wq: torch.Tensor, v: torch.Tensor) -> bool:
    """Every element of wq (C_out, ...) is exactly (atol=0) one of its channel's levels v^T e."""
    rows = wq.detach().reshape(wq.shape[0], -1, 1)  # (C, N, 1)
    return bool((rows == levels(v).unsqueeze(1)).any(dim=2).all())  # against (C, 1, 2^K)


# ---------------------------------------------------------------- LQ-Net


def test_codes_are_all_sign_vectors_and_a_doubling_basis_gives_the_odd_integers():
    for k in (2, 3, 4, 8):
        e = codes(k)
        assert e.shape == (2**k, k) and set(e.unique().tolist()) == {-1.0, 1.0}
        assert len({tuple(r) for r in e.tolist()}) == 2**k  # all of {-1, +1}^K, once each
        # v = [1, 2, ..., 2^{K-1}]: code j has level sum_i 2^i (2 b_i - 1) = 2j - (2^K - 1), exactly
        lv = levels(2.0 ** torch.arange(k).unsqueeze(0))[0]
        assert torch.equal(lv, 2 * torch.arange(2**k, dtype=torch.float32) - (2**k - 1))


def test_lqnet_weights_lie_exactly_on_the_levels_v_dot_e_before_and_after_training(digits):
    model = _net()
    assert use_lqnet(model) == len(lqnet_layers(model)) == 6  # every 2..8-bit layer (stem 8, block 4, head 8, fc 8)
    for m in lqnet_layers(model):
        v = m.quant_weight.basis.clone()
        wq = m.quant_weight()  # training mode, gradients on: quantized with v, then one basis step
        assert _on_levels(wq, v) and not torch.equal(m.quant_weight.basis, v)  # then v moved
        # the nearest level: no level of the channel is closer to the float weight
        w = m.weight.detach().reshape(m.weight.shape[0], -1, 1)
        best = (levels(v).unsqueeze(1) - w).abs().amin(dim=2)  # (C, N)
        assert torch.equal((wq.detach().reshape(w.shape[:2]) - w[..., 0]).abs(), best)
    _, record = train_with_methods(model, digits, 1, Methods(weight_quant="lqnet"), seed=0, **KW)
    assert record["lqnet_layers"] == 6 and has_lqnet(model)
    steps = 21  # ceil(1294 / 64) training forwards, each one basis step
    for m in lqnet_layers(model):
        q = m.quant_weight
        assert isinstance(q, LQWeight) and q.steps == steps + 1  # + the forward above
        with torch.no_grad():
            assert _on_levels(m.quant_weight(), q.basis)  # recomputed with the final basis: atol=0
        if m.w_bits == 4:  # the learned levels are no longer uniform
            gaps = levels(q.basis).sort(dim=1).values.diff(dim=1)
            assert (gaps.amax(dim=1) - gaps.amin(dim=1) > 1e-3 * gaps.amax(dim=1)).all()


def test_least_squares_basis_step_lowers_the_quantization_error(fashion_batch):
    x = fashion_batch[0].reshape(8, -1)  # 8 rows of 784 real pixels: skewed, most at the background value
    for k in (2, 3, 4):
        v0 = uniform_basis(x, k)
        before = quantization_error(x, v0)
        q0, idx = assign(x, v0)
        v1, ok = least_squares_basis(x, idx, k)
        assert ok.all()
        b = codes(k)[idx]  # (8, 784, K)
        same_codes = float(((b @ v1.unsqueeze(2)).squeeze(2) - x).pow(2).sum())
        assert same_codes < before  # step 2: the codes fixed, v* fits them better than v0 ...
        assert quantization_error(x, v1) <= same_codes + 1e-4  # ... and the nearest levels of v* better still
        normal = b.transpose(1, 2) @ ((b @ v1.unsqueeze(2)).squeeze(2) - x).unsqueeze(2)  # B^T (B v* - x)
        assert normal.abs().max() < 1e-3 * x.abs().sum(dim=1).max()  # v* solves the normal equations
    w = _net(FM_4BIT).blocks[0][0].conv_pw.weight.detach()  # an initialised 4-bit conv: (96, 16, 1, 1)
    w = w.reshape(w.shape[0], -1)
    v = uniform_basis(w, 4)
    errors = [quantization_error(w, v)]
    for _ in range(3):  # the alternation, without the moving average: never up
        v_star, ok = least_squares_basis(w, assign(w, v)[1], 4)
        v = torch.where(ok.unsqueeze(1), v_star, v)
        errors.append(quantization_error(w, v))
    assert all(b <= a + 1e-6 for a, b in zip(errors, errors[1:])) and errors[-1] < 0.9 * errors[0]


def test_uniform_basis_is_dorefa_levels_and_codes(fashion_batch):
    """v = a [1, 2, ..., 2^{K-1}] has levels a (2j - L), j = 0..L (L = 2^K - 1): DoReFa's
    m (2j / L - 1) for m = L a. With a = m_c / L, m_c = max |tanh W_c|, LQ-Net's nearest
    level of tanh W has code index j equal to DoReFa's code round(L (tanh W / (2 m_c) + 1/2))."""
    torch.manual_seed(0)
    conv = QuantConv2d(1, 16, 3, padding=1, w_bits=4, a_bits=8)
    conv(fashion_batch[0]).sum().backward()  # real gradients on real images ...
    with torch.no_grad():
        conv.weight -= 0.5 * conv.weight.grad / conv.weight.grad.abs().max()  # ... move the weight off its init
    for k in (2, 4, 8):
        L = 2**k - 1
        t = torch.tanh(conv.weight.detach()).reshape(16, -1)  # (16, 9)
        m = dorefa_scale(conv.weight).unsqueeze(1)  # (16, 1)
        v = uniform_basis(t, k)
        assert torch.equal(v, m / L * 2.0 ** torch.arange(k))
        lv, dorefa_lv = levels(v), m * (2 * torch.arange(L + 1) / L - 1)
        assert torch.allclose(lv, dorefa_lv, rtol=0, atol=1e-6)  # the same 2^K levels, in code order
        _, idx = assign(t, v)
        dorefa_codes = torch.round(L * (t / (2 * m) + 0.5))
        assert torch.equal(idx.float(), dorefa_codes)
        w4 = QuantConv2d(1, 16, 3, w_bits=k, a_bits=8)
        with torch.no_grad():
            w4.weight.copy_(conv.weight)
        assert torch.allclose(lv.gather(1, idx), quantize_weight(w4.weight, k).reshape(16, -1), rtol=0, atol=1e-6)


def test_lqnet_model_has_no_payload_form_until_removed(digits):
    from nas.export.fold import dorefa_codes

    model = _net()
    train_with_methods(model, digits, 1, Methods(weight_quant="lqnet"), seed=0, **KW)
    layer = next(m for m in lqnet_layers(model) if m.w_bits == 4)
    with pytest.raises(AssertionError, match="do not reproduce quant_weight"):
        dorefa_codes(layer)  # the export's own check refuses LQ-Net's levels
    assert _state(model).keys() == _state(_net()).keys()  # v is not in the state dict
    assert remove_lqnet(model) == 6 and not has_lqnet(model)
    codes_, scale = dorefa_codes(layer)  # DoReFa again: the payload's codes reproduce the layer
    assert codes_.min() >= 0 and codes_.max() <= 15


# ---------------------------------------------------------------- MetaQuant


def _grads(model, x, y):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_meta_terms_recover_the_quantized_weights_gradient(fashion_batch):
    x = fashion_batch[0]
    torch.manual_seed(0)
    for bits in (1, 2, 4, 8):
        conv = QuantConv2d(1, 8, 3, padding=1, w_bits=bits, a_bits=32)
        w_hat = quantize_weight(conv.weight, bits)  # Ŵ, the forward's weight
        w_hat.retain_grad()
        out = F.conv2d(x, w_hat, padding=1)
        out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
        d, u = layer_terms(conv, conv.weight.detach())
        assert torch.allclose(conv.weight.grad, d * w_hat.grad, rtol=1e-5, atol=1e-7)  # g_W(STE) = D g_Ŵ
        if bits == 1:
            assert torch.equal(u.abs().mean(dim=(1, 2, 3)).round(decimals=5), torch.ones(8))  # W / α_c
        else:
            assert u.abs().amax(dim=(1, 2, 3)).eq(1).all()  # t / m_c, in [-1, 1], reaching ±1
        meta = MetaQuant(conv)
        g_w, (g_norm, _, _) = meta.meta_gradient(conv, conv.weight.grad)
        sigma = w_hat.grad.pow(2).mean().sqrt()
        assert torch.allclose(g_norm * sigma, w_hat.grad, rtol=1e-4, atol=1e-7)  # ĝ σ = g_Ŵ (eq. 2-36)
        assert torch.equal(g_w, conv.weight.grad)  # a fresh meta network: the STE exactly
        meta.remove()


def test_meta_network_learns_and_changes_the_weight_gradient_not_the_forward(fashion_batch):
    x, y = fashion_batch
    model, twin = _net(FM_4BIT), _net(FM_4BIT)
    meta = MetaQuant(model, seed=0)
    assert len(meta.layers) == len(meta_layers(model)) == 9  # stem, 2 x (pw, dw, pwl), head, fc
    assert [m.w_bits for m in meta.layers].count(4) == 6
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.05)
    last = meta.meta.net[-1].weight
    for step in range(3):
        out, twin_out = model(x), twin(x)  # the forward runs Φ's step from the last backward
        assert torch.equal(out, twin_out)  # the same weights give the same forward, bit for bit
        g = _grads(model, x, y)
        g_ste = _grads(twin, x, y)
        if step == 0:
            assert all(torch.equal(g[n], g_ste[n]) for n in g)  # Φ's last layer is zero: the STE
            assert all(p.grad is None for p in meta.meta.parameters())  # no previous step to learn from
        if step == 1:
            assert last.grad is not None and last.grad.abs().sum() > 0  # eq. 2-45 reached Φ
        twin.load_state_dict(model.state_dict())  # the same weights, then each steps with its own gradient
        for p, q in zip(model.parameters(), twin.parameters()):
            q.grad = p.grad.clone()
        opt.step()
        twin_opt.step()
    assert meta.steps == 1 and meta.pending and last.abs().sum() > 0
    model(x)  # Φ's second step
    g, g_ste = _grads(model, x, y), _grads(twin, x, y)
    conv = model.blocks[0][0].conv_pw
    name = next(n for n, p in model.named_parameters() if p is conv.weight)
    assert not torch.equal(g[name], g_ste[name])  # MetaQuant's gradient is not the STE's ...
    d, u = layer_terms(conv, conv.weight.detach())  # ... it is the STE's times 1 + tanh f_Φ(ĝ, u)
    g_hat = g_ste[name] / d
    sigma = g_hat.pow(2).mean().sqrt()
    with torch.no_grad():
        factor = 1 + torch.tanh(meta.meta(g_hat / sigma, u))
    assert torch.allclose(g[name], g_ste[name] * factor, rtol=1e-4, atol=1e-9)
    assert (factor > 0).all() and (factor < 2).all() and factor.std() > 0  # per element, never a reversal
    bn = [n for n in g if "bn" in n]  # everything but the quantized weights: the STE's
    assert bn and all(torch.equal(g[n], g_ste[n]) for n in bn)
    meta.remove()
    assert not model._forward_pre_hooks and all(not m.weight._backward_hooks for m in meta_layers(model))


def test_metaquant_training_run_trains_other_weights_that_export_as_usual(digits):
    from nas.export.fold import dorefa_codes

    model, plain = _net(DIGITS_BINARY), _net(DIGITS_BINARY)
    _, record = train_with_methods(model, digits, 1, Methods(weight_grad="metaquant"), seed=0, **KW)
    train(plain, digits, 1, seed=0, **KW)
    assert record["metaquant_layers"] == 7 and record["metaquant_params"] == 337  # 4 binary, stem, shortcut, fc
    assert sorted(m.w_bits for m in meta_layers(model)) == [1, 1, 1, 1, 8, 8, 8]
    assert record["metaquant_steps"] == 20  # every step but the last (Φ steps at the next forward)
    assert not _same(_state(model), _state(plain)) and _state(model).keys() == _state(plain).keys()
    assert not model._forward_pre_hooks  # the hooks are gone after the run
    assert all(not m.weight._backward_hooks for m in meta_layers(model))
    codes_, _ = dorefa_codes(model.fc)  # an 8-bit layer's payload codes reproduce its weight
    assert 0 <= codes_.min() and codes_.max() <= 255


# ---------------------------------------------------------------- defaults and the command line


def test_explicit_default_weight_methods_train_bit_for_bit_as_today(digits):
    a, b = _net(), _net()
    ra, record = train_with_methods(a, digits, 1, Methods(weight_quant="dorefa", weight_grad="ste"), seed=2, **KW)
    rb = train(b, digits, 1, seed=2, **KW)
    assert _same(_state(a), _state(b)) and ra.accuracy == rb.accuracy
    assert Methods(weight_quant="dorefa", weight_grad="ste").is_default() and "lqnet_layers" not in record
    assert not has_lqnet(a) and not a._forward_pre_hooks


def test_nas_train_json_records_the_weight_methods(capsys):
    from nas.cli import main

    runs = {}
    for name, extra in (("none", []), ("default", ["--weight-quant", "dorefa", "--weight-grad", "ste"]),
                        ("lqnet", ["--weight-quant", "lqnet"]), ("meta", ["--weight-grad", "metaquant"])):
        assert main(["train", "--arch", DIGITS_4BIT, "--dataset", "digits", "--epochs", "1", "--threads", "1",
                     "--json", "--quiet", *extra]) == 0
        runs[name] = json.loads(capsys.readouterr().out)
    assert runs["none"]["accuracy"] == runs["default"]["accuracy"]
    assert runs["none"]["methods"] == runs["default"]["methods"]
    assert runs["none"]["methods"]["weight_quant"] == "dorefa" and runs["none"]["methods"]["weight_grad"] == "ste"
    assert runs["lqnet"]["methods"]["lqnet_layers"] == 6
    assert runs["meta"]["methods"]["metaquant_layers"] == 6 and runs["meta"]["methods"]["metaquant_steps"] == 20


def test_bad_weight_methods_in_python_say_what_was_expected():
    for bad, says in ((dict(weight_quant="lsq"), "weight_quant='lsq': expected one of"),
                      (dict(weight_grad="sgd"), "weight_grad='sgd': expected one of"),
                      (dict(weight_quant="lqnet", weight_grad="metaquant"), "expected one of the two")):
        with pytest.raises(UsageError, match=says):
            Methods(**bad)


@pytest.mark.parametrize("argv, says", [
    (["--weight-quant", "lsq"], "argument --weight-quant: invalid choice: 'lsq'"),
    (["--weight-grad", "sgd"], "argument --weight-grad: invalid choice: 'sgd'"),
    (["--weight-quant", "lqnet", "--weight-grad", "metaquant"],
     "--weight-grad metaquant with --weight-quant lqnet: expected one of the two"),
    (["--weight-quant", "lqnet", "--save", "{tmp}/w.safetensors"],
     "with --weight-quant lqnet: LQ-Net's learned levels are not the DoReFa codes the payload stores"),
    (["--weight-quant", "lqnet", "--arch",  # 1-bit and float layers only
      "in_r8_c1-stem_c16_k3_s1_w32_a32_noact-ir_r1_k3_s1_e1_c16_w1_a1-head_c0_w32_a32-fc_n10_w32_a32"],
     "--weight-quant lqnet: --arch has no 2..8-bit weight layer"),
    (["--weight-grad", "metaquant", "--arch", "in_r8_c1-stem_c16_k3_s1-ir_r1_k3_s2_e4_c24-head_c64-fc_n10"],
     "--weight-grad metaquant: --arch has no 1..8-bit weight layer"),
])
def test_bad_weight_method_options_are_one_line_and_exit_2(argv, says, capsys, tmp_path):
    from nas.cli import main

    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    arch = [] if "--arch" in argv else ["--arch", DIGITS_4BIT]
    rc = main(["train", *arch, "--dataset", "digits", "--epochs", "1", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and says in err and err.startswith("nas: error: "), err
    assert not (tmp_path / "w.safetensors").exists()
