"""`nas` command line. Each subcommand lives beside the code it drives and exposes
`add_arguments(parser)` and `run(args) -> int`; this module only wires them up.

User mistakes raise `nas.errors.UsageError`: printed as one line, exit code 2.
`--debug` shows the traceback of any error.
"""

import argparse
import importlib
import os
import sys

from nas.errors import UsageError

# command -> (module with add_arguments/run, one-line help). Modules load lazily so that
# `nas --help` and light commands stay fast.
COMMANDS = {
    "search": ("nas.search.cli", "search a space for the best feasible architecture under budgets"),
    "report": ("nas.report.cli", "write a self-contained plotly HTML report of a study"),
    "dashboard": ("nas.report.dashboard", "serve optuna-dashboard on a study's storage (127.0.0.1)"),
    "export": ("nas.export.cli", "export a trial as a deployable bundle, size verified against the budget"),
    "infer": ("nas.export.infer", "run an exported bundle on a dataset"),
    "cost": ("nas.cost.cli", "analytic costs of an arch string or a timm model"),
    "space": ("nas.space.cli", "inspect a search space: show its size and extremes, sample arch strings"),
    "train": ("nas.train.cli", "train an arch string quantization-aware on a dataset"),
    "calibrate": ("nas.cost.calibrate", "measure this device and fit the latency model"),
    "compress": ("nas.compress.cli", "prune, share weights or quantize a trained float model; exact payload"),
    "bench": ("nas.bench", "benchmarks that print their figures: kernels, search, pruners, proxies, train"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage errors: one line, exit 2
        raise UsageError(f"{self.prog}: {message}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only `command`'s module is imported to add its arguments."""
    parser = _Parser(prog="nas", description="Hardware-aware NAS and scaling for compact CNNs.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == command:
            _module(module).add_arguments(p)
    return parser


def _module(name: str):
    return importlib.import_module(name)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or os.environ.get("NAS_DEBUG") == "1"
    try:
        command = next((a for a in argv if not a.startswith("-")), None)
        args = build_parser(command).parse_args(argv)
        return int(_module(args._module).run(args) or 0)
    except UsageError as e:
        if debug:
            raise
        print(f"nas: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
