"""The Python API a notebook uses: nas.cost, nas.build, nas.sample, nas.search, nas.export
(nas/__init__.py; nas.search and nas.export are callable packages)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

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


def test_search_and_export_are_callable_and_stay_packages(tmp_path, monkeypatch):
    """nas.search(...) runs `nas search` (a tiny real search on digits) and returns its summary;
    nas.export(...) writes the result's bundle, as `nas export --best`; both remain packages."""
    import json

    import nas
    import nas.export.bundle
    import nas.search.runner
    from nas.errors import UsageError

    assert callable(nas.search) and callable(nas.export)
    assert nas.search.runner.run_search is not None and nas.export.export_trial is not None
    for f in (nas.search.search, nas.export.export):
        assert f.__doc__ and "nas " in f.__doc__
    with pytest.raises(UsageError, match="unknown option"):
        nas.search(target_memory="100KB")

    monkeypatch.chdir(tmp_path)
    (tmp_path / "search_spaces").symlink_to(REPO / "search_spaces")
    summary = nas.search(study="api", target_mem="40KB", space="search_spaces/mcu.yaml", dataset="digits",
                         trials=2, subset=64, batch_size=64, epochs=1, final_epochs=1, final_subset=64,
                         final_top=1, seed=1, profile="none")
    assert summary["study"] == "api" and summary["trained"] >= 2 and summary["final"], summary
    assert (tmp_path / "studies" / "api.journal").exists()
    manifest = nas.export("api", tmp_path / "out", profile="none")
    assert manifest["arch"] == summary["final"][0]["arch"]
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["arch"] == manifest["arch"] and nas.export.verify_bundle(tmp_path / "out") is not None
