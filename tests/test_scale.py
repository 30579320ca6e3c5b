"""`nas scale` and `nas.scale`: compound scaling's step 2 (the family B1..Bn at the largest phi
under each budget, by bisection) and step 1 (coefficients under the constraint at phi = 1)."""

import json
import math

import pytest

from nas.cli import main
from nas.cost import arch_cost
from nas.scale import Coster, coefficients_of, comparison, largest_phi, scale_family
from nas.scale.family import PHI_TOLERANCE, phi_cap
from nas.space import Scaling, decode, scale_arch
from nas.space.scaling import EFFICIENTNET, meets_constraint

# an mcu-space network (the first seed-7 sample of search_spaces/mcu.yaml, tests/test_pinned.py): 62956 B
BASE = ("in_r28_c1-stem_c8_k3_s1_w8_a8-grouped_r2_k3_s2_g2_c16_w8_a8-shift_r2_k3_s2_e2_c24_w8_a8"
        "-ir_r2_k3_s1_e4_c40_w8_a8-grouped_r2_k3_s2_g2_c64_w4_a4-head_c128_w8_a8-fc_n10_w8_a8")
TARGETS = [100e3, 500e3, 2e6]
# a digits-sized network (8 x 8 inputs) for the runs that train
SMALL = "in_r8_c1-stem_c8_k3_s1_w8_a8-ir_r1_k3_s1_e1_c8_w8_a8-ir_r1_k3_s2_e3_c16_w8_a8-head_c0_w8_a8-fc_n10_w8_a8"


def _cost(by, arch):
    return getattr(arch_cost(arch), by)


@pytest.mark.parametrize("by, targets", [("weight_bytes", TARGETS), ("macs", [5e6, 40e6, 300e6])])
def test_bisection_finds_the_largest_member_under_each_target(by, targets):
    base = decode(BASE)
    for target in targets:
        phi, capped = largest_phi(base, EFFICIENTNET, target, Coster(by))
        assert not capped and phi > 0
        assert _cost(by, scale_arch(base, Scaling(*EFFICIENTNET, phi))) <= target
        # just past the phi found, the member no longer fits: phi is the top of the last step under the target
        assert _cost(by, scale_arch(base, Scaling(*EFFICIENTNET, phi + PHI_TOLERANCE))) > target
        # and no phi on a fine grid beyond it fits either
        grid = [phi + PHI_TOLERANCE + 0.05 * i for i in range(30)]
        assert all(_cost(by, scale_arch(base, Scaling(*EFFICIENTNET, p))) > target for p in grid)


def test_family_costs_grow_monotonically_and_fit():
    base = decode(BASE)
    families = comparison(base, EFFICIENTNET, [70e3 + 60e3 * i for i in range(4)] + TARGETS, Coster("weight_bytes"))
    for name, members in families.items():
        assert [m.target for m in members] == sorted(m.target for m in members)
        costs = [m.costs["weight_bytes"] for m in members]
        assert costs == sorted(costs), name
        assert [m.scaling.phi for m in members] == sorted(m.scaling.phi for m in members), name
        for m in members:
            assert m.costs["weight_bytes"] <= m.target
            assert m.arch == scale_arch(base, m.scaling)  # the rounding rules of nas.space.scaling
    compound = families["compound"]
    assert compound[-1].costs["weight_bytes"] > 1.8e6  # the 2 MB member uses most of its budget (the last step is coarse)
    assert all(m.scaling.flops_factor == pytest.approx(1.92, abs=0.005) for m in compound)
    # resolution does not change weight_bytes: resolution-only scaling stops at the multiplier cap
    res = families["resolution"]
    assert all(m.capped and m.arch.resolution == 8 * 28 for m in res)
    assert phi_cap((1.0, 1.0, 2.0), 8.0) == pytest.approx(3.0)


def test_a_member_follows_the_seeds_rounding_rules():
    base = decode(BASE)
    m = scale_family(base, EFFICIENTNET, [500e3], Coster("weight_bytes"))[0]
    d, w, r = m.scaling.depth, m.scaling.width, m.scaling.resolution
    assert d == pytest.approx(1.2 ** m.scaling.phi) and w == pytest.approx(1.1 ** m.scaling.phi)
    assert m.arch.resolution == round(28 * r)
    assert [b.repeats for b in m.arch.blocks] == [math.ceil(b.repeats * d) for b in base.blocks]
    from nas.space.spec import make_divisible
    assert [b.out_chs for b in m.arch.blocks] == [make_divisible(b.out_chs * w, math.lcm(8, b.groups))
                                                  for b in base.blocks]


