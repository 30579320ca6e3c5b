"""The Python API a notebook uses: nas.cost, nas.build, nas.sample (nas/__init__.py)."""

import subprocess
import sys

import pytest

ARCH = "in_r28_c1-stem_c16_k3_s1_w8_a8-ir_r1_k3_s2_e4_c24_w4_a4-head_c64_w8_a8-fc_n10_w8_a8"


def test_cost_is_callable_without_torch_and_equals_the_cost_model():
    code = ("import sys, json, nas; d = nas.cost(%r); assert 'torch' not in sys.modules, 'torch imported'; "
            "print(json.dumps(d))" % ARCH)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    import json

    from nas.cost import arch_cost
    from nas.space import decode

    expected = arch_cost(decode(ARCH)).to_dict()
    del expected["layers"]
    assert json.loads(out) == expected
    assert expected["weight_bytes"] > 0


def test_cost_package_stays_a_package():
    import nas
    import nas.cost

    assert nas.cost.arch_cost is not None and callable(nas.cost)
    from nas.space import decode

    assert len(nas.cost(ARCH, layers=True)["layers"]) == len(nas.cost.arch_cost(decode(ARCH)).layers) > 0


def test_cost_of_a_bad_string_is_a_usage_error():
    import nas
    from nas.errors import UsageError

    with pytest.raises(UsageError, match="arch string"):
        nas.cost("in_r28_c1-stem_c16")


def test_sample_matches_the_cli_and_build_runs_it():
    import torch

    import nas

    cli = subprocess.run([sys.executable, "-m", "nas.cli", "space", "sample", "search_spaces/mcu.yaml", "--seed", "3",
                          "-n", "2"], capture_output=True, text=True, check=True).stdout.split()
    assert nas.sample("search_spaces/mcu.yaml", seed=3, n=2) == cli
    assert nas.sample("search_spaces/mcu.yaml", seed=3) == cli[0]
    from nas.space import decode

    model = nas.build(cli[0]).eval()
    r = decode(cli[0]).resolution  # compound scaling may grow the input
    assert model(torch.zeros(2, 1, r, r)).shape == (2, 10)
