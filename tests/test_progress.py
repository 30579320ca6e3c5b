"""Progress in a pipe is plain lines (nas/progress.py); --threads / --quiet on nas train."""

import io
import subprocess
import sys

from nas.progress import Lines, bar

ARCH = "in_r28_c1-stem_c8_k3_s1_w8_a8-ir_r1_k3_s2_e4_c16_w4_a4-head_c32_w8_a8-fc_n10_w8_a8"


def test_lines_print_once_per_multiple_and_at_the_end():
    out = io.StringIO()
    b = bar(10, "train", "step", line_every=4, file=out)
    assert isinstance(b, Lines)  # a StringIO is not a terminal
    for i in range(10):
        b.update(1)
        b.set_postfix(loss=f"{i:.1f}", refresh=False)
    b.close()
    b.close()
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["nas: train: 4/10 steps", "nas: train: 8/10 steps",
                                                      "nas: train: 10/10 steps"]
    assert "loss 9.0" in lines[-1] and "\r" not in out.getvalue()


def test_assigning_n_prints_when_it_moves():
    out = io.StringIO()
    b = Lines(None, "search", "trial", file=out)
    b.n = 2
    b.set_postfix({"best": "0.9"})
    b.set_postfix({"best": "0.9"})  # same count: no new line
    b.n = 3
    b.set_postfix({"best": "0.91"})
    b.close()
    assert [line.split(",")[0] for line in out.getvalue().splitlines()] == ["nas: search: 2 trials",
                                                                            "nas: search: 3 trials"]


def test_disabled_bar_prints_nothing():
    out = io.StringIO()
    b = bar(5, "x", "step", enabled=False, file=out)
    b.update(5)
    b.close()
    assert out.getvalue() == ""


def _train(*extra):
    return subprocess.run([sys.executable, "-m", "nas.cli", "train", "--arch", ARCH, "--dataset", "digits",
                           "--epochs", "2", "--subset", "200", *extra], capture_output=True, text=True)


def test_train_in_a_pipe_logs_one_line_per_epoch_and_quiet_logs_none():
    r = _train("--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr
    epochs = [line for line in r.stderr.splitlines() if line.startswith("nas: train: ")]
    assert len(epochs) == 2 and "epoch 2" in epochs[-1], r.stderr
    assert "1 threads" in r.stdout
    q = _train("--threads", "1", "--quiet")
    assert q.returncode == 0 and not [line for line in q.stderr.splitlines() if line.startswith("nas: train: ")]
