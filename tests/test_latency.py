"""Latency model and device profiles (`nas.cost.latency`, `nas calibrate`, `nas cost --measure`).

One real `nas calibrate --quick` run (module fixture, 1 thread, in a subprocess) fits the
profile the other tests use; its accuracy is a benchmark printed by `nas calibrate`, not
asserted here (timings on a shared machine are noisy).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nas.cli import main
from nas.cost import arch_cost, latency
from nas.errors import UsageError
from nas.space import decode

REPO = Path(__file__).resolve().parents[1]
ARCH = "in_r28_c1-stem_c16_k3_s1_w8_a8-ir_r1_k3_s1_e3_c16_w8_a8-grouped_r1_k3_s2_g4_c32_w4_a4-head_c0_w8_a8-fc_n10_w8_a8"
# one base network per block kind and bit regime; {c} = channels, {r} = repeats
FAMILIES = [
    "in_r28_c1-stem_c16_k3_s1_w8_a8-ir_r{r}_k3_s2_e3_c{c}_se0.25_w8_a8-head_c0_w8_a8-fc_n10_w8_a8",
    "in_r28_c1-stem_c16_k3_s1_w8_a8-shift_r{r}_k3_s1_e3_c{c}_w4_a4_hs-head_c0_w8_a8-fc_n10_w8_a8",
    "in_r28_c1-stem_c16_k3_s1_w8_a8-grouped_r{r}_k5_s2_g4_c{c}_w2_a2-head_c64_w8_a8-fc_n10_w8_a8",
    "in_r28_c1-stem_c16_k3_s1_w8_a8-dense_r{r}_k3_s2_gr12_c{c}_w32_a32-head_c0_w8_a8-fc_n10_w8_a8",
    "in_r28_c1-stem_c32_k3_s1_w8_a8_noact-ir_r{r}_k3_s1_e1_c{c}_w1_a1-head_c0_w8_a8-fc_n10_w8_a8",
    "in_r28_c1-stem_c32_k3_s1_w8_a8_noact-grouped_r{r}_k3_s2_g1_c{c}_w1_a1-head_c0_w8_a8-fc_n10_w8_a8",
    "in_r28_c1-stem_c16_k3_s1_w8_a8-grouped_r{r}_k3_s2_g4_c{c}_w1_a1-head_c0_w8_a8-fc_n10_w8_a8",
]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """(profile path, the JSON `nas calibrate --quick` printed)."""
    path = tmp_path_factory.mktemp("profile") / "quick.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(latency.ENV_PROFILE, None)
    out = subprocess.run([sys.executable, "-m", "nas.cli", "calibrate", "--quick", "--json", "--threads", "1",
                          "--no-progress", "-o", str(path)], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return path, json.loads(out.stdout)


@pytest.fixture(scope="module")
def profile(quick):
    return latency.load_profile(quick[0])


def test_calibrate_reports_heldout_and_baseline(quick):
    path, report = quick
    assert report["profile"] == str(path)
    assert report["machine"]["threads"] == 1 and report["machine"]["cores"] >= 1
    for key in ("heldout", "fit"):
        assert report[key]["networks"] > 10
        assert 0 <= report[key]["within_10pct"] <= 1
    assert -1 <= report["heldout"]["spearman"] <= 1
    assert set(report["heldout"]["per_space"]) == {"default", "mcu", "binary"}
    base = report["baseline_macs"]
    assert 0 <= base["heldout"]["within_10pct"] <= 1 and base["b_ms_per_mmac"] is not None
    assert report["noise"]["median_iqr_over_median"] >= 0
    nets = report["heldout_networks"]
    assert len(nets) == report["heldout"]["networks"] and all(n["measured_ms"] > 0 for n in nets)
    assert report["unfitted_terms"] == [] or set(report["unfitted_terms"]) <= set(latency.TERMS)


def test_profile_round_trips(profile, tmp_path):
    again = latency.load_profile(latency.save_profile(profile, tmp_path / "sub" / "p.json"))
    assert again == profile
    assert again.coefs == profile.coefs and again.machine == profile.machine and again.stats == profile.stats
    assert json.loads((tmp_path / "sub" / "p.json").read_text())["format_version"] == latency.FORMAT_VERSION


def test_profile_records_machine_and_fit(profile):
    m = profile.machine
    for key in ("host", "cpu_model", "cores", "device", "threads", "torch", "kernels"):
        assert key in m
    assert m["device"] == "cpu"
    assert set(profile.coefs) == set(latency.TERMS)
    assert all(c >= 0 for coefs in profile.coefs.values() for c in coefs)
    assert profile.created and profile.protocol["statistic"] == "median"


def _write(tmp_path, text):
    p = tmp_path / "profile.json"
    p.write_text(text)
    return p


def test_corrupt_profile_says_which_file_and_to_recalibrate(tmp_path):
    p = _write(tmp_path, '{"format": "nas-device-profile", "format_version": 1, "mach')
    with pytest.raises(UsageError, match=r"not valid JSON") as e:
        latency.load_profile(p)
    assert str(p) in str(e.value) and "re-run `nas calibrate`" in str(e.value)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format_version=999), "format version 999"),
    (lambda d: d.update(format="something-else"), "not a nas device profile"),
    (lambda d: d["model"]["terms"].pop("conv.pw"), "conv.pw"),
    (lambda d: d["model"]["terms"]["bn"].update(coef=[1.0]), "bn"),
    (lambda d: d["model"]["terms"]["bn"].update(coef=[1.0, -2.0]), "bn"),
])
def test_foreign_or_damaged_profile_is_refused(profile, tmp_path, change, message):
    d = profile.to_dict()
    change(d)
    p = _write(tmp_path, json.dumps(d))
    with pytest.raises(UsageError, match=message) as e:
        latency.load_profile(p)
    assert str(p) in str(e.value) and "re-run `nas calibrate`" in str(e.value)


def test_missing_profile(tmp_path, monkeypatch):
    missing = tmp_path / "none.json"
    with pytest.raises(UsageError, match=r"no device profile .*run `nas calibrate`"):
        latency.require_profile(missing)
    assert latency.latency_ms(decode(ARCH), path=missing) is None
    monkeypatch.setenv(latency.ENV_PROFILE, str(missing))
    assert latency.default_profile_path() == missing
    assert latency.latency_ms(decode(ARCH)) is None
    with pytest.raises(UsageError, match=r"NAS_PROFILE"):
        latency.require_profile()


def test_default_location(monkeypatch, tmp_path):
    monkeypatch.delenv(latency.ENV_PROFILE, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    p = latency.default_profile_path(threads=2)
    assert p == tmp_path / "nas" / "profiles" / f"{latency.host_name()}-2t.json"


def _predict(profile, text):
    return latency.predict_latency_ms(decode(text), profile)


@pytest.mark.parametrize("family", FAMILIES)
def test_predictions_are_monotone(profile, family):
    """More channels, more repeats, a larger input: never faster."""
    chs = [64, 96, 128, 192]
    by_chs = [_predict(profile, family.format(c=c, r=1)) for c in chs]
    assert all(a <= b for a, b in zip(by_chs, by_chs[1:])), by_chs
    by_rep = [_predict(profile, family.format(c=64, r=r)) for r in (1, 2, 3)]
    assert all(a <= b for a, b in zip(by_rep, by_rep[1:])), by_rep
    small, large = (_predict(profile, family.format(c=64, r=1).replace("in_r28", f"in_r{r}")) for r in (28, 40))
    assert small <= large
    assert by_chs[0] > 0


def test_per_layer_predictions_add_up(profile):
    arch = decode(ARCH)
    pred = latency.predict(arch, profile)
    cost = arch_cost(arch)
    assert [p.name for p in pred.layers] == [layer.name for layer in cost.layers]
    assert pred.total_ms == pytest.approx(pred.network_ms + sum(p.ms for p in pred.layers))
    assert latency.predict_latency_ms(arch, profile) == pytest.approx(pred.total_ms)
    assert latency.latency_ms(arch, path=profile.path) == pytest.approx(pred.total_ms)
    assert all(p.ms >= 0 for p in pred.layers)


def test_cost_cli_shows_predicted_and_measured_latency(quick, profile, monkeypatch, capsys):
    monkeypatch.setenv(latency.ENV_PROFILE, str(quick[0]))
    assert main(["cost", "--arch", ARCH, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["latency_ms"] == pytest.approx(latency.predict_latency_ms(decode(ARCH), profile))
    assert "latency_measured_ms" not in out
    assert all("latency_ms" in layer for layer in out["layers"])
    assert main(["cost", "--arch", ARCH, "--json", "--measure"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["latency_measured_ms"] > 0 and out["latency_ms"] > 0
    m = out["latency_measured"]
    assert m["threads"] == 1 and m["q1_ms"] <= out["latency_measured_ms"] <= m["q3_ms"] and m["repeats"] >= 15
    assert main(["cost", "--arch", ARCH]) == 0
    assert "latency_ms" in capsys.readouterr().out


def test_cost_cli_without_profile(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(latency.ENV_PROFILE, str(tmp_path / "none.json"))
    assert main(["cost", "--arch", ARCH, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["latency_ms"] is None and any("nas calibrate" in n for n in out["notes"])


def test_calibrate_bad_options(capsys):
    assert main(["calibrate", "--threads", "0"]) == 2
    assert "--threads '0'" in capsys.readouterr().err
    import torch
    if not torch.cuda.is_available():
        assert main(["calibrate", "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
    assert main(["calibrate", "--device", "tpu"]) == 2


def test_search_target_latency_rejects_slow_candidates_before_training(quick, profile, tmp_path, monkeypatch,
                                                                       capsys):
    """`nas search --target-latency`: every trial carries its predicted latency and the matching
    constraint value; candidates predicted too slow are recorded and never trained; the final
    record shows predicted next to measured latency."""
    import optuna
    from optuna.trial import TrialState

    from nas.search.storage import open_storage
    from nas.space import load_space, random_archs

    monkeypatch.setenv(latency.ENV_PROFILE, str(quick[0]))
    (tmp_path / "search_spaces").symlink_to(REPO / "search_spaces")
    monkeypatch.chdir(tmp_path)
    # a budget in the middle of the space's predicted latencies, so that both sides occur
    space = load_space(REPO / "search_spaces" / "mcu.yaml")
    preds = sorted(latency.predict_latency_ms(a, profile) for a in random_archs(space, 40, seed=5, in_chs=1, num_classes=10))
    limit_ms = preds[len(preds) // 2]
    storage = f"journal:{tmp_path / 'lat.journal'}"
    rc = main(["search", "--target-latency", f"{limit_ms:.4f}ms", "--trials", "6", "--study", "lat",
               "--storage", storage, "--json", "--dataset", "fashion-mnist", "--space", "search_spaces/mcu.yaml",
               "--subset", "300", "--epochs", "1", "--final-epochs", "1", "--final-subset", "300",
               "--no-progress", "--seed", "5"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    limit = float(f"{limit_ms:.4f}")
    study = optuna.load_study(study_name="lat", storage=open_storage(storage))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete
    for t in complete:
        predicted = t.user_attrs["costs"]["latency_ms"]
        assert predicted == pytest.approx(latency.predict_latency_ms(decode(t.user_attrs["arch"]), profile))
        assert t.user_attrs["constraints"] == pytest.approx([(predicted - limit) / limit])
        assert t.user_attrs["feasible"] == (predicted <= limit)
        assert t.user_attrs["trained"] == (predicted <= limit)
    final = summary["final"][0]
    assert final["latency_ms"] <= limit and final["latency_measured_ms"] > 0


@pytest.mark.parametrize("noise, warned", [(0.05, False), (0.25, True)])
def test_calibrate_report_warns_when_timings_were_noisy(profile, noise, warned):
    import copy
    import dataclasses

    from nas.measure.calibrate import format_report

    stats = copy.deepcopy(profile.stats)
    stats["noise"]["median_iqr_over_median"] = noise
    text = format_report(dataclasses.replace(profile, stats=stats), "p.json")
    assert ("timings were noisy" in text) == warned


def test_resume_under_another_device_profile_is_refused_in_one_line(quick, profile, tmp_path, monkeypatch, capsys):
    """The study records the digest of the profile that priced it; `nas search` resuming it under
    another profile (or none) exits 2 before any work, naming both and the way on."""
    import dataclasses

    import optuna

    from nas.search.config import build_config
    from nas.search.records import ProfileStamp, StudyRecord, write_identity, write_profile
    from nas.search.runner import _tie_study_to_config
    from nas.search.storage import open_storage

    monkeypatch.delenv(latency.ENV_PROFILE, raising=False)
    (tmp_path / "search_spaces").symlink_to(REPO / "search_spaces")
    monkeypatch.chdir(tmp_path)
    other = dataclasses.replace(profile, coefs={**profile.coefs, "network": (profile.coefs["network"][0] + 0.5,)})
    other_path = latency.save_profile(other, tmp_path / "other.json")
    assert latency.profile_digest(other) != latency.profile_digest(profile)
    assert latency.profile_digest(latency.load_profile(quick[0])) == latency.profile_digest(profile)  # content only

    options = {"study": "p", "dataset": "digits", "space": "search_spaces/mcu.yaml", "target_mem": "40KB"}
    storage = f"journal:{tmp_path / 'p.journal'}"
    study = optuna.create_study(study_name="p", storage=open_storage(storage), direction="maximize")
    config = build_config({**options, "storage": storage})
    write_identity(study, config)  # as `nas search --profile quick.json` leaves it
    write_profile(study, ProfileStamp.of(profile))
    assert StudyRecord.of(study).profile.digest == latency.profile_digest(profile)
    _tie_study_to_config(study, config, latency.load_profile(quick[0]))  # the same profile: accepted

    cli = ["search", "--study", "p", "--storage", storage, "--dataset", "digits", "--space", "search_spaces/mcu.yaml",
           "--target-mem", "40KB", "--trials", "1", "--subset", "300", "--no-progress"]
    for given, now in ((str(other_path), latency.profile_digest(other)), ("none", "no device profile")):
        assert main([*cli, "--profile", given]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert latency.profile_digest(profile) in err and now in err and f"--profile {quick[0]}" in err, err
    assert len(optuna.load_study(study_name="p", storage=open_storage(storage)).trials) == 0  # no work done
