"""The seed's training methods (issue 19 item 3; nas.quant.methods, nas.train.methods), each
held to its defining property on real tensors: Fashion-MNIST images and their real
gradients, and short training runs on scikit-learn's digits.

- Bi-Real's two-stage recipe: stage 1 computes Clip(-1, x, 1) at 1-bit sites with float
  weights, stage 2 binarizes from the weights stage 1 reached;
- BNN's hard-tanh STE: sign forward, gradient 1_{|x| <= 1};
- DoReFa activations (clip fixed at 1) and k-bit stochastic gradients;
- defaults leave training bit-identical.
"""

import pytest
import torch
import torch.nn.functional as F

from nas.blocks.model import build_model
from nas.data import load_dataset
from nas.errors import UsageError
from nas.quant import ActQuant, ApproxSign, BinaryConv2d, QuantConv2d
from nas.quant.functions import GradQuantize, HardTanhSign, quantize_gradient, sign
from nas.quant.methods import (binary_act_sites, binary_layers, fix_activation_clips, quantize_gradients,
                               real_valued_stage, set_sign_gradient)
from nas.space import decode
from nas.train.methods import Methods, stage_epochs, train_with_methods
from nas.train.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")

# a Bi-Real net for 8x8 digits: 8-bit stem and classifier, two 1-bit stages (one downsampling)
DIGITS_BINARY = ("in_r8_c1-stem_c16_k3_s1_w8_a8_noact-ir_r1_k3_s1_e1_c16_w1_a1-ir_r1_k3_s2_e1_c32_w1_a1"
                 "-head_c0_w8_a8-fc_n10_w8_a8")
FM_BINARY = ("in_r28_c1-stem_c32_k3_s1_w8_a8_noact-ir_r1_k3_s1_e1_c64_w1_a1-ir_r1_k3_s2_e1_c128_w1_a1"
             "-ir_r1_k3_s2_e1_c256_w1_a1-head_c0_w8_a8-fc_n10_w8_a8")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _net(arch=DIGITS_BINARY, seed=0):
    torch.manual_seed(seed)
    return build_model(decode(arch))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- BNN's hard-tanh STE


def test_hardtanh_sign_is_sign_forward_and_the_indicator_of_abs_x_le_1_backward(fashion_batch):
    x = fashion_batch[0].clone().requires_grad_(True)  # normalised pixels: -0.81 .. 2.02, many outside [-1, 1]
    y = HardTanhSign.apply(x)
    assert torch.equal(y, sign(x.detach()))
    g = torch.linspace(-3, 3, x.numel()).reshape(x.shape)  # a different weight on every element
    y.backward(g)
    inside = x.detach().abs() <= 1
    assert 0 < inside.sum() < inside.numel()  # both cases occur in the real batch
    assert torch.equal(x.grad, g * inside)
    exact = torch.tensor([-1.0, 1.0], requires_grad=True)  # the boundary is inside
    HardTanhSign.apply(exact).sum().backward()
    assert exact.grad.tolist() == [1.0, 1.0]


def test_sign_gradient_switches_every_binary_site_and_back(fashion_batch):
    model = _net(FM_BINARY)
    sites = binary_act_sites(model)
    assert len(sites) == 6 and all(m.sign_fn is ApproxSign for m in sites)
    assert set_sign_gradient(model, "htanh") == 6
    x = fashion_batch[0].clone().requires_grad_(True)
    site = sites[0]
    site(x).sum().backward()
    assert torch.equal(x.grad, (x.detach().abs() <= 1).float())  # hard tanh, not max(0, 2 - 2|x|)
    set_sign_gradient(model, "approxsign")
    assert all("sign_fn" not in m.__dict__ and m.sign_fn is ApproxSign for m in sites)  # the class default again
    x.grad = None
    site(x).sum().backward()
    assert torch.equal(x.grad, (2 - 2 * x.detach().abs()).clamp_min(0))
    with pytest.raises(UsageError, match="'tanh'.*expected one of"):
        set_sign_gradient(model, "tanh")


