"""`nas` command line. Each subcommand (`nas.commands.<name>`, or a module beside the code it drives) exposes
`add_arguments(parser)` and `run(args) -> int`; this module only wires them up.

The one exception boundary (`main`): user mistakes (`nas.errors.UsageError`), system errors
(OSError: full disk, read-only, permissions, name too long; printed with the path), storage
errors (an unreachable or broken database) and exhausted memory are one line and exit 2;
anything else is a bug: one line naming it, exit 1. `--debug` shows the traceback of any
error. Ctrl-C exits 130 and SIGTERM 143 (128 + the signal), finished trials kept.
"""

import argparse
import importlib
import os
import signal
import sys

import nas
from nas import interrupts
from nas.errors import UsageError

# command -> (module with add_arguments/run, one-line help). Modules load lazily so that
# `nas --help` and light commands stay fast.
COMMANDS = {
    "search": ("nas.commands.search", "search a space for the best feasible architecture under budgets"),
    "report": ("nas.commands.report", "write a self-contained plotly HTML report of a study"),
    "dashboard": ("nas.report.dashboard", "serve optuna-dashboard on a study's storage (127.0.0.1)"),
    "export": ("nas.commands.export", "export a trial as a deployable bundle, size verified against the budget"),
    "infer": ("nas.export.infer", "run an exported bundle on a dataset"),
    "cost": ("nas.commands.cost", "analytic costs of an arch string or a timm model"),
    "space": ("nas.commands.space", "inspect a search space: show its size and extremes, sample arch strings"),
    "train": ("nas.commands.train", "train an arch string quantization-aware on a dataset"),
    "calibrate": ("nas.measure.calibrate", "measure this device and fit the latency model"),
    "compress": ("nas.commands.compress", "prune, share weights or quantize a trained float model; exact payload"),
    "scale": ("nas.commands.scale", "compound scaling: a base network -> the family B1..Bn under budgets"),
    "bench": ("nas.bench", "benchmarks that print their figures: kernels, infer, search, pruners, fidelity, proxies, train, startup, compress"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage errors: one line, exit 2
        where = f" (see `{self.prog} --help`)" if self.prog != "nas" else " (see `nas --help`)"
        raise UsageError(f"{message}{where}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only `command`'s module is imported to add its arguments."""
    parser = _Parser(prog="nas", description="Hardware-aware NAS and scaling for compact CNNs.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"nas {nas.__version__}",
                        help="print the version (from the package metadata) and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == command:
            _module(module).add_arguments(p)
            _strict_numbers(p)
    return parser


def _ascii_number(kind):
    """int / float for argparse, ASCII only: Python's int('３') is 3, so full-width and other
    Unicode digits would pass silently (issue 18); so would '1_000' and surrounding spaces."""
    def parse(text: str):
        t = text.strip()
        if not text.isascii() or t != text or "_" in text or len(text) > 40:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a {'whole ' if kind is int else ''}number; "
                                             f"expected ASCII digits, e.g. {'3' if kind is int else '0.5'}")
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
    parse.__name__ = kind.__name__
    return parse


def _seed(text: str) -> int:
    """A seed: numpy, torch and Optuna take 0 .. 2**32-1 differently; one range for every command."""
    from nas import limits

    value = _ascii_number(int)(text)
    if not 0 <= value <= limits.MAX_SEED:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number from 0 to {limits.MAX_SEED}")
    return value


def _strict_numbers(parser: argparse.ArgumentParser) -> None:
    """Every type=int / type=float option of `parser` and its sub-parsers parses ASCII digits
    only; --seed / --split-seed also within 0 .. limits.MAX_SEED."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _strict_numbers(sub)
        elif action.type in (int, float):
            seed = action.dest in ("seed", "split_seed") and action.type is int
            action.type = _seed if seed else _ascii_number(action.type)


def _module(name: str):
    return importlib.import_module(name)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or os.environ.get("NAS_DEBUG") == "1"
    replaced = interrupts.install()
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        args = build_parser(command).parse_args(argv)
        return int(_module(args._module).run(args) or 0)
    except BrokenPipeError:  # `nas space sample ... | head`: the reader has what it wanted
        try:  # no second error when Python flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return 128 + signal.SIGPIPE  # what a shell reports for a writer its pipe closed on
    except KeyboardInterrupt as e:
        kept = "; finished trials are kept" if command == "search" else ""
        print(f"nas: interrupted{kept}", file=sys.stderr)
        return 128 + (e.args[0] if e.args and isinstance(e.args[0], int) else signal.SIGINT)
    except Exception as e:  # the one boundary: every failure becomes one line
        if interrupts.received:  # the interrupt raised inside a C++ layer (TorchScript) came out wrapped
            print("nas: interrupted", file=sys.stderr)
            return 128 + interrupts.received[-1]
        if debug:
            raise
        line, code = _one_line(e)
        print(f"nas: error: {line}", file=sys.stderr)
        return code
    finally:
        interrupts.restore(replaced)


def _one_line(e: Exception) -> tuple[str, int]:
    """(message, exit code): known failure classes exit 2, anything else is a bug (exit 1)."""
    if isinstance(e, AssertionError) and isinstance(e.__context__, (OSError, UsageError)):
        # Optuna's _run_trial (optuna 4.x) replaces a storage write that failed after the
        # objective (a full disk) by `AssertionError: Should not reach.` in its finally block;
        # the real failure is that error's context
        e = e.__context__
    if isinstance(e, UsageError):
        return str(e), 2
    if isinstance(e, OSError):
        from nas.fsio import write_error
        where = e.filename if e.filename is not None else "a file"
        return str(write_error(where, e, "cannot use")), 2
    if isinstance(e, MemoryError):
        return "out of memory; expected smaller inputs (see docs/limits.md)", 2
    if isinstance(e, RecursionError):
        return "input nested too deeply (see docs/limits.md)", 2
    first = (str(e).strip().splitlines() or [""])[0][:300]
    if type(e).__module__.split(".")[0] in ("sqlalchemy", "psycopg2") or "StorageInternalError" in type(e).__name__:
        return f"storage failed ({type(e).__name__}: {first}); finished trials are kept", 2
    return f"internal error {type(e).__name__}: {first} (run with --debug for the traceback)", 1


if __name__ == "__main__":
    sys.exit(main())
