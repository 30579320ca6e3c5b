"""Search spaces: codec round trip, scaling rules, YAML loading, seeded sampling, bad input."""

import math
from pathlib import Path

import pytest

from nas.errors import UsageError
from nas.space import (BITS, BLOCK_KINDS, ArchSpec, BlockSpec, ConvSpec, FcSpec, Scaling, decode, encode,
                       load_space, random_archs, random_samples, replay, scale_arch, space_size)
from nas.space.scaling import derived_gamma

SPACES = sorted(Path("search_spaces").glob("*.yaml"))

FULL = ("in_r28_c1-stem_c16_k3_s1_w8_a8-ir_r1_k3_s1_e1_c16_w8_a8-shift_r2_k3_s2_e3_c32_w4_a4_hs"
        "-grouped_r2_k3_s1_g4_c64_w8_a8-dense_r3_k3_s2_gr12_c64_w1_a1-ir_r2_k5_s2_e6_c96_se0.25_w16_a16"
        "-head_c128_w8_a8-fc_n10_w8_a8")


def test_canonical_string_round_trips():
    arch = decode(FULL)
    assert encode(arch) == FULL
    assert decode(encode(arch)) == arch
    assert [b.kind for b in arch.blocks] == ["ir", "shift", "grouped", "dense", "ir"]
    assert arch.blocks[4].se == 0.25 and arch.blocks[4].expand == 6.0
    assert arch.blocks[3].growth == 12 and arch.blocks[3].w_bits == 1
    assert arch.blocks[1].act == "hswish"


@pytest.mark.parametrize("tokens", ["e1.23456789", "e1_se0.0000001", "e1_se0.123456789", "e15.999999999",
                                    "e3.0000000000000000001", "e16"])
def test_accepted_float_tokens_round_trip_exactly(tokens):
    """Every accepted string decodes, encodes to a string the decoder accepts, and decodes to the
    same spec (no 'g' rounding to 6 digits, no exponent such as 'se1e-07')."""
    text = f"in_r28_c1-stem_c8-ir_r1_k3_s2_{tokens}_c16-head_c0-fc_n10"
    arch = decode(text)
    assert decode(encode(arch)) == arch
    assert "e-" not in encode(arch) and "e+" not in encode(arch)


@pytest.mark.parametrize("expand", ["999999999", "16.0000000001", "17"])
def test_expand_over_the_limit_is_refused_at_decode_showing_the_value(expand):
    with pytest.raises(UsageError, match=r"expand=.* is over the limit 16") as e:
        decode(f"in_r28_c1-stem_c8-ir_r1_k3_s2_e{expand}_c16-head_c0-fc_n10")
    assert "e+" not in str(e.value)


@pytest.mark.parametrize("kind", BLOCK_KINDS)
@pytest.mark.parametrize("bits", BITS)
def test_every_kind_and_bit_width_round_trips(kind, bits):
    extra = {"ir": dict(expand=6.0, se=0.25 if bits != 1 else 0.0), "shift": dict(expand=3.0),
             "grouped": dict(groups=4), "dense": dict(growth=8, repeats=2)}[kind]
    block = BlockSpec(kind=kind, out_chs=32, stride=2, kernel=5, w_bits=bits, a_bits=bits, **extra)
    arch = ArchSpec(resolution=32, in_chs=3, stem=ConvSpec(out_chs=16), blocks=(block,),
                    head=ConvSpec(out_chs=0, kernel=1), fc=FcSpec(num_classes=100))
    assert decode(encode(arch)) == arch


def test_timm_block_string_without_bits_defaults_to_32_bits():
    arch = decode("in_r224_c3-stem_c32_s2-ir_r2_k3_s2_e6_c24_se0.25-head_c1280-fc_n1000")
    block = arch.blocks[0]
    assert (block.repeats, block.kernel, block.stride, block.expand, block.out_chs, block.se) == (2, 3, 2, 6.0, 24, 0.25)
    assert (block.w_bits, block.a_bits) == (32, 32)


