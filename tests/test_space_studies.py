"""studies/: every study config the README's commands use loads and is attainable: search configs
build a `SearchConfig` whose space loads and whose budgets some member of the space meets;
`nas scale` configs (those with `targets`) parse, and their targets admit the base."""

import argparse
from pathlib import Path

import pytest
import yaml

from nas.commands.scale import merged_options, parse_coefficients, parse_targets
from nas.cost import arch_cost
from nas.scale.family import check_targets
from nas.search.config import build_config, read_config_file
from nas.search.runner import check_budgets_reachable
from nas.space import decode, load_space
from nas.space.scaling import meets_constraint

STUDIES = sorted(Path("studies").glob("*.yaml"))
REQUIRED = {"default-5mb.yaml", "fm-100k.yaml", "mcu-sram.yaml", "binary.yaml", "scale-fm.yaml"}


def _is_scale_config(path: Path) -> bool:
    return "targets" in yaml.safe_load(path.read_text())


def test_the_studies_folder_holds_the_configs_the_readme_uses():
    assert REQUIRED <= {p.name for p in STUDIES}


@pytest.mark.parametrize("path", [p for p in STUDIES if not _is_scale_config(p)], ids=lambda p: p.stem)
def test_search_config_loads_and_its_budgets_are_attainable(path):
    config = build_config({}, read_config_file(str(path)), str(path))
    space = load_space(config.space)
    assert config.study and config.budgets.active()
    check_budgets_reachable(space, config, in_chs=1, num_classes=10)  # raises when no member fits
    if path.name == "mcu-sram.yaml":
        assert {name for name, _ in config.budgets.active()} == {"weight_bytes", "peak_act_bytes"}
    if path.name == "binary.yaml":
        assert all(w == 1 for st in space.stages for w, _ in st.bits)


@pytest.mark.parametrize("path", [p for p in STUDIES if _is_scale_config(p)], ids=lambda p: p.stem)
def test_scale_config_loads(path):
    opts = merged_options(argparse.Namespace(config=str(path)))
    targets = parse_targets(opts["targets"], opts["by"])
    base = decode(opts["arch"])
    check_targets(targets, getattr(arch_cost(base), opts["by"]), opts["by"])
    space = load_space(opts["space"])
    coefficients = parse_coefficients(opts["coefficients"], space.target, space.tolerance)
    assert meets_constraint(*coefficients, space.target, space.tolerance)
    assert opts["train"] is True and opts["dataset"] == "fashion-mnist"


def test_every_study_and_space_file_the_readme_names_exists():
    import re

    named = set(re.findall(r"\b((?:studies|search_spaces)/[\w.-]+\.yaml)\b", Path("README.md").read_text()))
    assert named, "the README names no study or space file"
    missing = sorted(p for p in named if not Path(p).is_file())
    assert not missing, f"README.md names files that do not exist: {missing}"
