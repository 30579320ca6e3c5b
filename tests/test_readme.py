"""The README runs as written: every `nas ...` line in its code blocks parses with the real
command-line parser, every file it names exists, and the cheap commands run for real.
The expensive ones (search, report, export, infer) run as a chain in the slow test below,
with small budgets. A README edit that breaks a command fails here."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from nas.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
ARCH = "in_r28_c1-stem_c16_k3_s1_w8_a8-ir_r2_k3_s2_e6_c24_w4_a4-head_c128_w8_a8-fc_n10_w8_a8"
PLACEHOLDERS = {"<arch string>": ARCH, "<w32 arch>": ARCH.replace("w4_a4", "w32_a32").replace("w8_a8", "w32_a32")}
CHEAP = {"cost", "space", "scale", "--version", "bench"}  # bench only as `nas bench --help`


def readme_commands() -> list[str]:
    """Every `nas ...` command in the README's fenced code blocks, continuations joined,
    comments dropped."""
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", README, flags=re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("nas "):
                for k, v in PLACEHOLDERS.items():
                    line = line.replace(k, v)
                commands.append(line)
    return commands


COMMANDS = readme_commands()


def test_the_readme_has_commands():
    assert len(COMMANDS) >= 10
    assert any(c.startswith("nas search") for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command):
    argv = shlex.split(command)[1:]
    try:
        build_parser(argv[0]).parse_args(argv)
    except SystemExit as e:  # --help / --version print and exit 0
        assert e.code == 0, f"{command}: exit {e.code}"


@pytest.mark.parametrize("command", COMMANDS)
def test_files_the_readme_names_exist(command):
    for token in shlex.split(command):
        value = token.split("=", 1)[-1]
        if re.match(r"^(search_spaces|studies|benchmarks)/\S+\.(yaml|json)$", value):
            assert (REPO / value).is_file(), f"README command {command!r} names {value}, which is not in the repo"


def test_make_targets_exist():
    makefile = (REPO / "Makefile").read_text()
    for target in re.findall(r"^make (\S+)", README, flags=re.M):
        assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"make {target}: no such target"


@pytest.mark.parametrize("command", [c for c in COMMANDS if shlex.split(c)[1] in CHEAP
                                     and (shlex.split(c)[1] != "bench" or "--help" in c)])
def test_cheap_readme_commands_run(command):
    r = subprocess.run([sys.executable, "-m", "nas.cli", *shlex.split(command)[1:]], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{command}: exit {r.returncode}: {r.stderr[-500:]}"
    assert r.stdout.strip()


# What the slow chain appends to the README's commands so that they finish in minutes;
# everything else is the README's text.
SMALL = {
    "search": ["--budget", "20s", "--subset", "500", "--epochs", "1", "--final-epochs", "1", "--final-subset", "500",
               "--final-top", "1", "--no-progress"],
    "train": ["--epochs", "2", "--subset", "500"],  # 2: `--two-stage 0.34` needs one epoch per stage
    "infer": ["--subset", "500"],
}
CHAIN = ("search", "report", "export", "infer", "train")  # dashboard serves forever; calibrate,
# compress and bench have their own tests


@pytest.mark.slow
def test_readme_search_report_export_infer_chain(tmp_path):
    import shutil

    shutil.copytree(REPO / "search_spaces", tmp_path / "search_spaces")
    shutil.copytree(REPO / "studies", tmp_path / "studies")
    ran = []
    for command in COMMANDS:
        argv = shlex.split(command)[1:]
        if argv[0] not in CHAIN or "--config" in argv or "postgresql://" in command:
            continue
        if argv[0] == "search" and "--study" not in argv:
            continue  # the 5 MB default run is `make search`'s
        if argv[0] == "infer" and not (tmp_path / "out").exists():
            continue
        r = subprocess.run([sys.executable, "-m", "nas.cli", *argv, *SMALL.get(argv[0], [])], cwd=tmp_path,
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{command}: exit {r.returncode}: {r.stderr[-800:]}"
        ran.append(argv[0])
    assert {"search", "report", "export", "infer", "train"} <= set(ran), ran
    assert (tmp_path / "report.html").stat().st_size > 10_000
    assert (tmp_path / "out" / "manifest.json").is_file()