@pytest.mark.parametrize("text, position, needle", [
    ("in_r28_c1-stem_c16-ir_c16_x3-head_c0-fc_n10", 26, "unknown key 'x3'"),
    ("in_r28_c1-stem_c16-conv_c16-head_c0-fc_n10", 19, "unknown segment kind 'conv'"),
    ("in_r28_c1-stem_c16-ir_c16_w3-head_c0-fc_n10", 19, "w_bits=3"),
    ("in_r28_c1-stem_c16-ir_c16_a1-head_c0-fc_n10", 19, "a_bits=1"),
    ("in_r28_c1-stem_c16-ir_c16_k2.5-head_c0-fc_n10", 26, "whole number"),
    ("in_r28_c1-stem_c16-ir_c16--head_c0-fc_n10", 26, "empty segment"),
    ("in_r28_c1-stem_c16-shift_c16_se0.25-head_c0-fc_n10", 29, "unknown key 'se0.25'"),
    ("in_r28_c1-stem_c16-ir_k3-head_c0-fc_n10", 19, "missing key(s) ['c']"),
])
def test_malformed_arch_strings_name_the_position(text, position, needle):
    with pytest.raises(UsageError) as e:
        decode(text)
    assert f"position {position}" in str(e.value) and needle in str(e.value)
    for bits in BITS:  # the message lists the allowed values where there is a list
        if "w_bits" in needle:
            assert str(bits) in str(e.value)


def test_arch_strings_missing_ends_are_rejected():
    with pytest.raises(UsageError, match="exactly one 'head'"):
        decode("in_r28_c1-stem_c16-ir_c16-fc_n10")
    with pytest.raises(UsageError, match="out of order"):
        decode("stem_c16-in_r28_c1-ir_c16-head_c0-fc_n10")
    with pytest.raises(UsageError, match="empty"):
        decode("  ")


def test_grouped_block_needs_divisible_input_channels():
    with pytest.raises(UsageError, match="not divisible by groups=4"):
        decode("in_r28_c1-stem_c10-grouped_g4_c16-head_c0-fc_n10")


def test_compound_scaling_rounding_rules():
    base = decode("in_r224_c3-stem_c32_s2-ir_r2_k3_s2_e6_c24-dense_r3_k3_s1_gr12_c40-head_c1280-fc_n1000")
    s = Scaling(alpha=1.2, beta=1.1, gamma=1.15, phi=1)
    assert s.flops_factor == pytest.approx(1.2 * 1.1**2 * 1.15**2) and 1.9 < s.flops_factor < 2.0
    scaled = scale_arch(base, s)
    assert scaled.resolution == round(224 * 1.15)
    assert scaled.stem.out_chs == 32  # 35.2 -> nearest multiple of 8 is 32, and 32 >= 90% of 35.2
    assert scaled.blocks[0].repeats == math.ceil(2 * 1.2) == 3
    assert scaled.blocks[0].out_chs == 24  # 26.4 -> 24
    assert scaled.blocks[1].out_chs == 48  # 44 -> 48 (nearest multiple of 8, rounding half up)
    assert scaled.blocks[1].growth == 13  # round(12 * 1.1)
    assert scaled.head.out_chs == 1408  # make_divisible(1280 * 1.1) = 1408
    assert scale_arch(base, Scaling()) == base  # phi = 0 is the identity


def test_derived_gamma_meets_the_target():
    # alpha * beta^2 * gamma^2 = 2 (EfficientNet's FLOPs-doubling constraint) solved for gamma:
    # sqrt(2 / (1.2 * 1.21)) = 1.1736 (EfficientNet's grid search picked 1.15 near it)
    g = derived_gamma(1.2, 1.1, 2.0)
    assert g == 1.174  # rounded to 3 decimals by derived_gamma
    for alpha, beta, target in [(1.1, 1.05, 2.0), (1.3, 1.2, 3.0), (1.0, 1.0, 1.5)]:
        g = derived_gamma(alpha, beta, target)  # meets the target within its 3-decimal rounding
        assert abs(alpha * beta**2 * g**2 - target) <= 2 * alpha * beta**2 * g * 0.0005 + 1e-12
    assert derived_gamma(2.0, 1.2, 2.0) == 1.0  # never below 1


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_shipped_spaces_load_and_sample_valid_archs(path):
    space = load_space(path)
    assert space_size(space) > 1
    archs = random_archs(space, 8, seed=3)
    for arch in archs:
        assert decode(encode(arch)) == arch
        assert arch.stem.w_bits >= space.min_end_bits and arch.fc.w_bits >= space.min_end_bits


