"""Does a `--target-latency` search keep low-bit layers where they are faster?

Runs two short `nas search` studies on the same space, seed and data, one without a latency
budget and one with `--target-latency` set to a quantile of the space's predicted latencies
(`--quantile`, default 0.3, over 300 architectures sampled as the search samples them), and
prints the bit-width histogram of each study's feasible trials (and of the candidates the
budgeted search rejected as predicted too slow): per weight bit width, the
share of the stages (blocks) and the share of the MACs at that width. The same histogram of
the sampled prior is printed for reference.

    python benchmarks/latency_budget.py --profile ~/.cache/nas/profiles/<host>-1t.json

Everything is measured on this machine: the latency model is the profile's (`nas calibrate`,
which times the packed model `nas infer` runs), the searches train for real (short: small
subset, one epoch). Run it at the profile's thread count (`OMP_NUM_THREADS`).
"""

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BITS = (1, 2, 4, 8, 16, 32)


def histogram(archs) -> dict:
    """{"stages": {bits: share}, "macs": {bits: share}, "networks": n} over `archs`."""
    from nas.cost import arch_cost

    stages, macs = collections.Counter(), collections.Counter()
    for a in archs:
        for b in a.blocks:
            stages[b.w_bits] += 1
        for layer in arch_cost(a).layers:
            if layer.op in ("conv", "linear"):
                macs[layer.w_bits] += layer.macs
    ns, nm = sum(stages.values()) or 1, sum(macs.values()) or 1
    return {"networks": len(archs), "stages": {b: stages[b] / ns for b in BITS},
            "macs": {b: macs[b] / nm for b in BITS}}


def trial_archs(storage: str, study: str, feasible: bool = True):
    """Archs of the study's trials that were (feasible=True) or were not (False) within budget."""
    import optuna

    from nas.search.storage import open_storage
    from nas.space import decode

    s = optuna.load_study(study_name=study, storage=open_storage(storage))
    return [decode(t.user_attrs["arch"]) for t in s.trials
            if t.user_attrs.get("arch") and "feasible" in t.user_attrs and bool(t.user_attrs["feasible"]) == feasible]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", required=True, help="device profile (`nas calibrate`)")
    p.add_argument("--space", default="search_spaces/default.yaml")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--trials", type=int, default=8, help="trained candidates per study")
    p.add_argument("--max-trials", type=int, default=40, help="hard bound on started trials per study")
    p.add_argument("--subset", type=int, default=300)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--quantile", type=float, default=0.3, help="budget: this quantile of the predicted latencies")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import optuna

    from nas.cli import main as nas_main
    from nas.cost import latency
    from nas.space import load_space, random_archs

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    profile = latency.require_profile(args.profile)
    space = load_space(REPO / args.space if not Path(args.space).is_file() else args.space)
    prior = random_archs(space, 300, seed=args.seed + 1000, in_chs=1, num_classes=10)
    preds = sorted(latency.predict_latency_ms(a, profile) for a in prior)
    budget_ms = preds[int(args.quantile * (len(preds) - 1))]
    rows = {"prior (sampled, no search)": histogram(prior),
            "  prior within the budget": histogram([a for a in prior if latency.predict_latency_ms(a, profile) <= budget_ms]),
            "  prior over the budget": histogram([a for a in prior if latency.predict_latency_ms(a, profile) > budget_ms])}
    space_path = str((REPO / args.space) if not Path(args.space).is_file() else Path(args.space).resolve())
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the searches write their studies/ folders here, not into the checkout
        for name, extra in (("search, no latency budget", []),
                            (f"search, --target-latency {budget_ms:.3f}ms", ["--target-latency", f"{budget_ms:.4f}ms"])):
            storage = f"journal:{Path(tmp) / (str(len(rows)) + '.journal')}"
            cli = ["search", "--study", "b", "--storage", storage, "--space", space_path, "--dataset", args.dataset,
                   "--trials", str(args.trials), "--max-trials", str(args.max_trials), "--subset", str(args.subset),
                   "--epochs", str(args.epochs), "--final-top", "1", "--final-epochs", "1", "--final-subset",
                   str(args.subset), "--seed", str(args.seed), "--profile", args.profile, "--no-progress", "--json",
                   *extra]
            import contextlib
            import io
            with contextlib.redirect_stdout(io.StringIO()):
                rc = nas_main(cli)
            if rc != 0:
                print(f"nas search exited {rc}", file=sys.stderr)
                return rc
            rows[name] = histogram(trial_archs(storage, "b"))
            if extra:
                rows["  the same search: candidates rejected as too slow"] = histogram(trial_archs(storage, "b", False))
        os.chdir(here)
    out = {"profile": str(args.profile), "threads": profile.machine.get("threads"), "budget_ms": budget_ms,
           "quantile": args.quantile, "histograms": rows}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"profile {args.profile} ({profile.machine.get('threads')} thread(s)); latency budget {budget_ms:.3f} ms "
          f"= the {args.quantile:.0%} quantile of 300 sampled archs' predicted latency")
    head = "".join(f"{'w' + str(b):>7}" for b in BITS)
    for what in ("stages", "macs"):
        print(f"\nshare of {what} at each weight bit width (feasible trials){'':8}{head}")
        for name, h in rows.items():
            print(f"  {name:<48} ({h['networks']:3} nets)" + "".join(f"{100 * h[what][b]:6.1f}%" for b in BITS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
