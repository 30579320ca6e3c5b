"""The trainer on real data (scikit-learn digits, 8x8): it learns, it is seeded, its hooks run
when documented, divergence is detected, distillation follows Hinton's formula, and the
five metrics are recorded. Figures for speed live in `nas bench train`, not here."""

import json
import math
import time
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nas.data import load_dataset
from nas.train import TrainingDiverged, distillation_loss, evaluate, measure_inference_ms, soft_target_loss, train
from nas.train.bench_train import compare
from nas.train import memory
from nas.train.memory import PeakRSS
from nas.train.trainer import wants_channels_last


def small_cnn(width: int = 16, depthwise: bool = True) -> nn.Module:
    """A compact CNN for 8x8 digits: conv, (depthwise) strided conv, pointwise, linear over 4x4."""
    groups = width if depthwise else 1
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1, groups=groups, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.Flatten(), nn.Linear(2 * width * 16, 10))  # digits are 8x8: keep the 4x4 layout


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread per module


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _fresh(seed=0, **kw):
    torch.manual_seed(seed)
    return small_cnn(**kw)


def test_trains_well_above_chance_and_records_the_five_metrics(digits):
    model = _fresh()
    r = train(model, digits, epochs=4, progress=False, weight_bytes=1234)
    assert r.accuracy > 0.9  # chance is 0.1
    assert r.accuracy == pytest.approx(evaluate(model, digits.val))
    assert r.weight_bytes == 1234 and r.train_time_s > 0 and r.infer_ms_per_image > 0
    assert r.peak_train_mem_bytes >= 0 and "VmHWM" in r.peak_mem_method
    assert r.images_per_s > 0 and r.epochs_completed == 4 and r.train_images == len(digits.train)
    assert r.steps == 4 * math.ceil(len(digits.train) / 64) and r.stopped_early is None
    assert r.channels_last  # depthwise conv present
    assert all(p.is_contiguous() for p in model.parameters())  # handed back in the default format
    json.dumps(r.to_dict())  # every field is JSON-serialisable for --json


def test_same_seed_same_weights_other_seed_other_weights(digits):
    runs = []
    for seed in (3, 3, 4):
        model = _fresh()
        r = train(model, digits, epochs=1, seed=seed, progress=False, measure_inference=False)
        runs.append((r.accuracy, r.train_loss, model.state_dict()))
    (a1, l1, s1), (a2, l2, s2), (_, l3, s3) = runs
    assert (a1, l1) == (a2, l2) and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert l1 != l3 and not all(torch.equal(s1[k], s3[k]) for k in s1)


def test_global_rng_state_is_left_alone(digits):
    model = _fresh()
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    train(model, digits, epochs=1, subset=100, progress=False, measure_inference=False)
    torch.testing.assert_close(torch.rand(3), expected, atol=0, rtol=0)


def test_on_epoch_end_runs_after_each_completed_epoch_and_can_stop_training(digits):
    calls = []
    r = train(_fresh(), digits, epochs=3, progress=False, measure_inference=False,
              on_epoch_end=lambda epoch, acc: calls.append((epoch, acc)))
    assert [e for e, _ in calls] == [1, 2, 3] and all(0.0 <= a <= 1.0 for _, a in calls)
    assert r.val_history == calls and r.accuracy == calls[-1][1]

    class Pruned(Exception):
        pass

    def prune_at_2(epoch, acc):
        calls.append(epoch)
        if epoch == 2:
            raise Pruned

    calls.clear()
    model = _fresh()
    with pytest.raises(Pruned):
        train(model, digits, epochs=5, progress=False, on_epoch_end=prune_at_2)
    assert calls == [1, 2] and all(p.is_contiguous() for p in model.parameters())


def test_nan_loss_raises_training_diverged(digits):
    with pytest.raises(TrainingDiverged) as e:
        train(_fresh(), digits, epochs=2, lr=float("inf"), progress=False)
    assert e.value.epoch == 1 and e.value.step >= 1 and not math.isfinite(e.value.loss)


def test_max_seconds_stops_after_the_step_that_crosses_it(digits):
    calls = []
    r = train(_fresh(), digits, epochs=3, max_seconds=0.0, progress=False, measure_inference=False,
              on_epoch_end=lambda e, a: calls.append(e))
    assert r.stopped_early == "max_seconds" and r.steps == 1 and calls == []
    assert 0 < r.epochs_completed < 1 and 0.0 <= r.accuracy <= 1.0


