"""Zero-cost proxies against their definitions, on real digit images: NASWOT's log|K_H| from
Hamming distances computed independently, synflow against Euler's identity for networks
that are positively homogeneous in each layer, and neither leaves a trace on the model."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from nas.data import load_dataset
from nas.data.split import stratified_subset
from nas.train.bench_proxies import ArchScore, correlations, proxy_batch, score_arch
from nas.train.proxies import is_rectifier, naswot, synflow


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread per module


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def batch(digits):
    return proxy_batch(digits.train, 64)  # (64, 1, 8, 8) real images, stratified


def relu_net(width=8, inplace=False):
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=inplace),
        nn.Flatten(), nn.Linear(width * 16, 10))


def test_proxy_batch_is_real_and_stratified(digits, batch):
    assert batch.shape == (64, 1, 8, 8)
    labels = digits.train.labels[torch.as_tensor(stratified_subset(digits.train.labels.numpy(), 64, 0))]
    assert torch.bincount(labels, minlength=10).min() >= 6


@pytest.mark.parametrize("inplace", [False, True])
def test_naswot_equals_log_det_of_hamming_kernel(batch, inplace):
    torch.manual_seed(0)
    model = relu_net(inplace=inplace)
    score = naswot(model, batch)
    with torch.no_grad():  # pre-activations of both ReLUs, train-mode BN, computed separately
        h1 = model[:2](batch).reshape(len(batch), -1)
        h2 = model[:5](batch).reshape(len(batch), -1)
    codes = torch.cat([h1 > 0, h2 > 0], dim=1).numpy()
    n_units = codes.shape[1]
    hamming = (codes[:, None, :] != codes[None, :, :]).sum(-1)
    sign, logdet = np.linalg.slogdet((n_units - hamming).astype(np.float64))
    assert sign > 0 and score == pytest.approx(logdet, rel=1e-9)


def test_naswot_leaves_the_model_untouched(batch):
    torch.manual_seed(0)
    model = relu_net().eval()
    before = copy.deepcopy(model.state_dict())
    naswot(model, batch)
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_naswot_of_a_batch_with_a_repeated_image_is_minus_infinity(batch):
    torch.manual_seed(0)
    repeated = torch.cat([batch[:8], batch[:1]])
    assert naswot(relu_net(), repeated) == -math.inf


def test_naswot_needs_rectifiers(batch):
    with pytest.raises(ValueError, match="no rectifier-like modules"):
        naswot(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), batch)


def test_rectifier_detection():
    class SignAct(nn.Module):
        bits = 1

    class Quant8(nn.Module):
        bits = 8

    assert is_rectifier(nn.ReLU()) and is_rectifier(nn.Hardswish()) and is_rectifier(SignAct())
    assert not is_rectifier(nn.Sigmoid()) and not is_rectifier(Quant8()) and not is_rectifier(nn.Conv2d(1, 1, 1))


def test_synflow_is_layers_times_output_for_a_homogeneous_network(batch):
    # With |weights|, ones input and no biases, every ReLU passes everything and each of the
    # L layers is linear in its weights, so sum(theta * dR/dtheta) over a layer equals R
    # (Euler) and synflow = L * R.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False), nn.ReLU(),
                          nn.Flatten(), nn.Linear(64, 10, bias=False))
    positive = copy.deepcopy(model).double()
    with torch.no_grad():
        for p in positive.parameters():
            p.abs_()
        r = float(positive(torch.ones(1, 1, 8, 8, dtype=torch.float64)).sum())
    assert synflow(model, batch) == pytest.approx(3 * r, rel=1e-12)


def test_synflow_ignores_bn_statistics_and_leaves_the_model_untouched(batch):
    torch.manual_seed(0)
    model = relu_net()
    fresh_score = synflow(model, batch)
    with torch.no_grad():
        for _ in range(3):
            model(batch)  # train-mode forwards move the BN running statistics
    before = copy.deepcopy(model.state_dict())
    assert synflow(model, batch) == pytest.approx(fresh_score, rel=1e-12)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).dtype == torch.float32 and model.training


def test_synflow_stays_finite_where_float32_overflows(batch):
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 64, 3, padding=1)] + [m for _ in range(40) for m in (nn.Conv2d(64, 64, 3, padding=1),
                                                                                nn.ReLU())]
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(64 * 64, 10))
    score = synflow(model, batch)
    assert math.isfinite(score) and score > float(torch.finfo(torch.float32).max)


def test_proxies_on_built_networks(digits):
    nas_space = pytest.importorskip("nas.space")
    build = pytest.importorskip("nas.blocks.model")
    x = proxy_batch(digits.resized(16).train, 32)
    for arch in ("in_r16_c1-stem_c16_k3_s1_w8_a8-ir_r1_k3_s2_e3_c24_w4_a4_hs-shift_r1_k3_s1_e3_c24_w8_a8"
                 "-head_c64_w8_a8-fc_n10_w8_a8",
                 "in_r16_c1-stem_c16_k3_s1_w8_a8-grouped_r2_k3_s1_g1_c32_w1_a1-head_c0_w8_a8-fc_n10_w8_a8"):
        torch.manual_seed(0)
        model = build.build_model(nas_space.decode(arch))
        assert math.isfinite(naswot(model, x)) and math.isfinite(synflow(model, x)) and synflow(model, x) > 0


# --- the benchmark's scoring (figures are printed by `nas bench proxies`) ---------------------

def test_correlations_rank_proxies_and_baselines():
    accs = [0.5, 0.6, 0.7, 0.8, math.nan]
    scores = [ArchScore(f"a{i}", {"naswot": float(i), "synflow": -float(i)}, {"naswot": 1.0, "synflow": 2.0},
                        {"params": [1, 3, 2, 4, 5][i]}, accuracy=a) for i, a in enumerate(accs)]
    c = correlations(scores)
    assert c["naswot"]["spearman"] == pytest.approx(1.0) and c["synflow"]["spearman"] == pytest.approx(-1.0)
    assert c["naswot"]["n"] == 4 and c["synflow"]["ms_median"] == 2.0  # the diverged arch is left out
    assert c["params"]["kind"] == "baseline" and c["params"]["spearman"] == pytest.approx(0.8)


def test_score_arch_scores_then_trains(digits):
    s = score_arch("relu_net", relu_net, digits, epochs=1, subset=300, batch_size=64)
    assert set(s.proxies) == {"naswot", "synflow"} and all(math.isfinite(v) for v in s.proxies.values())
    assert s.baselines["params"] == sum(p.numel() for p in relu_net().parameters())
    assert 0.0 <= s.accuracy <= 1.0 and not s.errors


def test_nas_bench_proxies_json(capsys):
    pytest.importorskip("nas.blocks.model")
    import json

    from nas.cli import main

    assert main(["bench", "proxies", "--n", "3", "--epochs", "1", "--subset", "100", "--val-subset", "50",
                 "--dataset", "digits", "--batch", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 3 and len(out["archs"]) == 3 and out["anchor_nb201"] == 0.82
    assert {"naswot", "synflow", "params", "macs", "weight_bytes"} <= set(out["correlations"])
    assert all(0.0 <= a["accuracy"] <= 1.0 for a in out["archs"])