def test_seeded_sampling_is_reproducible_and_replayable():
    space = load_space("search_spaces/default.yaml")
    first = [encode(a) for a in random_archs(space, 10, seed=7)]
    again = [encode(a) for a in random_archs(space, 10, seed=7)]
    other = [encode(a) for a in random_archs(space, 10, seed=8)]
    assert first == again and first != other
    assert len(set(first)) > 5
    import optuna
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    from nas.space import sample_arch
    live = sample_arch(space, trial, in_chs=3, num_classes=100)
    assert replay(space, trial.params, in_chs=3, num_classes=100) == live
    assert live.arch.in_chs == 3 and live.arch.fc.num_classes == 100


def test_samples_carry_their_scaling():
    space = load_space("search_spaces/default.yaml")
    for s in random_samples(space, 5, seed=0):
        assert scale_arch(s.base, s.scaling, space.divisor) == s.arch


def _write(tmp_path, text):
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


GOOD = """name: t
input: {resolution: 28, channels: 1}
stem: {channels: 16}
stages:
  - channels: 16
    kinds: [ir, shift]
"""


def test_space_file_errors_name_file_line_and_allowed_values(tmp_path):
    load_space(_write(tmp_path, GOOD))
    cases = [
        (GOOD.replace("[ir, shift]", "[ir, conv]"), ":6:", "'conv' is not allowed", "dense"),
        (GOOD.replace("kinds:", "kindz:"), ":6:", "unknown key 'kindz'", "kinds"),
        (GOOD + "    bits: [w3a3]\n", ":7:", "'w3a3' is not a bit-width pair", "w8a8"),
        (GOOD.replace("name: t", "name: t\nname: u"), ":2", "duplicate key", ""),
        (GOOD.replace("stem: {channels: 16}", "stem: {channels: 16, bits: w4a4}"), ":3:", "min_end_bits=8", ""),
        (GOOD + "  - {channels: 16, kinds: [grouped], groups: [3]}\n", ":7:", "does not divide divisor=8", ""),
        ("stages: [\n", ":2", "malformed YAML", ""),
        ("- a\n- b\n", "", "expected a mapping", ""),
    ]
    for text, line, needle, allowed in cases:
        with pytest.raises(UsageError) as e:
            load_space(_write(tmp_path, text))
        msg = str(e.value)
        assert needle in msg and line in msg and allowed in msg, msg
        assert "\n" not in msg


def test_missing_space_file(tmp_path):
    with pytest.raises(UsageError, match="no such space file"):
        load_space(tmp_path / "nope.yaml")


def test_yaml_is_loaded_safely(tmp_path):
    with pytest.raises(UsageError, match="malformed YAML"):
        load_space(_write(tmp_path, "!!python/object/apply:os.system ['echo hi']\n"))


def test_space_sample_streams_a_huge_count():
    """`nas space sample -n 999999999999` prints its first lines at once (it does not build the list)."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "nas.cli", "space", "sample", str(repo / "search_spaces/mcu.yaml"),
                             "-n", "999999999999"], cwd=repo, stdout=subprocess.PIPE, text=True,
                            env={**__import__("os").environ, "PYTHONPATH": str(repo)})
    try:
        start = time.monotonic()
        lines = [proc.stdout.readline() for _ in range(1200)]
        assert time.monotonic() - start < 120
    finally:
        proc.kill()
        proc.wait()
    from nas.space import decode, load_space, random_archs
    from nas.space import encode
    expected = [encode(a) for a in random_archs(load_space(repo / "search_spaces/mcu.yaml"), 1200, 0)]
    assert [line.strip() for line in lines] == expected  # the same sequence across study chunks
    assert decode(lines[0].strip())