# ---------------------------------------------------------------- Bi-Real's two stages


def test_real_valued_stage_is_clip_and_float_weights_and_restores_binarization(fashion_batch):
    model = _net(FM_BINARY).eval()
    x = fashion_batch[0]
    before = model(x)
    conv = next(m for m in model.modules() if isinstance(m, BinaryConv2d))
    site = conv.act_quant
    t = (torch.arange(-8, 9) / 4).requires_grad_(True)  # -2 .. 2 exactly, ±1 included
    with real_valued_stage(model) as (n_sites, n_layers):
        assert (n_sites, n_layers) == (6, 6)
        y = site(t)
        assert torch.equal(y, t.detach().clamp(-1, 1))  # Clip(-1, x, 1), real values
        assert len(set(y.tolist())) > 2
        y.sum().backward()
        assert torch.equal(t.grad, (t.detach().abs() < 1).float())  # hard tanh's derivative, open interval
        # the conv's float weight on the clipped input, one-padded as in stage 2
        seen = {}
        hook = conv.register_forward_hook(lambda m, i, o: seen.update(h=i[0], out=o))
        relaxed = model(x)  # the real images through the stem into the first binary conv
        hook.remove()
        h = seen["h"]
        expected = F.conv2d(F.pad(h.clamp(-1, 1), (1,) * 4, value=1.0), conv.weight, None, conv.stride, 0,
                            conv.dilation, conv.groups)
        assert not conv.kernel_ready(h)  # no packed kernel on real values
        assert torch.allclose(seen["out"], expected, atol=1e-5)
        assert conv.quant_weight() is conv.weight
    assert not torch.equal(relaxed, before)
    assert torch.equal(model(x), before)  # binarized again, the same arithmetic as before
    assert all("real_clip" not in m.__dict__ for m in binary_act_sites(model))
    assert all("real_weights" not in m.__dict__ for m in binary_layers(model))
    w = conv.weight.detach()
    assert torch.equal(conv.quant_weight(), sign(w) * w.abs().mean(dim=(1, 2, 3), keepdim=True))


def test_two_stage_carries_stage_one_weights_into_binarization(digits):
    kw = dict(progress=False, measure_inference=False, seed=3)
    model = _net()
    result, record = train_with_methods(model, digits, 2, Methods(two_stage=0.5), **kw)
    assert record["stage1_epochs"] == 1 and record["stage1_relaxed_sites"] == 4
    assert result.epochs == 1 and 0.1 < record["stage1_accuracy"] <= 1

    by_hand = _net()  # the same two stages, spelt out: stage 1 under the context, then plain training
    with real_valued_stage(by_hand):
        train(by_hand, digits, 1, **kw)
    stage1 = _state(by_hand)
    assert stage1.keys() == _state(_net()).keys() and not _same(stage1, _state(_net()))
    train(by_hand, digits, 1, **kw)
    assert _same(_state(model), _state(by_hand))  # stage 2 started from stage 1's weights
    assert not _same(_state(by_hand), stage1)

    one_stage = _net()
    train(one_stage, digits, 1, **kw)  # stage 2 alone, from the initial weights: another net
    assert not _same(_state(one_stage), _state(model))


def test_default_methods_train_bit_for_bit_as_today(digits):
    kw = dict(progress=False, measure_inference=False, seed=1)
    a, b = _net(), _net()
    ra, record = train_with_methods(a, digits, 1, Methods(), **kw)
    rb = train(b, digits, 1, **kw)
    assert _same(_state(a), _state(b)) and ra.accuracy == rb.accuracy
    assert record == {"two_stage": 0.0, "sign_gradient": "approxsign", "act_quant": "pact", "grad_bits": None,
                      "weight_quant": "dorefa", "weight_grad": "ste"}
    assert all("sign_fn" not in m.__dict__ for m in binary_act_sites(a))
    assert all("quant_weight" not in m.__dict__ for m in binary_layers(a))  # no LQ-Net quantizer
    assert not a._forward_pre_hooks and all(not p._backward_hooks for p in a.parameters())  # no MetaQuant


