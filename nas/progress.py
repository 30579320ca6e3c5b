"""Progress on long work, readable on a terminal and in a pipe: one home.

On a terminal, a tqdm bar (redrawn in place). When stderr is not a terminal (a log file, a
pipe, CI), tqdm's carriage returns make a wall of text, so `bar()` returns `Lines` instead:
one plain line each time the count passes a multiple of `line_every` (a trial, an epoch)
and one at the end, each with the latest postfix fields. Both take the same calls:
`update(n)`, assignment to `.n`, `set_postfix(...)`, `close()`.
"""

from __future__ import annotations

import sys
import time


class Lines:
    """The non-terminal progress: newline-terminated lines, flushed, no `\\r`."""

    def __init__(self, total: int | None, desc: str, unit: str, line_every: int = 1, file=None):
        self.total, self.desc, self.unit = total, desc, unit
        self.line_every = max(1, int(line_every))
        self.file = file if file is not None else sys.stderr
        self.n = 0
        self._printed_at = 0
        self._postfix: dict = {}
        self._start = time.perf_counter()
        self._closed = False

    def update(self, k: int = 1) -> None:
        self.n += k
        self._maybe_print()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        self._postfix = {**(ordered_dict or {}), **kwargs}
        self._maybe_print()

    def _maybe_print(self) -> None:
        if self.n // self.line_every > self._printed_at // self.line_every:
            self._print()

    def _print(self) -> None:
        self._printed_at = self.n
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        fields = "".join(f", {k} {v}" for k, v in self._postfix.items())
        elapsed = time.perf_counter() - self._start
        print(f"nas: {self.desc}: {count} {self.unit}s{fields}, {elapsed:.0f} s", file=self.file, flush=True)

    def close(self) -> None:
        if not self._closed and self.n != self._printed_at:
            self._print()
        self._closed = True


def bar(total: int | None, desc: str, unit: str, enabled: bool = True, line_every: int = 1, file=None,
        leave: bool = True):
    """A tqdm bar on a terminal, `Lines` elsewhere, a silent bar when not `enabled`."""
    from tqdm import tqdm

    file = file if file is not None else sys.stderr
    if enabled and not _isatty(file):
        return Lines(total, desc, unit, line_every, file)
    return tqdm(total=total, desc=desc, unit=unit, file=file, disable=not enabled, dynamic_ncols=True, leave=leave)


def _isatty(file) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):
        return False
