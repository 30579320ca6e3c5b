"""Termination signals as KeyboardInterrupt, remembered.

`nas.cli.main` installs `handler` for SIGINT and SIGTERM: each signal is appended to
`received` and raised as KeyboardInterrupt(signum), so every command unwinds (partial
outputs removed) and exits 128 + the signal. The record is what lets the exit status and
`nas search` see a signal whose KeyboardInterrupt a C++ layer (TorchScript's compiler, a
pybind callback) turned into a RuntimeError that was then caught as an ordinary failure.
"""

import signal

SIGNALS = (signal.SIGINT, signal.SIGTERM)
received: list[int] = []  # the signals handled, in order


def handler(signum, frame):
    received.append(signum)
    raise KeyboardInterrupt(signum)


def install() -> dict:
    """Handle SIGNALS as above (the record cleared); return the handlers replaced, for
    `restore` ({} where signals cannot be set: not the main thread)."""
    received.clear()
    replaced = {}
    try:
        for sig in SIGNALS:
            replaced[sig] = signal.signal(sig, handler)
    except ValueError:
        pass
    return replaced


def restore(replaced: dict) -> None:
    for sig, previous in replaced.items():
        signal.signal(sig, previous)