def test_stage_epochs_rounds_and_refuses_an_empty_stage():
    assert stage_epochs(3, 0.34) == (1, 2) and stage_epochs(10, 0.5) == (5, 5) and stage_epochs(4, 0.75) == (3, 1)
    with pytest.raises(UsageError, match=r"0\.1 of 3 epochs gives 0 real-valued and 3 binary"):
        stage_epochs(3, 0.1)
    with pytest.raises(UsageError, match=r"0\.9 of 2 epochs gives 2 real-valued and 0 binary"):
        stage_epochs(2, 0.9)
    for bad in (dict(two_stage=1.0), dict(two_stage=-0.1), dict(sign_gradient="ste"), dict(act_quant="lsq"),
                dict(grad_bits=1), dict(grad_bits=True), dict(weight_quant="lsq"), dict(weight_grad="sgd")):
        with pytest.raises(UsageError, match="expected"):
            Methods(**bad)


def test_search_final_recipe_takes_the_two_stage_knob_and_checks_it_before_any_work(digits):
    from nas.search.config import SearchConfig, build_config, resolve_sizes
    from nas.search.final import final_train

    config = build_config({"final_two_stage": 0.5, "final_epochs": 2, "dataset": "digits", "seed": 2})
    assert config.final_two_stage == 0.5 and SearchConfig().final_two_stage == 0.0
    model = _net()
    final_train(model, digits, config, measure_inference=False)
    by_hand = _net()
    train_with_methods(by_hand, digits, 2, Methods(two_stage=0.5), batch_size=config.final_batch_size, seed=2,
                       progress=False, measure_inference=False)
    assert _same(_state(model), _state(by_hand))
    with pytest.raises(UsageError, match="--final-two-stage 1.5: expected a fraction"):
        build_config({"final_two_stage": 1.5})
    with pytest.raises(UsageError, match="--final-two-stage 0.1 of 3 epochs gives 0 real-valued"):
        resolve_sizes(build_config({"final_two_stage": 0.1, "final_epochs": 3}), len(digits.train),
                      len(digits.val), 10, "digits")


# ---------------------------------------------------------------- DoReFa


def test_dorefa_activations_clip_at_one_and_stay_fixed_while_training(digits, fashion_batch):
    site = ActQuant(4, signed=False)
    x = fashion_batch[0]
    fix_activation_clips(site)
    assert site.clip.item() == 1.0 and not site.clip.requires_grad
    y = site(x)  # DoReFa: round((2^k - 1) clip(x, 0, 1)) / (2^k - 1)
    assert torch.allclose(y, torch.round(x.clamp(0, 1) * 15) / 15, rtol=0, atol=1e-6)
    assert y.min() == 0 and y.max() == 1 and len(torch.unique(y)) > 8  # the real images span the levels

    model = _net()
    _, record = train_with_methods(model, digits, 1, Methods(act_quant="dorefa"), progress=False,
                                   measure_inference=False)
    clips = [m.clip for m in model.modules() if isinstance(m, ActQuant) and m.clip is not None]
    assert record["fixed_clips"] == len(clips) == 2  # the 8-bit stem's and classifier's inputs
    assert all(c.item() == 1.0 and not c.requires_grad for c in clips)  # not learned