def test_coefficient_candidates_meet_the_constraint_exactly():
    for a in [1.0 + 0.05 * i for i in range(21)]:
        for u in [0.05 * j for j in range(21)]:
            coeffs = coefficients_of(a, u, 2.0)
            assert min(coeffs) >= 1.0 and meets_constraint(*coeffs, 2.0, 0.005), coeffs


def test_scale_table_and_json(capsys):
    assert main(["scale", "--arch", BASE, "--targets", "2MB,100KB,500KB", "--json"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["coefficients"]["flops_factor"] == pytest.approx(1.92, abs=0.001)
    members = result["families"]["compound"]
    assert [m["target"] for m in members] == TARGETS  # ascending B1..B3
    for m in members:
        arch = decode(m["arch"])
        assert m["weight_bytes"] == arch_cost(arch).weight_bytes <= m["target"]
        assert arch == scale_arch(decode(BASE), Scaling(1.2, 1.1, 1.15, m["phi"]))
        assert m["depth_multiplier"] == pytest.approx(1.2 ** m["phi"])
    assert "bisecting phi for 3 targets" in err
    assert main(["scale", "--arch", BASE, "--targets", "100KB,500KB,2MB"]) == 0
    table = capsys.readouterr().out
    assert "compound scaling:" in table and "a^phi" in table and "B3" in table and "2 MB" in table


@pytest.mark.parametrize("argv, needle", [
    (["--targets", ""], "--targets '': empty"),
    (["--targets", "100KB,,2MB"], "an empty item"),
    (["--targets", "5XB"], "5XB"),
    (["--targets", "10KB,2MB"], "10 KB (10000 B) is below the base's weight_bytes 63 KB (62956 B)"),
    (["--targets", "1MB", "--coefficients", "1.5,1.3,1.2"], "alpha*beta^2*gamma^2 = 3.650; expected 2 within 5%"),
    (["--targets", "1MB", "--coefficients", "1.2,1.1"], "expected three numbers alpha,beta,gamma"),
    (["--targets", "1MB", "--coefficients", "0.9,1.5,1.0"], "each from 1 to 4"),
    (["--targets", "5ms", "--by", "latency_ms"], None),
    (["--targets", "1MB", "--max-multiplier", "1"], "--max-multiplier 1.0: expected a number > 1"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, needle, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no device profile: --by latency_ms must say how to get one
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("NAS_PROFILE", raising=False)
    code = main(["scale", "--arch", BASE, *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("nas: error: "), err
    if needle is None:  # latency: depends on where the profile is looked for; it must name `nas calibrate`
        from nas.cost.latency import default_profile_path
        assert not default_profile_path().is_file()  # HOME and NAS_PROFILE point nowhere
        needle = "run `nas calibrate` first"
    assert needle in err, err


def test_scale_needs_one_base(capsys):
    assert main(["scale", "--targets", "1MB"]) == 2
    assert "expected --arch STR or --study S" in capsys.readouterr().err


def test_train_and_search_coefficients_on_digits(tmp_path, capsys):
    """Step 1 (two coefficient trials at phi = 1) then step 2 with --train: every member and the
    single-dimension families trained on real data (scikit-learn digits, a short recipe), figure written."""
    fig = tmp_path / "scale.html"
    code = main(["scale", "--arch", SMALL, "--targets", "4KB", "--search-coefficients", "--coefficient-trials", "2",
                 "--train", "--dataset", "digits", "--epochs", "1", "--subset", "300", "--max-multiplier", "1.5",
                 "-o", str(fig), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    search = result["coefficient_search"]
    assert len(search) == 2 and all(meets_constraint(s["alpha"], s["beta"], s["gamma"]) for s in search)
    best = max(search, key=lambda s: s["val_accuracy"])
    assert [result["coefficients"][k] for k in ("alpha", "beta", "gamma")] == [best[k] for k in ("alpha", "beta", "gamma")]
    assert set(result["families"]) == {"compound", "width", "depth", "resolution"}
    for members in result["families"].values():
        (m,) = members
        assert 0.0 <= m["test_accuracy"] <= 1.0 and m["weight_bytes"] <= 4000
    assert 0.0 <= result["base"]["test_accuracy"] <= 1.0
    html = fig.read_text()
    assert "compound scaling" in html and "width scaling" in html and "resolution scaling" in html
    lines = [line for line in err.splitlines() if line.startswith("nas scale: [")]
    assert lines and all("\r" not in line for line in err.splitlines())  # progress readable in a pipe
