"""`nas export --study S [--storage URL] (--best | --trial N) -o DIR [--profile FILE|none]`: a deployable bundle.

The use case is the library call `nas.export.trial.export_trial` (trial choice, retraining
a trial without final weights unless ``--no-retrain``, budget refusals, the bundle); this
file parses the arguments, loads the device profile once (`--profile`) and prints the summary.
"""

import json

from nas.units import format_bytes


def add_arguments(p):
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", help="Optuna storage URL (default journal file studies/<study>.journal)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--best", action="store_true", help="the best feasible trained trial")
    which.add_argument("--trial", type=int, help="trial number")
    p.add_argument("-o", "--output", required=True, help="bundle directory to write (must not exist or be empty)")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty output directory")
    p.add_argument("--no-retrain", action="store_true",
                   help="fail instead of retraining a trial that has no final weights")
    p.add_argument("--format", help="extra targets, comma-separated: c (C99 sources), tflite (full-integer "
                   "model.tflite; pip install nas[tflite])")
    p.add_argument("--profile", metavar="FILE|none", help="device profile from `nas calibrate` that prices the "
                   "manifest's latency_ms (default: $NAS_PROFILE, else this host's, as `nas search`); "
                   "'none': no prediction")
    p.add_argument("--threads", type=int, help="torch / kernel threads for evaluation and timing (default: torch's)")
    p.add_argument("--json", action="store_true", help="print the manifest as one JSON object on stdout")


def run(args) -> int:
    from nas.cost.latency import profile_option
    from nas.export.bundle import set_threads
    from nas.export.formats import parse_formats
    from nas.export.trial import export_trial

    formats = parse_formats(args.format)  # before any work
    profile = profile_option(args.profile)  # loaded once, here, and passed down
    set_threads(args.threads)
    manifest = export_trial(args.study, args.output, storage=args.storage, trial=None if args.best else args.trial,
                            retrain=not args.no_retrain, force=args.force, formats=formats, profile=profile)
    if args.json:
        print(json.dumps(manifest))
    else:
        print_summary(args.output, manifest)
    return 0


def print_summary(out: str, m: dict) -> None:
    budget = f" (budget {format_bytes(m['budget_mem_bytes'])})" if m.get("budget_mem_bytes") else ""
    latency = f"{m['latency_ms']:.3g} ms" if m.get("latency_ms") is not None else "- (no device profile)"
    print(f"bundle {out}: trial {m.get('trial')} of study {m.get('study')}")
    print(f"  arch      {m['arch']}")
    print(f"  payload   {m['payload_bytes']} bytes written = predicted weight_bytes {m['weight_bytes']}{budget}")
    print(f"  accuracy  {m['accuracy']:.4f} on {m['test_images']} test images (fake-quant model "
          f"{m['fake_quant_accuracy']:.4f}; predictions agree on {100 * m['prediction_agreement']:.2f}%)")
    print(f"  latency   {m['latency_measured_ms']:.3g} ms/image measured (batch 1, {m['threads']} threads, "
          f"kernels {m['kernels']}), predicted {latency}; {m['throughput_ips']:.0f} images/s at batch 256")
    paths = [e["path"] for e in m["layer_paths"]]
    where = ", ".join(f"{paths.count(p)} {p}" for p in dict.fromkeys(paths))
    print(f"  layers    {where} (nas.export.convert; per layer in the manifest's layer_paths)")
    print(f"  cost      {m['params']} params, {m['macs']} macs, peak activations {format_bytes(m['peak_act_bytes'])}")
