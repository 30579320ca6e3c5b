"""Peak training memory on CPU, measured from the kernel's own accounting.

Python-level tracers (tracemalloc) do not see PyTorch's C++ allocations, and the CPU
allocator keeps no statistics, so the honest figure is the process's resident set size.
`PeakRSS` measures the largest growth of resident memory during a block: parameters'
gradients, optimizer state, activations kept for backward, batch copies and the allocator's
own overhead. The figure covers the whole process, so other threads working at the same time
are counted too. Memory freed earlier in the process but kept by the C allocator would be
reused without any growth (a second training in one process read 139 KB against the
first's 57.6 MB), so on glibc the free heap is handed back to the kernel first
(`malloc_trim(0)`), and a later block grows the RSS by what it really uses. `method` says how it was measured, best first:

- ``vmhwm``: reset the kernel's high-water mark (Linux: write ``5`` to
  ``/proc/self/clear_refs``, which sets VmHWM to the current RSS), run the block, report
  ``VmHWM(exit) - VmRSS(entry)``. Exact. Used only when the reset is seen to take effect:
  some sandboxes refuse the write, or accept it and leave VmHWM where it was.
- ``sampled``: a daemon thread reads VmRSS every `SAMPLE_S` seconds during the block. It
  misses a peak shorter than one interval, so it is a lower bound; a training step holds its
  memory for far longer than that.
- ``ru_maxrss``: the growth of ``getrusage().ru_maxrss`` where there is no /proc (macOS). A
  lower bound: 0 when the process peaked higher before the block.
"""

import ctypes
import ctypes.util
import resource
import sys
import threading
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
SAMPLE_S = 0.002


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _release_free_heap() -> None:
    """glibc: return freed heap pages to the kernel, so that reusing them shows as RSS growth."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        pass


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # macOS reports bytes, Linux KiB


def _reset_high_water_mark() -> bool:
    """Reset VmHWM to the current RSS; True only if the kernel visibly did it."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    hwm, rss = _status_kib("VmHWM"), _status_kib("VmRSS")
    # Pages may be faulted in between the two reads, so allow a little slack.
    return hwm is not None and rss is not None and hwm <= rss + 4096


class PeakRSS:
    """Context manager: ``with PeakRSS() as m: ...`` then ``m.peak_bytes`` and ``m.method``."""

    def __init__(self):
        self.peak_bytes = 0
        self.method = ""
        self._start = 0
        self._sampled_kib = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while True:
            rss = _status_kib("VmRSS")
            if rss is not None and rss > self._sampled_kib:
                self._sampled_kib = rss
            if self._stop.wait(SAMPLE_S):
                return

    def __enter__(self) -> "PeakRSS":
        _release_free_heap()
        rss = _status_kib("VmRSS")
        if rss is None:
            self._start, self.method = _maxrss_bytes(), "ru_maxrss"
        elif _reset_high_water_mark():
            self._start, self.method = (_status_kib("VmRSS") or rss) * 1024, "vmhwm"
        else:
            self._start, self.method = rss * 1024, "sampled"
            self._sampled_kib = rss
            self._thread = threading.Thread(target=self._sample, name="nas-peak-rss", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.method == "vmhwm":
            end = (_status_kib("VmHWM") or 0) * 1024
        elif self.method == "sampled":
            self._stop.set()
            self._thread.join()
            end = max(self._sampled_kib, _status_kib("VmRSS") or 0) * 1024
        else:
            end = _maxrss_bytes()
        self.peak_bytes = max(0, end - self._start)


METHODS = {
    "vmhwm": "peak RSS growth: VmHWM reset via /proc/self/clear_refs at start, VmHWM(end) - VmRSS(start)",
    "sampled": f"peak RSS growth sampled every {SAMPLE_S * 1000:g} ms from /proc/self/status (lower bound)",
    "ru_maxrss": "growth of getrusage ru_maxrss (lower bound: 0 if the process peaked higher before)",
}
