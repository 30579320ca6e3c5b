"""nas.compress: affine PTQ (seed 001's examples), pruning, weight sharing and the exact payload."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from nas.cli import main
from nas.compress import prune as P
from nas.compress.model import lenet5
from nas.compress.payload import decode_layer, encode_layer, encode_model, layer_plan, model_plan
from nas.compress.pipeline import CompressConfig, compress, fp32_weight_bytes
from nas.compress.ptq import (PTQConfig, affine_params, apply_ptq, calibrate_range, dequantize, fake_quantize,
                              int_range, quant_error, quantize)
from nas.compress.share import shared_of, share_weights_
from nas.cost import layout


# ---- seed 001: affine quantization -------------------------------------------------------

def test_n_bits_hold_minus_2_pow_n_minus_1_to_2_pow_n_minus_1_minus_1():
    assert int_range(3) == (-4, 3)  # seed 001 sec. 2: 3 bits -> -4..3, 8 values
    assert int_range(8) == (-128, 127)


def test_seed_001_every_real_in_minus_2_2_to_minus_1_8_maps_to_minus_2():
    x = torch.tensor([-2.2, -2.1, -1.9, -1.8, 2.9, 3.4, 7.0, -4.0, -9.0])
    q = quantize(x, 1.0, 0, 3)
    assert q.tolist() == [-2, -2, -2, -2, 3, 3, 3, -4, -4]  # clamped to -4..3


def test_asymmetric_params_map_the_range_onto_all_codes():
    s, z = affine_params(torch.tensor(-1.0), torch.tensor(3.0), 8, symmetric=False)
    assert s.item() == pytest.approx(4 / 255, rel=0, abs=1e-9)
    assert z.item() == round(-128 + 1 / (4 / 255))  # -64
    assert quantize(torch.tensor([-1.0, 3.0, 0.0]), s, z, 8).tolist() == [-128, 127, -64]
    assert dequantize(quantize(torch.tensor(0.0), s, z, 8), s, z).item() == 0.0  # zero is exact


def test_symmetric_per_channel_scale_is_max_abs_over_127():
    w = torch.tensor([[0.5, -1.27], [2.54, 0.1]])
    lo, hi = calibrate_range(w, "minmax", per_channel=True)
    s, z = affine_params(lo, hi, 8, symmetric=True)
    assert torch.equal(z, torch.zeros(2))
    assert torch.allclose(s, torch.tensor([0.01, 0.02]), rtol=0, atol=1e-9)


def test_sqnr_is_signal_over_noise_in_db():
    x, x_hat = torch.tensor([3.0, 4.0]), torch.tensor([3.0, 3.5])
    e = quant_error(x, x_hat)
    assert e["mse"] == 0.125
    assert e["sqnr_db"] == pytest.approx(10 * math.log10(25 / 0.25), abs=1e-12)
    assert quant_error(x, x)["sqnr_db"] == math.inf


def test_mse_calibration_never_worse_than_minmax_and_percentile_inside_it():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(5000, generator=g), torch.tensor([40.0])])  # one outlier
    def err(lo, hi):
        s, z = affine_params(lo, hi, 8, False)
        return (fake_quantize(x, s, z, 8) - x).pow(2).mean().item()
    mm, pc, ms = (calibrate_range(x, m) for m in ("minmax", "percentile", "mse"))
    assert err(*ms) <= err(*mm)
    assert pc[1] < mm[1] and pc[0] >= mm[0]


# ---- pruning ---------------------------------------------------------------------------

def test_dropout_on_retraining_follows_han_eq_2():
    assert P.retrain_dropout(0.5, 400, 100) == 0.25  # D_o sqrt(C_ir / C_io)


def test_cubic_schedule_reaches_the_target_and_grows():
    f = P.schedule(4)
    assert f[-1] == 1.0 and all(a < b for a, b in zip(f, f[1:]))
    assert f[0] == pytest.approx(1 - 0.75 ** 3)


def test_unstructured_pruning_hits_each_layers_sparsity_and_keeps_the_largest():
    torch.manual_seed(0)
    net = lenet5()
    P.prune_unstructured_(net, 0.9, {0: 0.5})
    P.make_permanent_(net)
    for i, (_, m) in enumerate(P.layers_of(net)):
        n = m.weight.numel()
        assert int((m.weight == 0).sum()) == round((0.5 if i == 0 else 0.9) * n)
    w = net[2].weight
    kept = w[w != 0].abs()
    assert kept.numel() and kept.min() > 0


def test_iterative_pruning_compounds_to_the_final_sparsity():
    torch.manual_seed(0)
    net = lenet5()
    for frac in P.schedule(3):
        P.prune_unstructured_(net, 0.8, fraction=frac)
    P.make_permanent_(net)
    w = net[5].weight
    assert int((w == 0).sum()) == round(0.8 * w.numel())


def test_structured_pruning_removes_channels_and_their_readers():
    torch.manual_seed(0)
    net = lenet5()
    P.prune_structured_(net, 0.5)
    P.make_permanent_(net)
    removed = P.remove_pruned_channels_(net)
    assert removed == [10, 25, 250]
    assert net[0].weight.shape == (10, 1, 5, 5) and net[2].weight.shape == (25, 10, 5, 5)
    assert net[5].weight.shape == (250, 25 * 16) and net[8].weight.shape == (10, 250)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_channels_nobody_reads_are_removed_without_changing_the_output():
    torch.manual_seed(0)
    net = lenet5().eval()
    with torch.no_grad():
        net[5].weight.view(500, 50, 16)[:, 7] = 0  # conv2 channel 7 feeds nothing
        net[8].weight[:, 3] = 0  # fc1 neuron 3 feeds nothing
    x = torch.randn(4, 1, 28, 28)
    before = net(x)
    assert P.remove_dead_neurons_(net) == [0, 1, 1]
    assert net[2].out_channels == 49 and net[8].in_features == 499
    torch.testing.assert_close(net(x), before, rtol=0, atol=1e-5)


def test_a_network_with_branches_is_refused_for_channel_removal():
    from nas.errors import UsageError
    with pytest.raises(UsageError, match="chain"):
        P.remove_pruned_channels_(nn.ModuleDict({"a": nn.Linear(2, 2)}))


# ---- weight sharing --------------------------------------------------------------------

def test_codebook_has_2_pow_b_values_and_centroid_gradient_sums_member_gradients():
    torch.manual_seed(0)
    lin = nn.Linear(30, 8)
    net = nn.Sequential(lin)
    share_weights_(net, 3)
    sw = shared_of(lin)
    assert lin.weight.unique().numel() <= 8 and sw.learned.numel() == 8
    x = torch.randn(5, 30)
    net(x).pow(2).sum().backward()
    # dL/dW for the tied weight, computed directly: the centroid gradient is its members' sum
    w = lin.weight.detach().requires_grad_(True)
    (torch.nn.functional.linear(x, w, lin.bias.detach())).pow(2).sum().backward()
    expected = torch.zeros(8).index_add_(0, sw.index.flatten(), w.grad.flatten())
    torch.testing.assert_close(sw.learned.grad, expected)


def test_pruned_layer_codebook_pins_zero():
    torch.manual_seed(0)
    net = lenet5()
    P.prune_unstructured_(net, 0.9)
    P.make_permanent_(net)
    share_weights_(net, 4, pruned=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(torch.randn(2, 1, 28, 28)).sum().backward()
    opt.step()
    w = net[5].weight
    assert int((w == 0).sum()) >= round(0.9 * w.numel())  # pruned weights stay exactly zero


def test_gmm_option_builds_a_codebook():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(40, 6))
    share_weights_(net, 2, method="gmm")
    assert net[0].weight.unique().numel() <= 4


# ---- the payload: predicted == written, decoded == model --------------------------------

@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.97])
@pytest.mark.parametrize("share", [None, 3])
def test_payload_bytes_are_predicted_exactly_and_decode_exactly(sparsity, share):
    torch.manual_seed(1)
    net = lenet5()
    if sparsity:
        P.prune_unstructured_(net, sparsity)
        P.make_permanent_(net)
    if share:
        share_weights_(net, share, pruned=bool(sparsity))
    plans = model_plan(net)
    payload, _ = encode_model(net)
    assert len(payload) == sum(p.record_bytes for p in plans)
    pos = 0
    for plan, (_, m) in zip(plans, P.layers_of(net)):
        w, b, used = decode_layer(payload[pos:], plan.kind, plan.shape, plan.share_bits)
        assert np.array_equal(w, m.weight.detach().numpy())  # atol = 0
        assert np.array_equal(b, m.bias.detach().numpy())
        pos += used
    assert pos == len(payload)


def test_each_encoding_is_chosen_where_it_is_smallest():
    torch.manual_seed(0)
    dense, mid, sparse = nn.Linear(64, 32), nn.Linear(64, 32), nn.Linear(64, 32)
    with torch.no_grad():
        mid.weight[torch.rand(32, 64) < 0.6] = 0
        sparse.weight[torch.rand(32, 64) < 0.99] = 0
    encs = [layer_plan("l", m).encoding for m in (dense, mid, sparse)]
    assert encs == [layout.DENSE, layout.BITMAP, layout.RELATIVE]
    for m in (dense, mid, sparse):
        plan = layer_plan("l", m)
        assert len(encode_layer(plan, m)) == plan.record_bytes


def test_relative_index_fillers_follow_deep_compression():
    # 8-bit gaps span 256 positions: gap 255 fits, 256 needs one filler, 600 needs two
    assert layout.relative_entries([0, 255, 256, 600], 8) == 1 + 1 + 2 + 3
    w = torch.zeros(1, 1000, 1, 1)
    w[0, [0, 256, 513, 999]] = 1.0  # gaps 0, 255, 256, 485
    conv = nn.Conv2d(1000, 1, 1)  # conv: 8-bit gaps
    with torch.no_grad():
        conv.weight.copy_(w)
    plan = layer_plan("conv", conv)
    assert plan.entries == 1 + 1 + 2 + 2
    assert plan.encoding == layout.RELATIVE  # 6 entries x (8 + 32) bits = 30 bytes < 125-byte bitmap + 16
    assert plan.weight_bytes == 30
    dec, _, _ = decode_layer(encode_layer(plan, conv), "conv", (1, 1000, 1, 1), None)
    assert np.array_equal(dec, w.numpy())
    lin = nn.Linear(1000, 1)  # linear: 5-bit gaps span 32, so the same positions need 34 entries
    with torch.no_grad():
        lin.weight.copy_(w.reshape(1, 1000))
    assert layer_plan("fc", lin).entries == 1 + (1 + 255 // 32) + (1 + 256 // 32) + (1 + 485 // 32)


def test_fp32_baseline_is_deep_compressions_lenet5_size():
    assert fp32_weight_bytes(lenet5()) == 4 * 431_080  # 1720 KB in Deep Compression's table


# ---- end to end on real data (sklearn digits) -------------------------------------------

@pytest.fixture(scope="module")
def digits16():
    from nas.data import load_dataset
    return load_dataset("digits").resized(16)


@pytest.fixture(scope="module")
def trained(digits16, tmp_path_factory):
    torch.manual_seed(0)
    net = lenet5(1, 16, 10)
    P.retrain(net, digits16, 3, lr=3e-3, log=open("/dev/null", "w"))
    from safetensors.torch import save_file
    path = tmp_path_factory.mktemp("w") / "lenet.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return net, path


def test_static_ptq_keeps_accuracy_and_reports_errors(digits16, trained):
    import copy
    from nas.train.evaluate import evaluate
    net = copy.deepcopy(trained[0])
    before = evaluate(net, digits16.test)
    calib = torch.cat([digits16.train.batch(torch.arange(256))[0]])
    rows = apply_ptq(net, calib, PTQConfig("static"))
    after = evaluate(net, digits16.test)
    assert before > 0.8 and after >= before - 0.02
    assert len(rows) == 4 and all(r["weight_sqnr_db"] > 30 and r["act_sqnr_db"] > 20 for r in rows)
    from nas.compress.payload import decode_ptq_layer, encode_ptq
    from nas.compress.pipeline import ptq_weight_bytes
    payload = encode_ptq(net)
    assert len(payload) == ptq_weight_bytes(net, static=True)
    pos = 0
    for _, m in P.layers_of(net):
        w, b, used = decode_ptq_layer(payload[pos:], tuple(m.weight.shape), static=True)
        assert np.array_equal(w, m.weight.detach().numpy())  # the codes times the scale, atol = 0
        pos += used
    assert pos == len(payload)


def test_dynamic_ptq_ranges_activations_per_call(digits16, trained):
    import copy
    from nas.train.evaluate import evaluate
    net = copy.deepcopy(trained[0])
    rows = apply_ptq(net, digits16.train.batch(torch.arange(128))[0], PTQConfig("dynamic"))
    assert evaluate(net, digits16.test) > 0.8 and all("act_sqnr_db" in r for r in rows)


def test_nas_compress_writes_the_predicted_payload(digits16, trained, tmp_path, capsys):
    import json
    out = tmp_path / "out"
    rc = main(["compress", "--model", "lenet5", "--weights", str(trained[1]), "--dataset", "digits",
               "--resolution", "16", "--prune", "0.8", "--share", "4", "--retrain-epochs", "1", "-o", str(out)])
    assert rc == 0
    m = json.loads((out / "manifest.json").read_text())
    assert (out / "payload.bin").stat().st_size == m["weight_bytes"] == m["payload_bytes"]
    assert m["ratio"] > 10 and m["test_accuracy_after"] > 0.8
    assert "epoch 1/1" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["--prune", "1.5"], "--prune 1.5"),
    (["--share", "0"], "--share 0"),
    (["--ptq", "static8", "--calib-images", "10"], "--calib-images 10"),
    (["--ptq", "int4"], "--ptq 'int4'"),
    (["--iterative", "0", "--prune", "0.5"], "--iterative 0"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, tmp_path, capsys, trained):
    rc = main(["compress", "--model", "lenet5", "--weights", str(trained[1]), "--dataset", "digits",
               "--resolution", "16", "-o", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err
    assert not (tmp_path / "o").exists()


# ---- product quantization ----------------------------------------------------------------

def test_pq_payload_is_predicted_exactly_and_decodes_exactly():
    from nas.compress.pq import pq_weights_
    torch.manual_seed(0)
    net = lenet5()
    pq_weights_(net, 5, 16)  # conv2 C_in 20, fc1 800, fc2 500: all divisible by 5
    plans = model_plan(net)
    assert [p.encoding for p in plans] == [layout.DENSE, layout.PQ, layout.PQ, layout.PQ]
    payload, _ = encode_model(net)
    assert len(payload) == sum(p.record_bytes for p in plans)
    pos = 0
    for plan, (_, m) in zip(plans, P.layers_of(net)):
        w, _, used = decode_layer(payload[pos:], plan.kind, plan.shape, plan.share_bits, plan.pq)
        assert np.array_equal(w, m.weight.detach().numpy())
        pos += used
    assert plans[1].weight_bytes == 16 * 5 * 4 + math.ceil(50 * 25 * 4 * 4 / 8)  # 5000 sub-vectors x 4 bits


def test_pq_with_d_not_dividing_the_channels_is_exit_2(tmp_path, capsys, trained):
    rc = main(["compress", "--model", "lenet5", "--weights", str(trained[1]), "--dataset", "digits",
               "--resolution", "16", "-o", str(tmp_path / "o"), "--pq", "d=3,k=16"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--pq d=3" in err and "20 input channels" in err


# ---- an arch string: BatchNorm folded, then compressed ---------------------------------

ARCH32 = "in_r8_c1-stem_c16_k3_s1_w32_a32-ir_r1_k3_s2_e2_c16_w32_a32-head_c0_w32_a32-fc_n10_w32_a32"


def test_arch_folds_batchnorm_and_compresses_through_the_cli(tmp_path, capsys):
    import json
    from safetensors.torch import save_file
    from nas.blocks.model import build_model
    from nas.compress.model import plain_from_arch
    from nas.data import load_dataset
    from nas.space import decode
    data = load_dataset("digits")
    torch.manual_seed(0)
    net = build_model(decode(ARCH32))
    P.retrain(net, data, 2, lr=3e-3, log=open("/dev/null", "w"))
    path = tmp_path / "a.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    x, _ = data.test.batch(torch.arange(16))
    net.eval()
    before = net(x)
    torch.testing.assert_close(plain_from_arch(net)(x), before, rtol=0, atol=1e-4)
    out = tmp_path / "out"
    assert main(["compress", "--arch", ARCH32, "--weights", str(path), "--dataset", "digits", "--prune", "0.5",
                 "--share", "5", "-o", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert (out / "payload.bin").stat().st_size == m["weight_bytes"]
    assert [r["layer"] for r in m["layers"]][0] == "stem.conv"


def test_a_quantized_arch_is_refused(tmp_path, capsys):
    from safetensors.torch import save_file
    from nas.blocks.model import build_model
    from nas.space import decode
    arch = ARCH32.replace("fc_n10_w32_a32", "fc_n10_w8_a8")
    path = tmp_path / "q.safetensors"
    save_file({k: v.contiguous() for k, v in build_model(decode(arch)).state_dict().items()}, str(path))
    rc = main(["compress", "--arch", arch, "--weights", str(path), "--dataset", "digits", "--prune", "0.5",
               "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "layer fc is quantized" in err


def test_price_before_training_bounds_the_written_record():
    torch.manual_seed(0)
    net = lenet5()
    P.prune_unstructured_(net, 0.9, {0: 0.4})
    P.make_permanent_(net)
    share_weights_(net, 4, pruned=True)
    for i, plan in enumerate(model_plan(net)):
        bound = layout.pruned_layer_bytes_bound(plan.n, plan.shape[0], 0.4 if i == 0 else 0.9, 4)
        assert plan.record_bytes <= bound
        if plan.encoding == layout.BITMAP:
            assert plan.record_bytes == bound  # exact when the bitmap wins


def test_dropout_rescaling_starts_from_the_dense_rate_at_every_step():
    torch.manual_seed(0)
    net = lenet5(dropout=0.5)
    conn = P.connections(net)
    for frac in P.schedule(3):
        P.prune_unstructured_(net, 0.75, fraction=frac)
        P.rescale_dropout_(net, conn)
    assert net[7].p == pytest.approx(0.5 * math.sqrt(0.25), abs=1e-3)  # fc2 keeps a quarter of its weights


def test_a_batchnorm_net_is_pruned_with_its_batchnorms_then_folded(digits16):
    """The ResNet-20-like retrains its pruned weights with BatchNorm (nas.compress.pipeline),
    folds after the masks are permanent (zeros stay zeros), and the payload is exact."""
    from nas.compress.model import resnet20_like
    from nas.compress.payload import model_plan
    from nas.compress.pipeline import CompressConfig, compress
    torch.manual_seed(0)
    net = resnet20_like(0.25, 1, 10)
    P.retrain(net, digits16, 1, lr=3e-3, log=open("/dev/null", "w"))
    seen = []  # did the prune steps' retraining run with the BatchNorms in place?
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, o: seen.append(type(m).__name__) if isinstance(m, torch.nn.BatchNorm2d) and m.training else None)
    try:
        out = compress(net, digits16, CompressConfig(prune=0.6, iterative=2, share=4, retrain_epochs=1),
                       log=open("/dev/null", "w"))
    finally:
        handle.remove()
    assert "BatchNorm2d" in seen
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    layers = P.layers_of(net)
    big = [m for _, m in layers[1:-1]]
    assert all(abs(float((m.weight == 0).float().mean()) - 0.6) < 0.02 for m in big)
    assert out["weight_bytes"] == len(out["payload"]) == sum(p.record_bytes for p in model_plan(net))


def test_layer_sparsity_takes_ranges():
    from nas.errors import UsageError
    from nas.compress.report import parse_layer_sparsity
    assert parse_layer_sparsity("0=0.4,14-16=0.95") == {0: 0.4, 14: 0.95, 15: 0.95, 16: 0.95}
    for bad in ("3-1=0.5", "-2=0.5", "a=0.5", "4"):
        with pytest.raises(UsageError):
            parse_layer_sparsity(bad)
