"""Searches survive SIGKILL and SIGINT: finished trials are kept and the same command resumes.

Also three workers on one study in a real PostgreSQL server (NAS_TEST_POSTGRES_URL, set by
.ci/run), one of them killed with SIGKILL mid-trial.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nas.search.storage import open_storage

REPO = Path(__file__).resolve().parents[1]
SEARCH = ["--target-mem", "40KB", "--space", str(REPO / "search_spaces/mcu.yaml"), "--subset", "300",
          "--epochs", "1", "--final-epochs", "1", "--final-subset", "300", "--proxy", "none", "--no-progress",
          "--seed", "5"]


def _start(args, cwd, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "nas.cli", "search", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _trials(study_name, storage):
    try:
        return optuna.load_study(study_name=study_name, storage=open_storage(storage)).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []


def _wait_for(predicate, timeout, proc=None):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"search exited early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        time.sleep(0.5)
    return False


def _finished(trials):
    return {t.number: (t.state, t.values) for t in trials if t.state.is_finished()}


def _trained(trials):
    return [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("trained")]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["SIGKILL", "SIGINT", "SIGTERM"])
def test_killed_search_resumes_with_the_same_command(tmp_path, sig):
    name, storage = "kill", f"journal:{tmp_path / 'kill.journal'}"
    args = ["--study", name, "--storage", storage, "--trials", "3", *SEARCH]
    proc = _start(args, tmp_path)
    # kill while a trial is in flight and at least one trained trial has finished
    assert _wait_for(lambda: _trained(_trials(name, storage)) and any(
        t.state == TrialState.RUNNING for t in _trials(name, storage)), 600, proc), "no trial finished in time"
    proc.send_signal(sig)
    proc.wait(timeout=120)
    # `nas search && nas export` must not carry on: 128 + the signal, as shells report it
    assert proc.returncode == {signal.SIGKILL: -9, signal.SIGINT: 130, signal.SIGTERM: 143}[sig], proc.stderr.read()[-2000:]
    before = _finished(_trials(name, storage))
    assert before
    if sig != signal.SIGKILL:  # a clean stop: nothing left RUNNING
        assert all(t.state != TrialState.RUNNING for t in _trials(name, storage))

    again = _start(args, tmp_path)
    out, err = again.communicate(timeout=900)
    assert again.returncode == 0, err[-2000:]
    after_trials = _trials(name, storage)
    after = _finished(after_trials)
    for number, (state, values) in before.items():  # every finished trial kept, unchanged
        assert after[number] == (state, values)
    assert len(_trained(after_trials)) >= 3
    assert all(t.state != TrialState.RUNNING for t in after_trials)
    if sig == signal.SIGKILL:  # the trial killed in flight was failed and its architecture retried
        killed = [t for t in after_trials if t.number not in before and t.state == TrialState.FAIL]
        assert killed and any(t.user_attrs.get("retry_of") == killed[0].number for t in after_trials)


def test_two_local_workers_share_the_journal(tmp_path):
    name, storage = "pair", f"journal:{tmp_path / 'pair.journal'}"
    proc = _start(["--study", name, "--storage", storage, "--trials", "4", "--workers", "2", *SEARCH], tmp_path)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-2000:]
    assert "locked" not in err
    trials = _trials(name, storage)
    assert len(_trained(trials)) >= 4
    assert not [t for t in trials if t.state == TrialState.FAIL]
    workers = {t.user_attrs["worker"] for t in trials if "worker" in t.user_attrs}
    assert len(workers) == 2, workers  # both processes took trials
    archs = [t.user_attrs["arch"] for t in _trained(trials) if "duplicate_of" not in t.user_attrs]
    assert len(archs) == len(set(archs))


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get("NAS_TEST_POSTGRES_URL"),
                    reason="needs a PostgreSQL server: set NAS_TEST_POSTGRES_URL (.ci/run starts one)")
def test_three_postgres_workers_one_killed(tmp_path):
    url = os.environ["NAS_TEST_POSTGRES_URL"]
    name = f"ci-{uuid.uuid4().hex[:8]}"
    args = ["--study", name, "--storage", url, "--trials", "5", *SEARCH]
    procs = [_start(args, tmp_path) for _ in range(3)]
    try:
        victim = procs[0]

        def victim_running():
            return any(t.state == TrialState.RUNNING and t.user_attrs.get("worker", "").endswith(f":{victim.pid}")
                       for t in _trials(name, url))

        assert _wait_for(victim_running, 600), "worker 0 never started a trial"
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=60)
        before = _finished(_trials(name, url))
        for p in procs[1:]:
            out, err = p.communicate(timeout=1200)
            assert p.returncode == 0, err[-2000:]
        trials = _trials(name, url)
        after = _finished(trials)
        for number, record in before.items():
            assert after[number] == record
        trained = _trained(trials)
        assert len(trained) >= 5
        archs = [t.user_attrs["arch"] for t in trained if "duplicate_of" not in t.user_attrs]
        assert len(archs) == len(set(archs)), "an architecture was trained twice"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        optuna.delete_study(study_name=name, storage=open_storage(url))
