"""Measurements on a busy machine are right or say they are not (nas/measure/load.py)."""

import os
import subprocess
import sys
import time

import pytest

from nas.measure.load import NOISE_LIMIT, Conditions, CpuWatch, cores, free_cores

BURN = "import time\nend = time.time() + 30\nwhile time.time() < end: pass\n"


@pytest.fixture
def burners():
    """Start n processes that each keep one core busy; stopped at teardown."""
    procs = []

    def start(n):
        procs.extend(subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(n))
        time.sleep(0.3)

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_the_warning_rule():
    n = os.cpu_count()
    assert Conditions(threads=1, others_share=0.0, noise=0.05).warning() is None
    busy = Conditions(threads=cores(), others_share=1.0, noise=0.05).warning()
    assert busy and "other processes used 100%" in busy and ("--threads 1" in busy) == (cores() > 1)
    noisy = Conditions(threads=1, others_share=None, noise=NOISE_LIMIT + 0.1).warning()
    assert noisy and "IQR / median" in noisy
    assert Conditions(threads=1, others_share=None, noise=0.0).to_dict()["warning"] is None
    assert n >= 1


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="/proc/stat is Linux-only")
def test_cpu_watch_sees_another_process(burners):
    burners(1)
    with CpuWatch() as w:
        time.sleep(0.5)
    assert w.others_cores is not None and w.others_cores >= 0.7, w.others_cores
    assert free_cores() <= max(1, cores() - 1 + 0.3)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="/proc/stat is Linux-only")
def test_latency_under_full_load_is_close_to_idle_or_warned(burners, capsys):
    import torch

    import nas
    from nas.measure.timing import measure_inference

    model = nas.build("in_r28_c1-stem_c16_k3_s1_w8_a8-ir_r2_k3_s2_e4_c32_w8_a8-head_c64_w8_a8-fc_n10_w8_a8").eval()
    x = torch.randn(1, 1, 28, 28)
    saved = torch.get_num_threads()
    torch.set_num_threads(cores())
    try:
        idle = measure_inference(model, x, repeats=30)
        burners(cores())  # every core busy with another process
        loaded = measure_inference(model, x, repeats=30)
    finally:
        torch.set_num_threads(saved)
    warning = loaded.conditions.warning()
    assert loaded.median_ms <= 3 * idle.median_ms or warning, (idle.median_ms, loaded.median_ms, loaded.conditions)
    assert warning, f"every core was busy with another process, yet no warning ({loaded.conditions})"
