"""A full disk, for real: a search whose journal sits on a small tmpfs stops with one line and
exit 2 naming the journal, leaves no torn record, keeps every finished trial, and the same
command resumes once there is space. Also an export onto a full disk: one line, nothing left.
Needs root to mount a tmpfs (skipped otherwise)."""

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nas.search.storage import open_storage

REPO = Path(__file__).resolve().parents[1]
SEARCH = ["--target-mem", "40KB", "--space", str(REPO / "search_spaces/mcu.yaml"), "--subset", "300",
          "--epochs", "1", "--final-epochs", "1", "--final-subset", "300", "--proxy", "none", "--no-progress",
          "--seed", "5"]


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        # a developer's non-root checkout cannot mount; CI runs as root and must run these
        assert not os.environ.get("CI"), "the full-disk tests need root in CI (mount -t tmpfs)"
        pytest.skip("mounting a real tmpfs needs root (CI and the dev machines run as root)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs", str(mnt)], capture_output=True, text=True)
    assert mounted.returncode == 0, f"mount -t tmpfs failed as root: {mounted.stderr.strip()}"
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _nas(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "nas.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_search_on_a_full_disk_stops_cleanly_and_resumes(small_tmpfs, tmp_path):
    journal = small_tmpfs / "full.journal"
    args = ["search", "--study", "full", "--storage", f"journal:{journal}", "--trials", "40", *SEARCH]
    run = _nas(args, tmp_path)
    assert run.returncode == 2, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("nas: error:") and str(journal) in last and "no space" in last, last
    data = journal.read_bytes()
    assert data.endswith(b"\n"), "a torn record was left behind"
    trials = optuna.load_study(study_name="full", storage=open_storage(str(journal))).get_trials()
    done = {t.number: t.values for t in trials if t.state == TrialState.COMPLETE}
    assert done, "no trial finished before the disk filled"

    subprocess.run(["mount", "-o", "remount,size=4m", str(small_tmpfs)], check=True)
    again = _nas([*args[:args.index("--trials") + 1], str(len(done) + 1), *SEARCH], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    after = optuna.load_study(study_name="full", storage=open_storage(str(journal))).get_trials()
    assert {t.number: t.values for t in after if t.number in done} == done


def test_export_onto_a_full_disk_is_one_line_and_leaves_nothing(small_tmpfs, tmp_path):
    src = tmp_path / "s.journal"
    study = optuna.create_study(study_name="s", storage=open_storage(str(src)), direction="maximize")
    del study
    out = small_tmpfs / "bundle"
    (small_tmpfs / "filler").write_bytes(b"x" * (20 * 1024))
    from nas import fsio
    with pytest.raises(fsio.WriteError) as err:
        with fsio.atomic_dir(out) as tmp:
            (tmp / "weights.bin").write_bytes(b"w" * (64 * 1024))
    assert str(out) in str(err.value) and "no space" in str(err.value) and "\n" not in str(err.value)
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler"]
    with pytest.raises(fsio.WriteError, match="bytes free"):
        fsio.require_free_space(small_tmpfs, 1 << 20, "-o")
    # a report onto the full disk keeps the old file whole
    report = small_tmpfs / "r.html"
    (small_tmpfs / "filler").unlink()
    fsio.write_text(report, "old report\n")
    (small_tmpfs / "filler").write_bytes(b"x" * (16 * 1024))
    with pytest.raises(fsio.WriteError):
        fsio.write_text(report, "new " * 10000)
    assert report.read_text() == "old report\n"
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler", "r.html"]


def test_stale_partial_directories_of_dead_exports_are_removed(tmp_path):
    from nas import fsio
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".bundle.{dead.pid}.abc{fsio.PARTIAL_SUFFIX}"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    live = tmp_path / f".bundle.{os.getpid()}.def{fsio.PARTIAL_SUFFIX}"
    live.mkdir()
    with fsio.atomic_dir(tmp_path / "bundle") as tmp:
        (tmp / "manifest.json").write_text("{}\n")
    assert not stale.exists() and live.exists()
    assert (tmp_path / "bundle" / "manifest.json").read_text() == "{}\n"


def test_a_checkpoint_that_does_not_fit_is_a_note_and_the_run_goes_on(small_tmpfs, capsys):
    """A stopped run whose checkpoint the disk refuses still returns its result; stderr says the
    run can only be restarted, and no partial file is left (a search then restarts that candidate)."""
    import torch

    from nas.data import load_dataset
    from nas.train import train
    from test_trainer import small_cnn

    torch.manual_seed(0)
    target = small_tmpfs / "trial_0.ckpt"
    result = train(small_cnn(16), load_dataset("digits"), epochs=2, progress=False, measure_inference=False,
                   checkpoint=target, stop=lambda step: "deadline" if step == 5 else None)
    assert result.stopped_early == "deadline" and result.steps == 5
    err = capsys.readouterr().err
    assert "no checkpoint" in err and str(target) in err and "no space" in err, err
    assert list(small_tmpfs.iterdir()) == []
