"""How busy the machine is while `nas` measures: one home for "other processes' load".

A wall-clock figure is only as good as the machine was quiet. On a shared machine OpenMP
threads that spin for cores other processes hold can make a forward pass an order of
magnitude slower (the figure once measured is in docs/architecture.md, "Lab figures").
Three defences, used by the one timing protocol (`nas.measure.timing`):

- `CpuWatch`: the share of the machine's CPU time that OTHER processes used during a
  measurement, from /proc/stat (all processes) minus this process's own CPU time;
- `free_cores()`: cores left over by other processes in a short window, so a command can
  default its thread count to what is free (`auto_threads`);
- `noisy(...)`: the one rule that says a figure is not to be trusted, and why (one line).

`nas/__init__.py` also defaults `OMP_WAIT_POLICY=PASSIVE` (before torch loads OpenMP): idle
threads sleep instead of spinning on cores that other processes need.
Linux only (/proc); elsewhere every figure here is None and nothing is warned.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

NOISE_LIMIT = 0.3        # interquartile range over the median above which a timing is noisy
OVERSUBSCRIBED = 0.5     # cores of slack: others' busy cores + our threads > cores + this


def busy_jiffies() -> int | None:
    """CPU time (clock ticks) all processes have used, from /proc/stat; None elsewhere."""
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        return sum(v) - v[3] - v[4]  # minus idle and iowait
    except (OSError, ValueError, IndexError):
        return None


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class CpuWatch:
    """``with CpuWatch() as w: ...`` then ``w.others_share`` (0..1 of all cores, or None)
    and ``w.others_cores`` (the same in cores)."""

    def __enter__(self) -> "CpuWatch":
        self._start = (time.perf_counter(), busy_jiffies(), time.process_time())
        self.others_share = None
        return self

    def __exit__(self, *exc) -> None:
        (w0, b0, c0), (w1, b1, c1) = self._start, (time.perf_counter(), busy_jiffies(), time.process_time())
        if b0 is None or b1 is None or w1 <= w0:
            return
        others = (b1 - b0) / os.sysconf("SC_CLK_TCK") - (c1 - c0)
        self.others_share = min(1.0, max(0.0, others / ((w1 - w0) * (os.cpu_count() or 1))))

    @property
    def others_cores(self) -> float | None:
        return None if self.others_share is None else self.others_share * (os.cpu_count() or 1)


def free_cores(window_s: float = 0.25) -> int | None:
    """Cores that other processes left idle over the next `window_s` seconds (>= 1), or None."""
    with CpuWatch() as w:
        time.sleep(window_s)
    if w.others_cores is None:
        return None
    return max(1, min(cores(), round(cores() - w.others_cores)))


def auto_threads() -> int:
    """The thread count a measuring command uses unless told (--threads): the free cores."""
    return free_cores() or cores()


@dataclass(frozen=True)
class Conditions:
    """What the machine was doing while a figure was measured."""

    threads: int
    others_share: float | None  # share of all cores other processes used meanwhile
    noise: float                # IQR / median of the runs

    def warning(self) -> str | None:
        """One line saying why the figure is not to be trusted, or None."""
        why = []
        if self.others_share is not None:
            others = self.others_share * (os.cpu_count() or 1)
            if others + self.threads > cores() + OVERSUBSCRIBED:
                why.append(f"other processes used {self.others_share:.0%} of the {os.cpu_count()} CPUs "
                           f"while it ran at {self.threads} threads")
        if self.noise > NOISE_LIMIT:
            why.append(f"its runs spread widely (IQR / median {self.noise:.2f} > {NOISE_LIMIT})")
        if not why:
            return None
        advice = "rerun on a quiet machine" + (", or with --threads 1" if self.threads > 1 else "")
        return "timing is not reliable: " + "; ".join(why) + f" ({advice})"

    def to_dict(self) -> dict:
        return {"threads": self.threads, "others_share": self.others_share, "noise": round(self.noise, 4),
                "warning": self.warning()}


def add_threads_argument(parser) -> None:
    """`--threads N` for every command that measures or trains (one spelling, one default)."""
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch / kernel threads (default: the cores other processes leave free, "
                             "measured for 0.25 s at start)")


def apply_threads(threads: int | None, where: str = "--threads") -> int:
    """Set torch's thread count (the kernels follow it): `threads`, or the free cores when None.
    Returns the count used."""
    import torch

    if threads is None:
        threads = auto_threads()
    elif isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        from nas.errors import UsageError

        raise UsageError(f"{where} {threads!r}: expected a whole number of threads >= 1")
    torch.set_num_threads(threads)
    return threads
