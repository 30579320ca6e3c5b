"""The one timing protocol: how `nas` measures a forward pass's wall time.

Every measured figure (`latency_measured_ms` of `nas cost --measure`, the calibration runs,
the search's finalists, `nas export` / `nas infer`, the trainer's inference time) is timed
here: eval mode, `torch.inference_mode()`, the garbage collector paused, warm-up runs (a
count and a minimum time) first, then individually timed calls (`time.perf_counter_ns`,
CUDA synchronised) until both a minimum count and a minimum time are reached (capped);
the statistic is the median of the runs (pooled over `rounds` back-to-back rounds).
Every timing also records what the machine was doing meanwhile (`nas.measure.load`:
other processes' CPU share, the spread of the runs); a figure measured on a busy machine
carries a one-line warning, printed on stderr by `measure_inference_ms` and kept in the
`Timing`. torch is imported inside the functions so that importing this module stays light.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass

from nas.measure.load import Conditions, CpuWatch
from nas.space.spec import ArchSpec


@dataclass(frozen=True)
class Protocol:
    """How networks are timed (see the module docstring); repeats and times are per round."""

    rounds: int = 1  # passes over all networks; a network's samples from every pass are pooled
    warmup_runs: int = 5
    warmup_s: float = 0.1
    min_repeats: int = 15
    min_time_s: float = 0.4
    max_repeats: int = 300

    def to_dict(self) -> dict:
        return {"batch": 1, "statistic": "median", "pooled": "runs of all rounds", "noise": "iqr / median",
                "rounds": self.rounds, "warmup_runs": self.warmup_runs, "warmup_s": self.warmup_s,
                "min_repeats": self.min_repeats, "min_time_s": self.min_time_s, "max_repeats": self.max_repeats}


MEASURE = Protocol()  # one network (`nas cost --measure`)
FULL = Protocol(rounds=3, warmup_runs=2, warmup_s=0.03, min_repeats=5, min_time_s=0.1, max_repeats=100)
QUICK = Protocol(rounds=2, warmup_runs=2, warmup_s=0.02, min_repeats=5, min_time_s=0.04, max_repeats=40)


@dataclass(frozen=True)
class Timing:
    median_ms: float
    q1_ms: float
    q3_ms: float
    repeats: int
    round_spread: float = 0.0  # (max - min) of the per-round medians over the median
    others_share: float | None = None  # share of all CPUs other processes used meanwhile
    threads: int = 1

    @classmethod
    def of(cls, rounds: list[list[float]], others_share: float | None = None, threads: int = 1) -> "Timing":
        """Pool the runs (ms) of every round."""
        runs = [t for r in rounds for t in r]
        q1, _, q3 = statistics.quantiles(runs, n=4) if len(runs) > 1 else (runs[0],) * 3
        median = statistics.median(runs)
        meds = [statistics.median(r) for r in rounds]
        return cls(median, q1, q3, len(runs), (max(meds) - min(meds)) / median if median > 0 else 0.0,
                   others_share, threads)

    @property
    def conditions(self) -> Conditions:
        return Conditions(threads=self.threads, others_share=self.others_share, noise=self.noise)

    @property
    def noise(self) -> float:
        """Interquartile range over the median."""
        return (self.q3_ms - self.q1_ms) / self.median_ms if self.median_ms > 0 else 0.0

    def to_dict(self) -> dict:
        return {"median_ms": self.median_ms, "q1_ms": self.q1_ms, "q3_ms": self.q3_ms, "repeats": self.repeats,
                "conditions": self.conditions.to_dict()}


def example_input(arch: ArchSpec, device: str = "cpu"):
    """The timed input: a fixed seeded N(0, 1) image (1, in_chs, R, R)."""
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randn(1, arch.in_chs, arch.resolution, arch.resolution, generator=g).to(device)


def build_for_timing(arch: ArchSpec, device: str = "cpu"):
    """The network as it is timed: what `nas infer` runs, i.e. the packed model
    (`nas.export.deploy.packed_model`) of `arch` built with seeded random weights and read back
    from its payload (2/4/8-bit layers on the integer kernels, 1-bit on the binary kernels,
    the rest in PyTorch; `nas.export.convert`), eval mode. That is what `latency_ms` predicts.

    On CUDA (no integer / binary kernels there) the fake-quant model, as before: a CUDA
    profile prices the terms of the CPU packed model, so treat its figures as rough.

    (`nas.export` sits above `nas.measure`; it is imported here, inside the function, because
    the deployed form is what is measured: see docs/architecture.md.)"""
    import torch

    if device == "cpu":
        from nas.export.bench import packed_of
        from nas.space import encode

        return packed_of(encode(arch), seed=0)
    from nas.blocks.model import build_model

    torch.manual_seed(0)
    return build_model(arch).eval().use_kernels(True).to(device)


def time_runs(model, x, protocol: Protocol = MEASURE, device: str = "cpu") -> list[float]:
    """Warm-up, then the wall times (ms) of individually timed `model(x)` calls (one round)."""
    import gc

    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    clock = time.perf_counter_ns
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with torch.inference_mode():
            start, runs = time.perf_counter(), 0
            while runs < protocol.warmup_runs or time.perf_counter() - start < protocol.warmup_s:
                model(x)
                sync()
                runs += 1
            times = []
            start = time.perf_counter()
            while len(times) < protocol.min_repeats or (time.perf_counter() - start < protocol.min_time_s
                                                        and len(times) < protocol.max_repeats):
                t = clock()
                model(x)
                sync()
                times.append((clock() - t) / 1e6)
    finally:
        if was_enabled:
            gc.enable()
    return times


def time_forward(model, x, protocol: Protocol = MEASURE, device: str = "cpu") -> Timing:
    """Median / quartiles of `model(x)` wall time (ms) over `protocol.rounds` back-to-back rounds."""
    import torch

    with CpuWatch() as watch:
        rounds = [time_runs(model, x, protocol, device) for _ in range(protocol.rounds)]
    return Timing.of(rounds, watch.others_share, torch.get_num_threads())


def measure_arch(arch: ArchSpec, protocol: Protocol = MEASURE, device: str = "cpu") -> Timing:
    """Build `arch` and time its forward pass (`nas cost --measure`)."""
    return time_forward(build_for_timing(arch, device), example_input(arch, device), protocol, device)


def warn_if_unreliable(timing: Timing, what: str) -> str | None:
    """Print `timing`'s warning (if any) on stderr as one line naming `what`; return it."""
    warning = timing.conditions.warning()
    if warning:
        print(f"nas: warning: {what}: {warning}", file=sys.stderr)
    return warning


