"""Latency model and device profiles (`nas.cost.latency`, `nas calibrate`, `nas cost --measure`).

One real `nas calibrate --quick` run (module fixture, 1 thread, in a subprocess) fits the
profile the other tests use; its accuracy is a benchmark printed by `nas calibrate`, not
asserted here (timings on a shared machine are noisy). The fitter and the pricing are tested
on synthetic timing rows (a known model, so the test does not depend on timing luck); the
path the latency model prices each layer on is checked against the packed model itself.
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
    per_bits = report["heldout"]["per_bits"]  # per bit width: the weight bits carrying most MACs
    assert per_bits and set(per_bits) <= {f"w{b}" for b in (1, 2, 4, 8, 16, 32)}
    assert sum(a["networks"] for a in per_bits.values()) == report["heldout"]["networks"]
    assert all(0 <= a["within_10pct"] <= 1 for a in per_bits.values())
    assert report["machine"]["integer_kernels"] in (None, "avx512vnni", "avxvnni", "avx2", "portable") or \
        isinstance(report["machine"]["integer_kernels"], str)
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
    (lambda d: d["model"]["terms"]["act.relu"].update(coef=[1.0]), "act.relu"),
    (lambda d: d["model"]["terms"]["int.kxk"].update(coef=[1.0, -2.0, 0.0, 0.0, 0.0]), "int.kxk"),
    (lambda d: d["model"]["terms"].update(bn={"features": ["1", "kelems"], "coef": [0.0, 0.0]}), "bn"),
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


def test_previous_format_version_is_refused_with_the_recalibrate_hint(profile, tmp_path):
    """Version 2 priced the fake-quant model; its coefficients mean nothing for the packed one
    (version 3 had no term for the byte path's split of 8-bit weights, version 4 none for 8-bit
    weights on AVX2's int16 path)."""
    assert latency.FORMAT_VERSION == 5
    d = profile.to_dict()
    d["format_version"] = 2
    p = _write(tmp_path, json.dumps(d))
    with pytest.raises(UsageError, match=r"format version 2 is not supported .*re-run `nas calibrate`"):
        latency.load_profile(p)
    os.environ[latency.ENV_PROFILE] = str(p)
    try:  # a command pricing with it exits 2 with that line, no traceback
        assert main(["cost", "--arch", ARCH, "--json"]) == 2
    finally:
        del os.environ[latency.ENV_PROFILE]


def test_calibrate_report_prints_per_bit_width(profile):
    from nas.measure.calibrate import format_report

    text = format_report(profile, "p.json")
    assert "per bit width" in text
    for name in profile.stats["heldout"]["per_bits"]:
        assert f"    {name} " in text


def test_timed_network_is_the_packed_model():
    """What calibrate and `nas cost --measure` time is what `nas infer` runs."""
    from nas.export.packed import PackedIntegerConv2d
    from nas.measure.timing import build_for_timing

    model = build_for_timing(decode(ARCH))
    assert {e["path"] for e in model.layer_paths} == {"integer"}
    assert any(isinstance(m, PackedIntegerConv2d) for m in model.modules())


# --- the path each layer is priced on == the path the packed model runs it on -----------------

KIND_BASES = {
    "ir": "in_r16_c1-stem_c16_k3_s1_w8_a8-ir_r2_k3_s1_e3_c16_se0.25_{b}-ir_r1_k3_s2_e1_c24_{b}-head_c32_w8_a8-fc_n10_w8_a8",
    "shift": "in_r16_c1-stem_c16_k3_s1_w8_a8-shift_r2_k3_s1_e3_c16_{b}_hs-shift_r1_k3_s2_e2_c24_{b}-head_c0_w8_a8-fc_n10_w8_a8",
    "grouped": "in_r16_c1-stem_c16_k3_s1_w8_a8-grouped_r2_k3_s1_g4_c16_{b}-grouped_r1_k3_s2_g1_c32_{b}-head_c0_w8_a8-fc_n10_w8_a8",
    "dense": "in_r16_c1-stem_c16_k3_s1_w8_a8-dense_r2_k3_s2_gr8_c24_{b}-head_c0_w4_a4-fc_n10_w8_a8",
}
BIT_PAIRS = ((32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1), (8, 32), (16, 8), (4, 8), (2, 8), (1, 8), (8, 2))


def _agreement_mismatches(arch_string):
    from nas.blocks import module_name
    from nas.cost.graph import expand
    from nas.export.bench import packed_of

    arch = decode(arch_string)
    paths = {e["name"]: e for e in packed_of(arch_string).layer_paths}
    plan = latency.deployment(expand(arch))
    priced = {module_name(arch, name): how for name, how in plan.items() if how.path is not None}
    assert set(priced) == set(paths), arch_string
    bad = []
    for name, how in priced.items():
        e = paths[name]
        got = (e["path"], "input" in e, "output" in e, "residual" in e)
        want = (how.path, how.codes_in, how.codes_out, how.residual)
        if got != want:
            bad.append((name, "packed model", got, "latency model", want))
    return bad


@pytest.mark.parametrize("kind", list(KIND_BASES))
def test_priced_path_is_the_converted_path_on_every_kind_and_bits(kind):
    """Every kind x (weight, input) bits: the path (binary / integer / float), integer-to-integer
    chaining and the fused residual the latency model prices are what `nas.export.convert` builds."""
    seen = set()
    for w, a in BIT_PAIRS:
        arch = KIND_BASES[kind].format(b=f"w{w}_a{a}")
        bad = _agreement_mismatches(arch.replace("_se0.25", "") if w == 1 else arch)
        assert not bad, bad
        seen.add(w)
    assert seen == {1, 2, 4, 8, 16, 32}


def test_priced_path_is_the_converted_path_on_sampled_networks():
    from nas.space import encode, load_space, random_archs

    for space in ("default", "mcu", "binary", "dilated"):
        for arch in random_archs(load_space(REPO / "search_spaces" / f"{space}.yaml"), 3, seed=11):
            bad = _agreement_mismatches(encode(arch))
            assert not bad, (space, bad)


def test_convert_asks_the_one_integer_predicate():
    """convert.py's integer row declines exactly when `kernel_path.integer_refusal` says so, with its words."""
    from nas.cost.kernel_path import INT_BITS, MAX_K, integer_refusal, layer_path
    from nas.export import convert
    from nas.export.payload import LayerGeometry
    from nas.quant import QuantConv2d, QuantLinear
    from nas.quant import integer

    assert integer.INT_BITS is INT_BITS and integer.MAX_K == MAX_K
    assert layer_path(1, 1, 64) == layer_path(1, 8, 64) == "binary"  # 1-bit weights: the binary row
    for w in (2, 4, 8, 16, 32):
        for a in (2, 4, 8, 16, 32):
            for cin_g, k, dil in ((8, 3, 1), (8, 3, 2), (MAX_K // 9 + 1, 3, 1), (16, 1, 1)):
                geom = LayerGeometry("x", "conv", w, a, 4, cin_g, k, k)
                m = QuantConv2d(cin_g, 4, k, padding=k // 2 * dil, dilation=dil, w_bits=w, a_bits=a)
                row, why = convert.conversion_for(geom, m)
                want = integer_refusal(w, a, cin_g * k * k, dil)
                assert (row.path == "integer") == (want is None) == (layer_path(w, a, cin_g * k * k, dil) == "integer")
                assert why == want
            row, _ = convert.conversion_for(LayerGeometry("fc", "linear", w, a, 4, 8), QuantLinear(8, 4, w_bits=w, a_bits=a))
            assert (row.path == "integer") == (integer_refusal(w, a, 8) is None)


# --- fitting on synthetic timing rows (tests our fitter and pricing, not this machine) ----------

TWINS = ["in_r28_c1-stem_c16_k3_s1_w{b}_a{b}-ir_r2_k3_s2_e6_c24_w{b}_a{b}-ir_r2_k5_s2_e6_c40_w{b}_a{b}"
         "-grouped_r2_k3_s1_g4_c40_w{b}_a{b}-head_c128_w{b}_a{b}-fc_n10_w{b}_a{b}"]


def _synthetic_profile(truth: dict, archs, kernels=True):
    """Fit `nas calibrate`'s NNLS on rows timed by a known model `truth` (term -> coefs), with a
    deterministic +-3% wobble standing in for timing noise."""
    import dataclasses

    from nas.measure.calibrate import fit_nnls

    coef_vec = [truth.get(t, (0.0,) * len(f))[j] for t, f in latency.TERMS.items() for j in range(len(f))]
    rows = [latency.feature_row(a, kernels) for a in archs]
    y = [sum(c * v for c, v in zip(coef_vec, r)) * (1 + 0.03 * ((i * 7919) % 7 - 3) / 3) for i, r in enumerate(rows)]
    coefs, _ = fit_nnls(rows, y)
    it = iter(coefs)
    terms = {t: tuple(next(it) for _ in f) for t, f in latency.TERMS.items()}
    base = latency.Profile(coefs={t: (0.0,) * len(f) for t, f in latency.TERMS.items()},
                           machine={"threads": 1, "kernels": "avx2" if kernels else None})
    return dataclasses.replace(base, coefs=terms), coef_vec


def _truth(int_ms_per_mmac: float) -> dict:
    """A device where an integer MAC costs `int_ms_per_mmac` and a float MAC 0.01 ms per million."""
    t = {"network": (0.05,)}
    for cls in ("pw", "kxk", "dw", "grouped"):
        t[f"conv.{cls}"] = (0.01, 0.01, 0.0005, 0.0005)
        t[f"int.{cls}"] = (0.004, int_ms_per_mmac, 0.0002, 0.0002, 0.0001)
    t["conv.vec"] = (0.008, 0.01)
    t["linear"] = (0.008, 0.01)
    t["int.linear"] = (0.004, int_ms_per_mmac, 0.0001)
    t["int.quant"] = (0.006, 0.001)
    t["int.out.float"] = (0.002, 0.0005)
    t["int.out.codes"] = (0.0002,)
    t["int.residual"] = (0.002, 0.0004)
    t["int.hswish"] = (0.0003,)
    t["aq.pact"] = (0.01, 0.002)
    t["aq.half"] = (0.01, 0.002)
    for a in ("relu", "hswish", "sigmoid"):
        t[f"act.{a}"] = (0.004, 0.0005)
    for name in ("add", "mul", "concat", "avgpool", "pool.global", "pool.se", "shuffle"):
        t[name] = (0.004, 0.0005)
    t["shift"] = (0.01, 0.001, 0.0005)
    t["shift.codes"] = (0.002, 0.0002, 0.0001)
    t["shuffle.codes"] = (0.002, 0.0001)
    t["int.split"] = (0.0002, 0.0001)
    t["int.w8"] = (0.001,)
    return t


def _training_archs():
    from nas.space import load_space, random_archs

    archs = []
    for space in ("default", "mcu"):
        archs += random_archs(load_space(REPO / "search_spaces" / f"{space}.yaml"), 60, seed=3)
    return archs


@pytest.mark.parametrize("int_ms_per_mmac, int8_faster", [(0.003, True), (0.2, False)])
def test_profile_fitted_on_integer_path_timings_orders_8bit_and_32bit_twins_as_measured(int_ms_per_mmac,
                                                                                          int8_faster):
    """Fit on rows a known device produced: when its integer kernels are faster than float, the
    8-bit twin is priced below its 32-bit twin; when slower, above (the fit follows the timings)."""
    archs = _training_archs()
    profile, coef_vec = _synthetic_profile(_truth(int_ms_per_mmac), archs)
    for twin in TWINS:
        a8, a32 = decode(twin.format(b=8)), decode(twin.format(b=32))
        measured = {b: sum(c * v for c, v in zip(coef_vec, latency.feature_row(a, True))) for b, a in ((8, a8), (32, a32))}
        assert (measured[8] < measured[32]) == int8_faster  # the synthetic device is what it says
        p8, p32 = latency.predict_latency_ms(a8, profile), latency.predict_latency_ms(a32, profile)
        assert (p8 < p32) == int8_faster, (p8, p32)
        assert p8 == pytest.approx(measured[8], rel=0.10) and p32 == pytest.approx(measured[32], rel=0.10)


def test_integer_layers_are_priced_on_integer_terms_only():
    """An 8-bit layer with an 8-bit input: kernel call, input quantize or codes, epilogue output;
    no float conv, BatchNorm, weight quantizer or separate activation."""
    from nas.cost.graph import expand

    arch = decode(ARCH)
    plan = latency.deployment(expand(arch))
    cost = arch_cost(arch)
    records = {layer.name: layer for layer in cost.layers}
    for layer in cost.layers:
        if layer.op not in ("conv", "linear"):
            continue
        terms = [t for t, _ in latency.op_terms(layer, True, records, plan[layer.name])]
        assert terms[0].startswith("int."), (layer.name, terms)
        assert all(t.startswith("int.") for t in terms), (layer.name, terms)
        assert ("int.quant" in terms) != plan[layer.name].codes_in
        assert ("int.out.codes" in terms) == plan[layer.name].codes_out


def test_bench_infer_order_check():
    """`nas bench infer`'s "orders the three as measured": pairwise, near-ties (int8 vs mixed
    2/4/8 run the same kernels) agree with near-ties, anything else must have the same sign."""
    from nas.export.bench import orders_as_measured

    pred = {"fp32": 4.7, "int8": 3.5, "mixed": 3.5}
    assert orders_as_measured(pred, {"fp32": 2.6, "int8": 2.119, "mixed": 2.118})
    assert not orders_as_measured(pred, {"fp32": 2.0, "int8": 2.119, "mixed": 2.118})  # fp32 measured fastest
    assert not orders_as_measured({**pred, "mixed": 3.0}, {"fp32": 2.6, "int8": 2.119, "mixed": 2.118})
    assert orders_as_measured({**pred, "mixed": 3.0}, {"fp32": 2.6, "int8": 2.119, "mixed": 1.8})


def test_bench_infer_prints_the_prediction_beside_the_measurement(quick, profile, tmp_path, capsys):
    base = "in_r28_c1-stem_c8_k3_s1_w8_a8-ir_r1_k3_s2_e2_c16_w8_a8-grouped_r1_k3_s1_g2_c16_w8_a8-head_c0_w8_a8-fc_n10_w8_a8"
    cli = ["bench", "infer", "--arch", base, "--mixed", "2,4", "--repeats", "2", "--rounds", "1", "--json"]
    assert main([*cli, "--profile", str(quick[0])]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["variant"] for r in rows] == ["fp32", "int8", "mixed"]
    for r in rows:
        assert r["predicted_ms"] == pytest.approx(latency.predict_latency_ms(decode(r["arch"]), profile), rel=1e-3)
        assert isinstance(r["order_as_measured"], bool)
    assert main([*cli, "--profile", str(tmp_path / "none.json")]) == 2
    assert "none.json" in capsys.readouterr().err
