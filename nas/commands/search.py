"""`nas search`: constraint-first, multi-fidelity Optuna search."""

import json
import signal

from nas import interrupts
from nas.search.config import (FIDELITIES, OBJECTIVES, OPTION_NAMES, PROXIES, PRUNERS, SAMPLERS, build_config,
                               read_config_file)
from nas.measure.device import add_device_arguments
from nas.units import format_bytes, format_count


def add_arguments(p):
    g = p.add_argument_group("budgets (sizes: 5MB = 5e6 bytes, 5MiB = 5*2^20; times: 2ms, 30m)")
    g.add_argument("--target-mem", help="budget on weight_bytes (deployable weight payload)")
    g.add_argument("--target-act-mem", help="budget on peak_act_bytes (live activations, input counted)")
    g.add_argument("--target-macs", help="budget on macs (multiply-accumulates), e.g. 20M")
    g.add_argument("--target-latency", help="budget on predicted latency (needs `nas calibrate`), e.g. 2ms")
    g.add_argument("--target-flash", help="budget on flash_bytes: the C package's flash on a Cortex-M4 (payload, "
                                          "descriptors, kernels; docs/deploy-c.md); the C export must take the arch")
    g.add_argument("--target-sram", help="budget on sram_bytes: the C package's SRAM on a Cortex-M4 (arena, .bss, "
                                         "stack peak; docs/deploy-c.md); the C export must take the arch")
    p.add_argument("--config", help="study config YAML (studies/*.yaml); options given here override it")
    p.add_argument("--space", help="search space YAML (default search_spaces/default.yaml)")
    p.add_argument("--dataset", help="fashion-mnist (default), digits, cifar10, cifar100, or a path")
    p.add_argument("--data-dir", help="where the dataset's files are")
    p.add_argument("--trials", type=int, help="trained candidates to reach in the study (infeasible, proxy-rejected "
                                             "and duplicate candidates cost no training and do not count)")
    p.add_argument("--max-trials", type=int, help="a hard bound on trials started in the study, whatever their "
                                                  "outcome (infeasible ones count)")
    p.add_argument("--budget", help="wall-clock budget of this run, e.g. 30m (default 10m without --trials / --max-trials)")
    p.add_argument("--study", help="study name (default 'nas')")
    p.add_argument("--storage", help="Optuna storage URL (default journal file studies/<study>.journal)")
    p.add_argument("--workers", type=int, help="worker processes on this machine (default 1)")
    p.add_argument("--seed", type=int, help="seed for sampling, splits and training (default 0)")
    p.add_argument("--objectives", choices=OBJECTIVES, metavar="OBJ",
                   help="accuracy alone with constraints (default) or a Pareto pair: "
                        + " | ".join(OBJECTIVES))
    p.add_argument("--sampler", help=f"one of {', '.join(SAMPLERS)} (default tpe)")
    p.add_argument("--proxy", choices=PROXIES, help="zero-cost proxy gate before training (default none)")
    p.add_argument("--pruner", choices=PRUNERS, help="sh = successive halving over epochs (default), none")
    p.add_argument("--fidelity", choices=FIDELITIES,
                   help="what ranks candidates: subset = a short run of their own, the best few then retrained "
                        "on the final recipe (default); final = the final recipe itself, scored at rungs that "
                        "are fractions of it (a third goes on), the last candidate standing is the result, not "
                        "retrained (docs/training.md)")
    g = p.add_argument_group("sizes (defaults derived from the dataset, docs/training.md; a size over its split "
                             "is capped to it)")
    g.add_argument("--subset", type=int, help="training images per candidate (default: the training split, "
                                              "at most 4000)")
    g.add_argument("--val-subset", type=int, help="validation images per candidate epoch (default: the "
                                                  "validation split, at most 10000)")
    g.add_argument("--epochs", type=int, help="epochs per candidate (default: ~12,000 images seen, at least 2; "
                                              "3 on Fashion-MNIST)")
    g.add_argument("--final-epochs", type=int, help="epochs of the final retraining (default: 4, more where that "
                                                    "sees under 12,000 images)")
    g.add_argument("--final-subset", type=int, help="training images of the final retraining (default: the "
                                                    "training split, at most 20000)")
    p.add_argument("--final-two-stage", type=float, metavar="F",
                   help="Bi-Real's two-stage recipe in the final retraining: the first F of --final-epochs train "
                        "the 1-bit layers real-valued (Clip(-1, x, 1), float weights), the rest binarize from "
                        "them (default 0: one stage; docs/training.md)")
    p.add_argument("--final-top", type=int, help="best distinct feasible architectures to retrain; the best final val accuracy wins (default 3)")
    p.add_argument("--batch-size", type=int, help="candidates' training batch size (default 128)")
    p.add_argument("--final-batch-size", type=int, help="batch size of the final retraining (default 64)")
    add_device_arguments(p)
    p.add_argument("--profile", help="device profile from `nas calibrate` that prices latency_ms (default: "
                                     "$NAS_PROFILE, else this host's); 'none': price no latency")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from nas.search.runner import run_search

    file_options = read_config_file(args.config) if args.config else None
    options = {name: getattr(args, name) for name in OPTION_NAMES}
    config = build_config(options, file_options, args.config or "")
    summary = run_search(config, device_profile(args.profile, config.needs_latency),
                         show_progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print_summary(summary)
    if summary.get("interrupted"):  # `nas search && nas export` must not carry on after Ctrl-C
        return 128 + (interrupts.received[-1] if interrupts.received else signal.SIGINT)
    return 0


def device_profile(path: str | None, required: bool):
    """The search's device profile, loaded once here and passed down: `path`, else `$NAS_PROFILE`,
    else this host's default (`nas.cost.latency.default_profile_path`); None when there is none
    (or `path` is 'none') and the search does not need one. Missing but `required`, or corrupt:
    UsageError."""
    from nas.cost.latency import profile_option

    return profile_option(path, "this search prices latency (--target-latency or a latency objective)"
                          if required else None)


def print_summary(summary: dict) -> None:
    print(f"study {summary['study']}: {summary['trained']} trained, {summary['infeasible']} infeasible "
          f"(never trained), {summary['pruned']} pruned, {summary['duplicates']} duplicates (result reused), "
          f"{summary['failed']} failed in {summary['elapsed_s']} s")
    if not summary.get("best"):
        print("no feasible trained architecture yet")
        return
    print(f"\nbest feasible trials ({summary['storage']}):")
    print(f"{'trial':>5}  {'val acc':>7}  {'weight':>9}  {'peak act':>9}  {'macs':>7}  {'latency':>8}  arch")
    for b in summary["best"]:
        lat = f"{b['latency_ms']:.3g} ms" if b.get("latency_ms") is not None else "-"
        print(f"{b['trial']:>5}  {b['accuracy']:>7.4f}  {format_bytes(b['weight_bytes']):>9}  "
              f"{format_bytes(b['peak_act_bytes']):>9}  {format_count(b['macs']):>7}  {lat:>8}  {b['arch']}")
    for i, f in enumerate(summary.get("final", [])):
        mark = "chosen (best final val)" if i == 0 else ("finalist" if f.get("fidelity") == "final" else "retrained")
        print(f"\nfinal, {mark}: trial {f['trial']}, {f['epochs']} epochs: val {f['val_accuracy']:.4f}, "
              f"test {f['test_accuracy']:.4f}, weight_bytes {format_bytes(f['costs']['weight_bytes'])} "
              f"(budget {format_bytes(summary['budgets']['weight_bytes']) if summary['budgets'].get('weight_bytes') else 'none'}); "
              f"weights {f['weights']}")
        if f["costs"].get("flash_bytes") is not None:  # --target-flash / --target-sram: the C package on a Cortex-M4
            budgets = summary["budgets"]
            print(f"       C on Cortex-M4 (predicted): flash {f['costs']['flash_bytes']} B (budget "
                  f"{budgets.get('flash_bytes') or 'none'}), SRAM {f['costs']['sram_bytes']} B (budget "
                  f"{budgets.get('sram_bytes') or 'none'})")
        predicted = f"{f['latency_ms']:.3g} ms" if f.get("latency_ms") is not None else "no device profile"
        measured = f"{f['latency_measured_ms']:.3g} ms" if f.get("latency_measured_ms") is not None else "-"
        print(f"       latency predicted {predicted}, measured {measured} (batch 1, median)")
