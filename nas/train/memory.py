"""Peak training memory on CPU, measured from the kernel's own accounting.

Python-level tracers (tracemalloc) do not see PyTorch's C++ allocations, and the CPU
allocator keeps no statistics, so the honest figure is the process's resident set size.
`PeakRSS` resets the kernel's high-water mark (Linux: write ``5`` to
``/proc/self/clear_refs``, which sets VmHWM to the current RSS), runs the block, and reports
``VmHWM(exit) - VmRSS(entry)``: the largest growth of resident memory during the block —
parameters' gradients, optimizer state, activations kept for backward, batch copies and the
allocator's own overhead. Where the reset is not possible it falls back to the growth of
``getrusage().ru_maxrss``, which is a lower bound (0 when the process peaked higher
earlier); `method` says which one was used. The figure covers the whole process, so other
threads working at the same time are counted too.
"""

import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # macOS reports bytes, Linux KiB


class PeakRSS:
    """Context manager: ``with PeakRSS() as m: ...`` then ``m.peak_bytes`` and ``m.method``."""

    def __init__(self):
        self.peak_bytes = 0
        self.method = ""
        self._start = 0

    def __enter__(self) -> "PeakRSS":
        try:
            _CLEAR_REFS.write_text("5")
            rss = _status_kib("VmRSS")
            if rss is None:
                raise OSError("no VmRSS")
            self._start, self.method = rss * 1024, "vmhwm"
        except OSError:
            self._start, self.method = _maxrss_bytes(), "ru_maxrss"
        return self

    def __exit__(self, *exc) -> None:
        if self.method == "vmhwm":
            end = (_status_kib("VmHWM") or 0) * 1024
        else:
            end = _maxrss_bytes()
        self.peak_bytes = max(0, end - self._start)


METHODS = {
    "vmhwm": "peak RSS growth: VmHWM reset via /proc/self/clear_refs at start, VmHWM(end) - VmRSS(start)",
    "ru_maxrss": "growth of getrusage ru_maxrss (lower bound: 0 if the process peaked higher before)",
}