def test_subsets_and_sgd(digits):
    r = train(_fresh(), digits, epochs=2, subset=200, val_subset=100, optimizer="sgd", progress=False,
              measure_inference=False)
    assert r.train_images == 200 and r.val_images == 100 and r.optimizer == "sgd" and r.lr == 0.1
    assert r.accuracy > 0.6


def test_generic_torch_datasets_work_too(digits):
    x, y = digits.train.batch(torch.arange(len(digits.train)))
    xv, yv = digits.val.batch(torch.arange(len(digits.val)))
    data = types.SimpleNamespace(train=torch.utils.data.TensorDataset(x, y),
                                 val=torch.utils.data.TensorDataset(xv, yv))
    r = train(_fresh(), data, epochs=3, progress=False, measure_inference=False)
    assert r.accuracy > 0.85


def test_channels_last_rule():
    assert wants_channels_last(small_cnn(depthwise=True))
    assert not wants_channels_last(small_cnn(depthwise=False))


def test_evaluate_restores_mode_and_inference_time_is_positive(digits):
    model = _fresh().train()
    evaluate(model, digits.val)
    assert model.training
    x, _ = digits.val.batch(torch.arange(4))
    assert measure_inference_ms(model, x[:1], repeats=5) > 0
    assert model.training


def _hold_200mb() -> None:
    block = torch.ones(50_000_000)  # 200 MB, touched
    time.sleep(0.05)  # held as a training step holds its activations: longer than one sample
    del block


def test_peak_rss_sees_a_large_allocation():
    with PeakRSS() as m:
        _hold_200mb()
    assert m.method in ("vmhwm", "sampled"), m.method  # /proc exists here
    assert 190_000_000 <= m.peak_bytes < 400_000_000, m.peak_bytes


def test_peak_rss_samples_where_the_high_water_mark_cannot_be_reset(tmp_path, monkeypatch):
    # What a sandbox that refuses /proc/self/clear_refs leaves: the write fails.
    monkeypatch.setattr(memory, "_CLEAR_REFS", tmp_path / "missing" / "clear_refs")
    with PeakRSS() as m:
        _hold_200mb()
    assert m.method == "sampled"
    assert 190_000_000 <= m.peak_bytes < 400_000_000, m.peak_bytes


def _hold_many_small_blocks() -> None:
    blocks = [torch.ones(16_000) for _ in range(3000)]  # 64 KB each: glibc's heap, not mmap; ~190 MB
    time.sleep(0.05)
    del blocks


def test_peak_rss_counts_memory_the_allocator_kept_from_an_earlier_block():
    # The report once read 57.6 MB for a search's training and 139 KB for the final retraining
    # in the same process: the second reused heap pages the first had freed. Measured twice in a
    # row, the same work must read the same growth.
    with PeakRSS() as first:
        _hold_many_small_blocks()
    with PeakRSS() as second:
        _hold_many_small_blocks()
    assert first.peak_bytes > 150_000_000, first.peak_bytes
    assert second.peak_bytes > 0.8 * first.peak_bytes, (first.peak_bytes, second.peak_bytes)


# --- distillation ----------------------------------------------------------------------------

def test_soft_target_loss_matches_hinton_formula_and_gradient():
    s = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[1.0, 0.0, -1.0], [-0.5, 2.5, 0.0]], dtype=torch.float64)
    T = 3.0
    q_s, q_t = torch.softmax(s / T, 1), torch.softmax(t / T, 1)
    expected = (q_t * (q_t.log() - q_s.log())).sum(1).mean() * T * T
    loss = soft_target_loss(s, t, T)
    torch.testing.assert_close(loss, expected, atol=1e-12, rtol=0)
    loss.backward()
    # Hinton: dC/dz_i = (1/T)(q_i - p_i) per image; times T^2, averaged over the batch of 2
    torch.testing.assert_close(s.grad, T * (q_s - q_t).detach() / 2, atol=1e-12, rtol=0)
    assert float(soft_target_loss(t, t, T)) == pytest.approx(0.0, abs=1e-12)


def test_distillation_loss_mixes_soft_and_hard_terms():
    s = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    t = torch.tensor([[1.0, 0.0, -1.0], [-0.5, 2.5, 0.0]])
    y = torch.tensor([0, 1])
    hard = F.cross_entropy(s, y)
    torch.testing.assert_close(distillation_loss(s, t, y, 4.0, alpha=0.0), hard)
    torch.testing.assert_close(distillation_loss(s, t, y, 4.0, alpha=0.25),
                               0.25 * soft_target_loss(s, t, 4.0) + 0.75 * hard)
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(s, t, y, alpha=1.5)