def test_quantized_gradient_lies_on_k_bit_levels_and_is_unbiased(fashion_batch):
    g = fashion_batch[0][:4] - 0.3  # real values of both signs, 4 samples
    q = quantize_gradient(g, 4, noise=torch.zeros_like(g))  # deterministic rounding
    m = g.abs().amax(dim=(1, 2, 3), keepdim=True)
    codes = (q / (2 * m) + 0.5) * 15
    assert torch.allclose(codes, codes.round(), atol=1e-4)  # on the 2^k levels
    assert (codes.round() >= 0).all() and (codes.round() <= 15).all()
    assert torch.allclose(q, 2 * m * (torch.round(15 * (g / (2 * m) + 0.5)) / 15 - 0.5))
    assert (q - g).abs().max() <= (m / 15).max() + 1e-6  # error at most half a step (step 2m / 15)
    torch.manual_seed(0)
    mean = torch.stack([quantize_gradient(g, 2) for _ in range(2000)]).mean(0)
    assert (quantize_gradient(g, 2) - g).abs().mean() > 0.05  # 2-bit draws are coarse ...
    assert (mean - g).abs().max() < 0.06 * m.max()  # ... but unbiased (stochastic rounding)


def test_gradient_hooks_quantize_the_output_gradient_of_each_quantized_layer(fashion_batch):
    x = fashion_batch[0][:2]
    torch.manual_seed(0)
    conv = QuantConv2d(1, 4, 3, padding=1, w_bits=8, a_bits=8)
    handles = quantize_gradients(conv, 3)
    assert len(handles) == 1
    torch.manual_seed(5)
    y = conv(x)
    g = torch.linspace(-1, 1, y.numel()).reshape(y.shape)
    y.backward(g)
    hooked = conv.weight.grad.clone()
    for h in handles:
        h.remove()
    conv.weight.grad = None
    torch.manual_seed(5)
    out = conv(x)
    dq = quantize_gradient(g, 3)  # the same noise draw, by the same seed
    out.backward(dq)
    assert torch.equal(hooked, conv.weight.grad)
    with pytest.raises(UsageError, match="gradient bits 1: expected"):
        quantize_gradients(conv, 1)
    assert GradQuantize.apply(x, 4).data_ptr() == x.data_ptr()  # forward is the identity, no copy


# ---------------------------------------------------------------- the command line


@pytest.mark.parametrize("argv, says", [
    (["--two-stage", "1"], "--two-stage 1.0: expected a fraction of the epochs, 0 <= F < 1"),
    (["--two-stage", "0.2", "--epochs", "2"], "--two-stage 0.2 of 2 epochs gives 0 real-valued and 2 binary"),
    (["--grad-bits", "40"], "--grad-bits 40: expected a whole number from 2 to 16"),
    (["--sign-grad", "ste"], "argument --sign-grad: invalid choice: 'ste'"),
    (["--act-quant", "lsq"], "argument --act-quant: invalid choice: 'lsq'"),
])
def test_bad_method_options_are_one_line_and_exit_2(argv, says, capsys):
    from nas.cli import main

    rc = main(["train", "--arch", DIGITS_BINARY, "--dataset", "digits", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and says in err, err


# ---------------------------------------------------------------- full-precision ends


def test_fp_ends_space_is_binary_yaml_with_float_stem_and_classifier():
    from nas.space import encode, load_space, random_archs

    fp, b8 = load_space("search_spaces/binary-fp-ends.yaml"), load_space("search_spaces/binary.yaml")
    pairs = list(zip(map(encode, random_archs(fp, 6, seed=7)), map(encode, random_archs(b8, 6, seed=7))))
    for a, b in pairs:  # seeded sampling draws the same net from both; only the ends' bits differ
        assert "w32_a32" in a and "w8_a8" not in a
        assert a.replace("w32_a32", "w8_a8") == b
    model = build_model(decode(FM_BINARY.replace("w8_a8", "w32_a32")))
    stem, fc = model.stem.conv, model.fc
    assert (stem.w_bits, stem.a_bits, fc.w_bits, fc.a_bits) == (32, 32, 32, 32)
    assert stem.act_quant.clip is None and fc.act_quant.clip is None  # no quantizer on their inputs
