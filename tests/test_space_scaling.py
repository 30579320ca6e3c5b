"""Compound scaling in search spaces (survey 000 ch. 3 sec. 2-6): the space's constraint
alpha * beta^2 * gamma^2 ~ target holds for every sample; a space that cannot meet it is one
line with file:line at load time; four free multipliers only with `mode: free`."""

from pathlib import Path

import optuna
import pytest

from nas.cli import main
from nas.errors import UsageError
from nas.space import load_space, random_samples, sample_arch
from nas.space.scaling import EFFICIENTNET, constraint_gamma, derived_gamma, flops_factor, meets_constraint

SPACES = sorted(Path("search_spaces").glob("*.yaml"))


def test_the_seeds_coefficients_give_1_92():
    alpha, beta, gamma = EFFICIENTNET
    assert (alpha, beta, gamma) == (1.2, 1.1, 1.15)
    assert round(flops_factor(alpha, beta, gamma), 2) == 1.92  # 1.2 * 1.1^2 * 1.15^2 = 1.9203
    assert meets_constraint(alpha, beta, gamma, 2.0, 0.05)  # 4% under 2
    assert not meets_constraint(alpha, beta, gamma, 2.0, 0.03)
    assert not meets_constraint(0.9, 1.3, 1.1, 2.0, 0.5)  # every coefficient >= 1


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_every_sampled_alpha_beta_gamma_meets_the_spaces_constraint(path):
    space = load_space(path)
    assert space.scaling_mode == "compound"  # every shipped space honours the seed's constraint
    samples = random_samples(space, 200, seed=11)
    for s in samples:
        a, b, g = s.scaling.alpha, s.scaling.beta, s.scaling.gamma
        assert meets_constraint(a, b, g, space.target, space.tolerance), (path, a, b, g)
        assert abs(flops_factor(a, b, g) - space.target) <= space.tolerance * space.target
    # and every pair the space may draw, not only those sampled
    for a in space.alpha:
        for b in space.beta:
            assert meets_constraint(a, b, space.gamma_for(a, b), space.target, space.tolerance)


def test_compound_spaces_never_suggest_gamma_and_scale_when_phi_grows():
    space = load_space("search_spaces/default.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trials = [study.ask() for _ in range(40)]
    samples = [sample_arch(space, t) for t in trials]
    assert all("gamma" not in t.params for t in trials)
    grown = [s for s in samples if s.scaling.phi > 0]
    assert grown and all(s.arch.resolution == round(28 * s.scaling.gamma ** s.scaling.phi) for s in grown)
    assert any(s.arch.resolution > 28 for s in grown)


def test_a_listed_gamma_is_the_one_nearest_the_target():
    assert constraint_gamma(1.2, 1.1, 2.0, (1.0, 1.15, 1.3)) == 1.15
    assert constraint_gamma(1.2, 1.1, 2.0) == derived_gamma(1.2, 1.1, 2.0) == 1.174


SPACE = """name: t
input: {resolution: 28, channels: 1}
scaling: {SCALING}
stem: {channels: 16}
stages:
  - {channels: 16, kinds: [ir]}
"""


def _write(tmp_path, scaling: str) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(SPACE.replace("{SCALING}", scaling))
    return p


@pytest.mark.parametrize("scaling, needle", [
    ("{alpha: [1.5], beta: [1.0, 1.3], phi: [0, 1], target: 2.0}", "alpha=1.5, beta=1.3 cannot meet"),
    ("{alpha: [1.0], beta: [1.0], gamma: [1.0], phi: [1]}", "alpha=1, beta=1 cannot meet"),
    ("{alpha: [1.2], beta: [1.1], gamma: [1.15], target: 2.0, tolerance: 0.01}", "within 1%"),
])
def test_an_impossible_constraint_is_one_line_with_file_line_and_exit_2(tmp_path, capsys, scaling, needle):
    path = _write(tmp_path, scaling)
    with pytest.raises(UsageError) as e:
        load_space(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:3: scaling:") and needle in msg and "\n" not in msg, msg
    assert main(["space", "show", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"nas: error: {msg}"


def test_four_free_multipliers_only_when_the_space_asks(tmp_path):
    free = load_space(_write(tmp_path, "{mode: free, alpha: [1.0, 1.2], beta: [1.0, 1.4], gamma: [1.0, 1.3], "
                                       "phi: [-1, 0, 2]}"))
    assert free.scaling_mode == "free" and free.gamma == (1.0, 1.3)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trials = [study.ask() for _ in range(30)]
    samples = [sample_arch(free, t) for t in trials]
    assert all({"alpha", "beta", "gamma", "phi"} <= set(t.params) for t in trials)  # all four are suggested
    assert any(not meets_constraint(s.scaling.alpha, s.scaling.beta, s.scaling.gamma) for s in samples)
    with pytest.raises(UsageError, match=r"space.yaml:3: scaling.tolerance: a tolerance applies only"):
        load_space(_write(tmp_path, "{mode: free, tolerance: 0.1}"))
    with pytest.raises(UsageError, match=r"space.yaml:3: scaling.mode: 'loose' is not allowed"):
        load_space(_write(tmp_path, "{mode: loose}"))


def test_no_scaling_block_is_the_unscaled_base(tmp_path):
    p = tmp_path / "plain.yaml"
    p.write_text(SPACE.replace("scaling: {SCALING}\n", ""))
    space = load_space(p)
    assert space.scaling_mode == "compound" and space.phi == (0.0,)
    assert all(s.arch == s.base for s in random_samples(space, 5, seed=0))
