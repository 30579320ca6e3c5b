"""The one exception boundary of nas/cli.py: known failure classes are one line and exit 2 with
the path; anything else is exit 1 with a one-line summary pointing at --debug."""

import errno
import os
from pathlib import Path

import pytest

from nas.cli import _one_line, main
from nas.errors import UsageError


def test_known_failures_are_exit_2_with_the_path():
    line, code = _one_line(OSError(errno.ENOSPC, "No space left on device", "/data/studies/s.journal"))
    assert code == 2 and "/data/studies/s.journal" in line and "no space left" in line
    line, code = _one_line(OSError(errno.ENAMETOOLONG, "File name too long", "x" * 300))
    assert code == 2 and "file name too long" in line
    assert _one_line(UsageError("--seed -1: expected >= 0")) == ("--seed -1: expected >= 0", 2)
    assert _one_line(MemoryError())[1] == 2


def test_optuna_should_not_reach_is_unwrapped_to_its_storage_error():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "s.journal")
        finally:
            raise AssertionError("Should not reach.")  # what optuna's _run_trial does
    except AssertionError as e:
        line, code = _one_line(e)
    assert code == 2 and "s.journal" in line and "no space" in line


def test_unknown_failures_are_exit_1_pointing_at_debug():
    line, code = _one_line(ZeroDivisionError("division by zero\nsecond line"))
    assert code == 1 and "ZeroDivisionError: division by zero" in line and "--debug" in line and "\n" not in line


def test_argparse_errors_have_a_single_prefix(capsys):
    assert main(["cost", "--no-such-option"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nas: error: ") and "nas: error: nas" not in err and len(err.splitlines()) == 1


def test_a_path_over_255_bytes_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--study", "s", "--storage", f"journal:{'x' * 300}.journal", "-o", "r.html"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert os.listdir(tmp_path) == []


def test_version_comes_from_the_package_metadata(capsys):
    from importlib.metadata import version
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    import tomllib
    from pathlib import Path
    declared = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out.strip() == f"nas {version('nas')}" == f"nas {declared}"


def test_a_reader_closing_the_pipe_is_not_an_error():
    """`nas space sample FILE -n 999999999999 | head -3`: the sampler streams, head exits, the
    next write meets EPIPE; exit 141 (as a shell reports SIGPIPE), nothing on stderr."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(f"{sys.executable} -m nas.cli space sample {repo / 'search_spaces/mcu.yaml'} "
                          f"-n 999999999999 | head -3; exit ${{PIPESTATUS[0]}}", shell=True, executable="/bin/bash",
                          capture_output=True, text=True, timeout=60, cwd=repo)
    assert proc.stdout.count("\n") == 3
    assert proc.returncode == 141, proc.stderr[-500:]
    assert proc.stderr == ""


def test_sigterm_wrapped_by_a_cxx_layer_is_still_exit_143(monkeypatch, capsys):
    """TorchScript's compiler turns the KeyboardInterrupt our SIGTERM handler raises into a
    RuntimeError when the signal lands inside it (CI saw this in `nas export`). The boundary
    knows a signal arrived and exits 143, not 1 with an internal error."""
    import signal

    signals = [True, False]

    def run(args):
        if not signals.pop(0):
            raise RuntimeError("a plain internal error")
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # the real signal, through the real handler
            raise AssertionError("the handler did not raise")
        except KeyboardInterrupt as k:  # what torch.jit's C++ does with an exception from Python
            raise RuntimeError(f"Could not cast attribute 'conv': KeyboardInterrupt: {k}") from None

    import importlib

    from nas.cli import COMMANDS
    monkeypatch.setattr(importlib.import_module(COMMANDS["cost"][0]), "run", run)
    assert main(["cost", "--arch", "in_r8_c1-stem_c8_k3_s1_w8_a8-fc_n10_w8_a8"]) == 143
    assert capsys.readouterr().err.strip() == "nas: interrupted"
    assert main(["cost", "--arch", "in_r8_c1-stem_c8_k3_s1_w8_a8-fc_n10_w8_a8"]) == 1  # no signal this call


def test_a_ctrl_c_wrapped_inside_a_trial_still_interrupts_the_search(tmp_path, monkeypatch, capsys):
    """A SIGINT whose KeyboardInterrupt a C++ layer turns into a RuntimeError inside a trial is
    caught by optuna as one failed trial (CI saw the search then run its final retraining and
    exit 0). The search sees the recorded signal: no final retraining, exit 130, and the
    trained trial is kept."""
    import signal

    import optuna

    from nas.search import objective as objective_module

    real_call = objective_module.Objective.__call__
    calls = []

    def call(self, trial):
        calls.append(trial.number)
        if len(calls) == 2:
            try:
                os.kill(os.getpid(), signal.SIGINT)  # the real signal through nas.interrupts' handler
                raise AssertionError("the handler did not raise")
            except KeyboardInterrupt as k:  # what a pybind layer does with it
                raise RuntimeError(f"wrapped: KeyboardInterrupt: {k}") from None
        return real_call(self, trial)

    monkeypatch.setattr(objective_module.Objective, "__call__", call)
    space = str(Path(__file__).resolve().parents[1] / "search_spaces" / "mcu.yaml")
    monkeypatch.chdir(tmp_path)  # the study's weights folder is relative to the working directory
    storage = f"journal:{tmp_path / 's.journal'}"
    rc = main(["search", "--target-mem", "40KB", "--space", space, "--study", "s", "--storage",
               storage, "--dataset", "digits", "--trials", "3", "--subset", "200", "--val-subset", "100",
               "--epochs", "1", "--final-subset", "200", "--final-epochs", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 130, err[-1500:]
    assert "final training" not in err and "interrupted" in err
    study = optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "s.journal"))))
    states = {t.number: t.state for t in study.trials}
    assert states[calls[1]] == optuna.trial.TrialState.FAIL and len(calls) == 2  # no trial started after it