def test_training_with_a_teacher(digits):
    teacher = _fresh(width=32)
    t = train(teacher, digits, epochs=4, progress=False, measure_inference=False)
    student = _fresh(seed=1, width=8)
    r = train(student, digits, epochs=4, teacher=teacher, progress=False, measure_inference=False)
    assert r.distilled and r.accuracy > 0.85 and t.accuracy > 0.9
    assert not teacher.training  # the teacher only ever runs in eval mode


# --- benchmark plumbing (figures are printed by `nas bench train`, not asserted) -------------

def test_throughput_comparison_reports_all_contenders(digits):
    info = compare(lambda: small_cnn(), digits, subset=512, repeats=1)
    assert set(info["images_per_s"]) == {"trainer", "plain_nchw", "plain_nhwc"}
    assert all(v > 0 for v in info["images_per_s"].values()) and info["subset"] == 512


# --- `nas train` -----------------------------------------------------------------------------

DIGITS_ARCH = "in_r8_c1-stem_c16_k3_s1_w8_a8-ir_r1_k3_s2_e3_c24_w8_a8-head_c0_w8_a8-fc_n10_w8_a8"


def test_nas_train_json(capsys):
    pytest.importorskip("nas.blocks.model")
    from nas.cli import main

    assert main(["train", "--arch", DIGITS_ARCH, "--dataset", "digits", "--epochs", "3", "--seed", "1",
                 "--test", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)  # stdout is exactly one JSON object
    assert out["arch"] == DIGITS_ARCH and out["epochs"] == 3 and out["seed"] == 1 and out["subset"] is None
    assert out["accuracy"] > 0.5 and 0.0 <= out["test_accuracy"] <= 1.0
    for key in ("train_time_s", "infer_ms_per_image", "peak_train_mem_bytes", "images_per_s", "weight_bytes",
                "params"):
        assert out[key] > 0 or (key == "peak_train_mem_bytes" and out[key] >= 0), key


def test_nas_train_with_teacher_and_human_output(capsys):
    pytest.importorskip("nas.blocks.model")
    from nas.cli import main

    teacher = DIGITS_ARCH.replace("c24", "c48")
    assert main(["train", "--arch", DIGITS_ARCH, "--dataset", "digits", "--subset", "500", "--teacher", teacher,
                 "--teacher-epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "accuracy (val)" in out and "peak training memory" in out and "teacher accuracy" in out


def test_nas_train_bad_input_is_one_line_exit_2(capsys):
    pytest.importorskip("nas.blocks.model")
    from nas.cli import main

    assert main(["train", "--arch", DIGITS_ARCH.replace("in_r8_c1", "in_r8_c3"), "--dataset", "digits"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "nas: error: --arch: in_chs=3 but digits images have 1 channel(s); expected in_r8_c1"
    assert main(["train", "--arch", DIGITS_ARCH, "--dataset", "digits", "--subset", "3"]) == 2
    assert "--subset 3: expected 10 to" in capsys.readouterr().err
    assert main(["train", "--arch", DIGITS_ARCH, "--dataset", "digits", "--epochs", "0"]) == 2


def test_nas_bench_train_json(capsys):
    pytest.importorskip("nas.blocks.model")
    from nas.cli import main

    assert main(["bench", "train", "--arch", DIGITS_ARCH, "--dataset", "digits", "--subset", "256",
                 "--repeats", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["arch"] == DIGITS_ARCH and out["subset"] == 256 and out["ratio_vs_best_plain"] > 0


def test_nas_train_caps_an_oversized_subset_with_a_note(capsys):
    pytest.importorskip("nas.blocks.model")
    from nas.cli import main

    assert main(["train", "--arch", DIGITS_ARCH, "--dataset", "digits", "--subset", "5000", "--val-subset", "900",
                 "--json", "--quiet"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    n_train, n_val = out["train_images"], out["val_images"]
    assert (n_train, n_val) == (1294, 144) and out["subset"] == 1294
    notes = [line for line in captured.err.splitlines() if line.startswith("nas: note:")]
    assert notes == [
        f"nas: note: --subset 5000: capped to {n_train}, the training split of digits",
        f"nas: note: --val-subset 900: capped to {n_val}, the validation split of digits"]
