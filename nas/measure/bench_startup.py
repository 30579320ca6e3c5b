"""`nas bench startup`: how long light commands take from a cold interpreter to exit.

Each command runs `--repeats` times as a fresh `python -m nas.cli ...` subprocess (wall time,
median), beside `python -c pass` as the interpreter's own floor, and `import nas.cost` (what a
notebook pays). Other processes' CPU share during the run is printed: on a busy machine the
figures are upper bounds. Goal (issue: first hour): `nas cost --arch` and `nas space show`
at most 1.0 s.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from nas.errors import UsageError
from nas.measure.load import CpuWatch

ARCH = "in_r28_c1-stem_c16_k3_s1_w8_a8-ir_r2_k3_s2_e6_c24_w4_a4-head_c128_w8_a8-fc_n10_w8_a8"
# `nas space sample search_spaces/default.yaml` (seed 0): a full-sized member of the default space
DEFAULT_ARCH = ("in_r47_c1-stem_c16_k3_s1_w8_a8-ir_r2_k3_s1_e1_c16_w8_a8-grouped_r2_k3_s2_g2_c24_w8_a8-"
                "ir_r2_k3_s2_e6_c40_w2_a2_hs-grouped_r2_k5_s1_g8_c80_w4_a4-grouped_r2_k3_s2_g4_c112_w32_a32-"
                "head_c256_w8_a8-fc_n10_w8_a8")
SPACES = Path(__file__).resolve().parents[2] / "search_spaces"  # the shipped spaces


def commands() -> list[tuple[str, list[str]]]:
    """(label, argv after the interpreter): the interpreter's floor, the imports, then every
    light command; `nas space show` on each shipped space."""
    rows = [
        ("python -c pass", ["-c", "pass"]),
        ("import nas.cost", ["-c", "import nas.cost"]),
        ("nas --help", ["-m", "nas.cli", "--help"]),
        ("nas cost --help", ["-m", "nas.cli", "cost", "--help"]),
        ("nas cost --arch ...", ["-m", "nas.cli", "cost", "--arch", ARCH]),
        ("nas cost --arch <default>", ["-m", "nas.cli", "cost", "--arch", DEFAULT_ARCH]),
        ("nas space sample mcu.yaml", ["-m", "nas.cli", "space", "sample", str(SPACES / "mcu.yaml")]),
    ]
    for path in sorted(SPACES.glob("*.yaml")):
        rows.append((f"nas space show {path.name}", ["-m", "nas.cli", "space", "show", str(path)]))
    return rows


GOAL_S = 1.0


def add_arguments(p) -> None:
    p.add_argument("--repeats", type=int, default=5, help="runs per command (default 5; the median is shown)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _wall(argv: list[str]) -> float:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, *argv], capture_output=True, text=True)
    if r.returncode != 0:
        raise UsageError(f"nas bench startup: `{' '.join(argv)}` failed (exit {r.returncode}): "
                         f"{r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}")
    return time.perf_counter() - t


def run(args) -> int:
    if args.repeats < 1:
        raise UsageError(f"--repeats {args.repeats}: expected a whole number >= 1")
    rows = []
    with CpuWatch() as watch:
        for label, argv in commands():
            print(f"nas: bench startup: {label}", file=sys.stderr, flush=True)
            times = [_wall(argv) for _ in range(args.repeats)]
            rows.append({"command": label, "median_s": statistics.median(times), "min_s": min(times),
                         "repeats": args.repeats})
    result = {"rows": rows, "others_share": watch.others_share, "goal_s": GOAL_S}
    if args.json:
        print(json.dumps(result))
        return 0
    others = "unknown" if watch.others_share is None else f"{watch.others_share:.0%}"
    print(f"start-up, median of {args.repeats} cold runs (other processes used {others} of the CPUs meanwhile)")
    for r in rows:
        mark = ""
        if r["command"].startswith(("nas cost --arch", "nas space show")):
            mark = "  ok" if r["median_s"] <= GOAL_S else f"  over the {GOAL_S:g} s goal"
        print(f"  {r['command']:<32}{r['median_s']:>7.2f} s  (min {r['min_s']:.2f}){mark}")
    return 0
