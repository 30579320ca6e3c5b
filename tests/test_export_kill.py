"""`kill -9` at 10 points during `nas export` leaves no output directory or a complete,
verified one; the next export tidies what the killed ones left (issue: hostile input, item 2)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from nas.cost import TOTALS, arch_cost
from nas.export.bundle import load_bundle
from nas.search.storage import open_storage
from nas.space import decode

REPO = Path(__file__).resolve().parents[1]
ARCH = ("in_r8_c1-stem_c8_k3_s1_w8_a8-ir_r1_k3_s2_e2_c16_w4_a4-grouped_r1_k3_s1_g1_c16_w1_a1"
        "-head_c0_w8_a8-fc_n10_w8_a8")
POINTS = 10


def _study(folder: Path) -> None:
    """A study as `nas search` leaves it (attributes as written on disk): one trained trial,
    no final weights, so the first export retrains it."""
    (folder / "studies").mkdir(parents=True)
    shutil.copytree(REPO / "search_spaces", folder / "search_spaces")
    study = optuna.create_study(study_name="k", storage=open_storage(f"journal:{folder / 'studies' / 'k.journal'}"),
                                direction="maximize")
    budgets = {"mem": 40_000, "act_mem": None, "macs": None, "latency_ms": None}
    config = {"study": "k", "storage": None, "space": "search_spaces/mcu.yaml", "dataset": "digits", "data_dir": None,
              "budgets": budgets, "objectives": "accuracy", "sampler": "tpe", "trials": None, "budget_s": None,
              "workers": 1, "seed": 0, "subset": 300, "epochs": 1, "val_subset": 2000, "proxy": "none",
              "proxy_keep": 0.5, "pruner": "sh", "final_top": 3, "final_epochs": 1, "final_subset": 300,
              "batch_size": 32, "final_batch_size": 64}
    study.set_user_attr("identity", {"space": config["space"], "dataset": "digits", "budgets": budgets,
                                     "objectives": "accuracy"})
    study.set_user_attr("config", config)
    cost = arch_cost(decode(ARCH))
    costs = {k: getattr(cost, k) for k in TOTALS}
    study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs={
        "arch": ARCH, "costs": costs, "constraints": [costs["weight_bytes"] - 40_000], "feasible": True,
        "trained": True, "scaling": {"alpha": 1.0, "beta": 1.0, "gamma": 1.0, "phi": 0}}))


def _export(folder: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "nas.cli", "export", "--study", "k", "--best", "-o", "out",
                             "--force", "--threads", "1", "--json"], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _complete_or_absent(out: Path) -> str:
    if not out.exists():
        return "absent"
    manifest, _ = load_bundle(out)  # verifies every file's hash, rebuilds the packed model
    assert manifest["payload_bytes"] == manifest["weight_bytes"]
    return "complete"


@pytest.mark.slow
def test_kill_9_at_ten_points_during_export(tmp_path):
    ref, work = tmp_path / "ref", tmp_path / "work"
    _study(ref)
    _study(work)
    start = time.perf_counter()
    p = _export(ref)
    out, err = p.communicate(timeout=600)
    full_s = time.perf_counter() - start
    assert p.returncode == 0, err
    assert json.loads(out)["payload_bytes"] > 0

    outcomes = []
    for i in range(POINTS):
        kill_at = full_s * (i + 0.5) / POINTS  # spread over one whole export, retraining included
        p = _export(work)
        try:
            p.wait(timeout=kill_at)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
        p.communicate()
        outcomes.append((round(kill_at, 1), p.returncode, _complete_or_absent(work / "out")))
        optuna.load_study(study_name="k", storage=open_storage(f"journal:{work / 'studies' / 'k.journal'}"))
    print("kill points (s, exit code, output):", outcomes)
    assert sum(1 for _, rc, _ in outcomes if rc == -signal.SIGKILL) >= POINTS // 2, outcomes

    p = _export(work)  # a last, uninterrupted export tidies the killed ones' leftovers
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert _complete_or_absent(work / "out") == "complete"
    assert not [d.name for d in work.iterdir() if d.name.startswith(".out.")]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_replacement_killed_between_its_renames_is_undone(tmp_path):
    from nas.fsio import atomic_dir, clean_stale_partials

    pid = _dead_pid()
    old = tmp_path / f".out.old-{pid}"  # the complete bundle a killed --force run moved aside
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    stale = tmp_path / f".out.{pid}.abc.partial"
    stale.mkdir()
    assert sorted(clean_stale_partials(tmp_path, "out")) == sorted([old, stale])
    assert (tmp_path / "out" / "manifest.json").read_text() == "{}" and not stale.exists()

    again = tmp_path / f".out.old-{pid}"  # moved aside AND replaced: the old copy just goes
    again.mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "manifest.json").write_text('{"new": 1}')
    assert (tmp_path / "out" / "manifest.json").read_text() == '{"new": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_sigterm_during_export_exits_143_and_leaves_no_partial(tmp_path):
    """SIGTERM unwinds `nas export` like Ctrl-C (nas/cli.py): exit 143, its .partial directory
    removed on the way out, not left for the next export to find (issue 18, item 7)."""
    _study(tmp_path)
    p = _export(tmp_path)
    end = time.monotonic() + 300
    while time.monotonic() < end and p.poll() is None and not list(tmp_path.glob(".out.*.partial")):
        time.sleep(0.05)
    assert p.poll() is None, p.communicate()[1][-2000:]
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "nas: interrupted"
    assert not list(tmp_path.glob(".out.*")) and not (tmp_path / "out").exists()


def test_output_names_near_the_limit_keep_their_temporary_names_within_it(tmp_path):
    """A 250-byte -o name: `.NAME.PID.XXXXXXXX.partial` would pass 255 bytes; the temporary names
    carry at most 200 characters of it, and stale ones are still found and removed."""
    from nas.fsio import atomic_dir, atomic_file, clean_stale_partials

    name = "b" * 250
    stale = tmp_path / f".{name[:200]}.{_dead_pid()}.abc.partial"
    stale.mkdir()
    with atomic_dir(tmp_path / name) as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert (tmp_path / name / "manifest.json").read_text() == "{}"
    assert not stale.exists()
    with atomic_file(tmp_path / (name[:-5] + ".json")) as tmp:
        tmp.write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, name[:-5] + ".json"])
    assert clean_stale_partials(tmp_path, name) == []
