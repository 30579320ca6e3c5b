"""`nas report`: a self-contained plotly HTML page of a study (see `nas.report.page`)."""

import json
import math
import sys
from pathlib import Path

from nas import fsio
from nas.errors import UsageError


def add_arguments(p):
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", help="Optuna storage URL (default journal file studies/<study>.journal)")
    p.add_argument("--trial", type=int, help="trial to show per layer (default: the best feasible trained trial)")
    p.add_argument("-o", "--output", default="report.html", help="HTML file to write (default report.html)")
    p.add_argument("--profile", help="device profile from `nas calibrate` for the latency figures (default: "
                                     "$NAS_PROFILE, else this host's)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run(args) -> int:
    from nas.report import page
    from nas.report.study import open_study
    from nas.search.records import TrialRecord
    from nas.search.results import tally

    out = fsio.check_output_path(args.output)  # a link, a missing or unwritable folder: before any work
    if out.is_dir():
        raise UsageError(f"-o {args.output!r}: is a directory; expected an HTML file path like report.html")
    study, _, url = open_study(args.study, args.storage)
    report = page.build(study, url, args.trial, page.Latency.load(args.profile))
    text = page.render(report)
    fsio.write_text(out, text)  # atomic: a full disk leaves the old report, not half a new one
    chosen = report.chosen
    chosen_record = TrialRecord.of(chosen)
    c = tally(report.trials)
    summary = {
        "report": str(out.resolve()), "bytes": out.stat().st_size, "study": study.study_name, "storage": url,
        **c.to_dict(), "pareto_trials": report.pareto, "best_trial": report.best, "chosen_trial": chosen.number,
        "arch": chosen_record.arch, "costs": chosen_record.costs,
        "latency_ms": report.latency.total(chosen), "metrics": report.metrics,
        "figures": [k for k, (_, fig, _) in report.figures.items() if fig is not None],
        "notes": [note for _, _, note in report.figures.values() if note]
        + ([report.profile_note] if report.profile_note else []),
    }
    if args.json:
        print(json.dumps(_finite(summary)))
    else:
        print(f"wrote {out} ({summary['bytes'] / 1e6:.1f} MB): study {study.study_name!r}, {c.trials} trials "
              f"({c.trained} trained, {c.duplicates} duplicate, {c.infeasible} infeasible, {c.pruned} pruned), "
              f"trial {chosen.number} per layer")
        for note in summary["notes"]:
            print(f"nas: note: {note}", file=sys.stderr)
    return 0


def _finite(value):
    """JSON has no inf / nan: None in their place."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