def measure_inference(model, example, repeats: int = 30, warmup: int = 5, channels_last: bool = False) -> Timing:
    """`Timing` (ms per call) of ``model(example)`` in eval mode, under the protocol above with
    exactly `warmup` warm-up runs and `repeats` timed runs. Uses the calling thread settings
    (`torch.get_num_threads()`)."""
    import torch

    if repeats < 1:
        raise ValueError(f"repeats={repeats!r}: expected >= 1")
    if channels_last:
        example = example.contiguous(memory_format=torch.channels_last)
    protocol = Protocol(warmup_runs=warmup, warmup_s=0.0, min_repeats=repeats, min_time_s=0.0, max_repeats=repeats)
    was_training = model.training
    model.eval()
    try:
        with CpuWatch() as watch:
            times = time_runs(model, example, protocol, example.device.type)
    finally:
        model.train(was_training)
    return Timing.of([times], watch.others_share, torch.get_num_threads())


def measure_inference_ms(model, example, repeats: int = 30, warmup: int = 5, channels_last: bool = False,
                         what: str = "inference latency") -> float:
    """Median milliseconds per image of ``model(example)`` (`measure_inference`); `example` is
    a real input batch (B, C, H, W): B = 1 measures latency, a larger B throughput per image.
    A figure measured on a busy machine gets a one-line warning on stderr naming `what`."""
    timing = measure_inference(model, example, repeats, warmup, channels_last)
    warn_if_unreliable(timing, what)
    return timing.median_ms / example.shape[0]
