"""`nas calibrate [--threads N] [--device cpu|cuda] [--quick] [--json] [-o PATH]`: measure this
device, fit the latency model of `nas.cost.latency`, write the device profile, and report
the model's error on held-out architectures against the "latency ∝ macs" baseline.

What is measured: the eval-mode forward pass at batch 1 of the packed model `nas infer` runs
(`nas.measure.timing.build_for_timing`: `arch` built with seeded random weights, packed to
its payload and read back by `nas.export.deploy.packed_model`), so 2/4/8-bit layers with a
2/4/8-bit PACT input run on the integer kernels, 1-bit convs on the packed-binary kernels
where they apply, every other layer in PyTorch on dequantized weights (`nas.export.convert`
decides, through `nas.cost.kernel_path`, the predicate the latency model prices with);
input: a fixed seeded N(0, 1) image (no op here has data-dependent speed), under
`torch.inference_mode()`, with the thread count fixed (`torch.set_num_threads`; both kinds
of kernels use the same count).

Timing protocol (`Protocol`): per network, untimed warm-up runs (allocator, oneDNN
primitive and packed-weight caches), then individually timed runs (`time.perf_counter_ns`,
CUDA synchronised) until both a minimum count and a minimum time are reached; the figure is
the **median**, the noise the interquartile range over the median. Python's GC is off
while timing. Calibration makes several passes (rounds) over all networks, each in its own
shuffled order with training and held-out networks mixed, and pools a network's runs from
all rounds (each network is built once, before its first round): a shared machine's speed
drifts over minutes (docs/architecture.md, "Lab figures"), and a burst of load elsewhere
must not bias one set or one network. The spread of a network's per-round medians is
reported with the noise.

What is measured (all drawn from the search spaces, default: search_spaces/{default,mcu,
binary}.yaml, sampled with a seeded RandomSampler exactly as the search samples them):
- *single-block networks*: one block cut out of a sampled network, with its input
  channels and resolution (stem -> block -> pool -> classifier); a quarter get other
  bit widths (16-bit, 32-bit, 1-bit with 8-bit inputs, ...) or kernel sizes, so every
  term of the model sees data;
- *whole sampled networks* (training);
- *held-out networks*: sampled with another seed, never used in the fit (duplicates of
  training networks removed), measured end to end exactly like the training ones.

Fit: non-negative least squares on the additive model's design matrix (`latency.
feature_row`), rows weighted by 1 / measured latency so that relative error is what is
minimised (the goal is a ±10% band), whole networks weighted `WHOLE_WEIGHT` times a
single-block one (they are what is predicted; single blocks mostly pin down the terms),
columns scaled to unit norm while solving.
Baseline: latency = a + b · macs, fitted on the same training networks with the same
weighting (least squares).

This file builds and runs modules (it is the measurement); `nas.cost.latency` only prices
specs and never imports torch. torch and `nas.blocks` are imported inside functions so
that importing this module stays light.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nas.cost import latency as lat
from nas.cost.model import arch_cost
from nas.errors import UsageError
from nas.measure.timing import (FULL, MEASURE, QUICK, Protocol, Timing, build_for_timing,  # noqa: F401
                                example_input, measure_arch, time_forward, time_runs)
from nas.space import encode, load_space, random_archs
from nas.space.spec import ArchSpec, ConvSpec, replace

DEFAULT_SPACES = ("default", "mcu", "binary")
GOAL_WITHIN = 0.95  # share of held-out networks within ±10%
GOAL_SPEARMAN = 0.95
BAND = 0.10
# bit widths a mutated single-block network may take (a_bits = 1 needs w_bits = 1)
EXTRA_BITS = ((32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1), (8, 32), (16, 8), (4, 8), (2, 8), (1, 8))


def check_device(device: str) -> None:
    import torch

    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device {device!r}: expected cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available to this process (torch.cuda.is_available() "
                         "is False); expected --device cpu here")


def parse_threads(value) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        n = 0
    cores = os.cpu_count() or 1
    if not 1 <= n <= 4 * cores:
        raise UsageError(f"--threads {value!r}: expected a whole number of threads from 1 to {4 * cores}, "
                         f"e.g. --threads {lat.default_threads()} (this machine's default)")
    return n


@dataclass(frozen=True)
class Plan:
    """How many networks of each set, per space."""

    single_blocks: int  # single-block networks per space (training)
    archs: int  # whole networks per space (training)
    heldout: int  # whole networks per space (held out)


FULL_PLAN = Plan(single_blocks=60, archs=60, heldout=50)
QUICK_PLAN = Plan(single_blocks=16, archs=16, heldout=12)
NOISY = 0.10  # median IQR / median above which the report warns that the machine was busy
WHOLE_WEIGHT = 2.0  # whole networks count twice in the fit: they are what is predicted


def measure_all(archs: list[ArchSpec], protocol: Protocol, device: str = "cpu", seed: int = 0,
                progress: bool = True) -> list[Timing]:
    """Time every network in `protocol.rounds` passes, each in its own shuffled order (a network
    is built once, when first timed, and kept), so that slow drifts of the machine's speed reach
    every network alike; a network's runs from all passes are pooled."""
    from nas.progress import bar as progress_bar

    rng = random.Random(seed)
    runs: list[list[list[float]]] = [[] for _ in archs]
    models: dict[int, object] = {}
    bar = progress_bar(len(archs) * protocol.rounds, "calibrate", "net", enabled=progress,
                       line_every=max(1, len(archs) // 10))
    for _ in range(protocol.rounds):
        order = list(range(len(archs)))
        rng.shuffle(order)
        for i in order:
            arch = archs[i]
            if i not in models:
                models[i] = build_for_timing(arch, device)
            runs[i].append(time_runs(models[i], example_input(arch, device), protocol, device))
            bar.update()
    bar.close()
    return [Timing.of(r) for r in runs]


class fixed_threads:
    """Context: torch (and the packed kernels) use `n` threads; restored on exit."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        import torch

        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.old)


# --- what is measured --------------------------------------------------------------------------

def _space_paths(names) -> list[Path]:
    root = Path(__file__).resolve().parents[2] / "search_spaces"
    paths = []
    for name in names:
        p = Path(name)
        if p.suffix not in (".yaml", ".yml"):
            p = Path("search_spaces") / f"{name}.yaml"
        if not p.is_file() and (root / p.name).is_file():
            p = root / p.name
        paths.append(p)
    return paths


def _block_input(arch: ArchSpec, i: int) -> tuple[int, int]:
    """(channels, resolution) entering block i."""
    chs, res = arch.stem.out_chs, -(-arch.resolution // arch.stem.stride)
    for b in arch.blocks[:i]:
        chs, res = b.out_chs, -(-res // b.stride)
    return chs, res


def single_block(arch: ArchSpec, i: int, rng: random.Random, mutate: float = 0.25) -> ArchSpec:
    """Stem -> block i of `arch` (at its input channels and resolution) -> pool -> classifier;
    with probability `mutate` the block gets other bits / kernel (see EXTRA_BITS)."""
    b = arch.blocks[i]
    chs, res = _block_input(arch, i)
    if rng.random() < mutate:
        w, a = rng.choice(EXTRA_BITS)
        b = replace(b, w_bits=w, a_bits=a, se=0.0 if w == 1 else b.se)
        if rng.random() < 0.5:
            b = replace(b, kernel=rng.choice((3, 5, 7)))
    stem = replace(arch.stem, out_chs=chs, stride=1)
    head = ConvSpec(out_chs=0, kernel=1, w_bits=arch.head.w_bits, a_bits=arch.head.a_bits)
    return replace(arch, resolution=max(res, 1), stem=stem, blocks=(b,), head=head)


def plan_networks(spaces: list[Path], plan: Plan, seed: int) -> tuple[list[tuple[str, ArchSpec]], list[tuple[str, ArchSpec]]]:
    """(training, held-out): lists of (space name, arch), training de-duplicated and held-out
    networks that also occur in training removed."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = random.Random(seed)
    train, held = [], []
    for k, path in enumerate(spaces):
        space = load_space(path)
        name = space.name
        for arch in random_archs(space, plan.single_blocks, seed=seed + 100 * k + 1):
            train.append((f"{name}/block", single_block(arch, rng.randrange(len(arch.blocks)), rng)))
        train += [(name, a) for a in random_archs(space, plan.archs, seed=seed + 100 * k + 2)]
        held += [(name, a) for a in random_archs(space, plan.heldout, seed=seed + 100 * k + 3)]
    seen, unique = set(), []
    for name, a in train:
        s = encode(a)
        if s not in seen:
            seen.add(s)
            unique.append((name, a))
    held_seen, held_unique = set(), []
    for name, a in held:
        s = encode(a)
        if s not in seen and s not in held_seen:
            held_seen.add(s)
            held_unique.append((name, a))
    return unique, held_unique


def dominant_bits(cost) -> str:
    """"w<bits>": the weight bit width carrying most of a network's MACs (ties: the lower width),
    the group a network's error is reported in per bit width."""
    macs: dict[int, int] = {}
    for layer in cost.layers:
        if layer.op in ("conv", "linear"):
            macs[layer.w_bits] = macs.get(layer.w_bits, 0) + layer.macs
    return f"w{max(sorted(macs), key=lambda b: macs[b])}"


# --- fitting ----------------------------------------------------------------------------------

def _p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


def fit_nnls(rows, y, weights=None) -> tuple[list[float], list[bool]]:
    """Non-negative coefficients minimising sum(w * ((row . c) - y) / y)^2; (coefs, column seen)."""
    import numpy as np
    from scipy.optimize import nnls

    X = np.asarray(rows, dtype=float)
    y = np.asarray(y, dtype=float)
    w = np.ones(len(y)) if weights is None else np.sqrt(np.asarray(weights, dtype=float))
    A = X / y[:, None] * w[:, None]
    norms = np.linalg.norm(A, axis=0)
    seen = norms > 0
    scaled = A[:, seen] / norms[seen]
    c, _ = nnls(scaled, w, maxiter=50 * scaled.shape[1])
    coefs = np.zeros(X.shape[1])
    coefs[seen] = c / norms[seen]
    return coefs.tolist(), seen.tolist()


def fit_baseline(macs, y) -> tuple[float, float]:
    """latency = a + b * macs (macs in millions), relative least squares."""
    import numpy as np

    m = np.asarray(macs, dtype=float) / 1e6
    y = np.asarray(y, dtype=float)
    A = np.stack([np.ones_like(m), m], axis=1) / y[:, None]
    (a, b), *_ = np.linalg.lstsq(A, np.ones(len(y)), rcond=None)
    return float(a), float(b)


def agreement(pred, meas) -> dict:
    """Share within ±10%, Spearman rank correlation, median / max |relative error|."""
    from scipy.stats import spearmanr

    rel = [abs(p - m) / m for p, m in zip(pred, meas)]
    rho = None  # undefined for fewer than 3 networks or constant predictions (JSON null, never NaN)
    if len(pred) > 2 and len(set(pred)) > 1 and len(set(meas)) > 1:
        rho = float(spearmanr(pred, meas).statistic)
    return {"networks": len(meas), "within_10pct": sum(r <= BAND for r in rel) / len(rel),
            "spearman": rho, "median_abs_rel_error": statistics.median(rel), "max_abs_rel_error": max(rel)}


# --- machine --------------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int, device: str) -> dict:
    import torch

    from nas import kernels
    from nas.kernels import integer

    info = {"host": lat.host_name(), "cpu_model": cpu_model(), "cores": os.cpu_count(), "device": device,
            "threads": threads, "torch": torch.__version__, "python": platform.python_version(),
            "kernels": kernels.isa() if device == "cpu" and kernels.available() else None,
            "integer_kernels": integer.isa() if device == "cpu" and integer.available() else None}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# --- the command --------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("--threads", metavar="N", help=f"threads for torch and the kernels "
                                                       f"(default: torch's default here, {lat.default_threads()})")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--quick", action="store_true", help="few networks, short timings (about a minute; for tests)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("-o", "--output", metavar="PATH", help="profile file to write (default: $NAS_PROFILE, else "
                                                               "~/.cache/nas/profiles/<host>-<threads>t.json)")
    parser.add_argument("--space", action="append", metavar="YAML",
                        help="space to draw networks from (repeatable; default: default, mcu, binary)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def calibrate(threads: int, device: str = "cpu", quick: bool = False, spaces=DEFAULT_SPACES, seed: int = 0,
              progress: bool = True) -> tuple[lat.Profile, dict]:
    """Measure, fit and evaluate; returns (profile, report). Writes nothing."""
    protocol, plan = (QUICK, QUICK_PLAN) if quick else (FULL, FULL_PLAN)
    paths = _space_paths(spaces)
    for p in paths:
        if not p.is_file():
            raise UsageError(f"--space {str(p)!r}: no such space file; expected a YAML file like "
                             f"search_spaces/default.yaml")
    t0 = time.time()
    load_start = load_average()
    train, held = plan_networks(paths, plan, seed)
    jobs = [("train", n, a) for n, a in train] + [("heldout", n, a) for n, a in held]
    with fixed_threads(threads):
        machine = machine_info(threads, device)
        timings = measure_all([a for _, _, a in jobs], protocol, device, seed, progress)
    kernels = bool(machine["kernels"])
    results = []
    for (role, name, arch), timing in zip(jobs, timings):
        cost = arch_cost(arch)
        results.append({"role": role, "space": name, "arch": encode(arch), "macs": cost.macs,
                        "bits": dominant_bits(cost), "row": lat.feature_row(arch, kernels, cost), "timing": timing})
    tr = [r for r in results if r["role"] == "train"]
    ho = [r for r in results if r["role"] == "heldout"]
    y_tr = [r["timing"].median_ms for r in tr]
    whole = [1.0 if r["space"].endswith("/block") else WHOLE_WEIGHT for r in tr]
    coefs, seen = fit_nnls([r["row"] for r in tr], y_tr, whole)
    it = iter(coefs)
    terms = {t: tuple(next(it) for _ in feats) for t, feats in lat.TERMS.items()}
    seen_terms = {t for (t, _), s in zip(lat.COLUMNS, seen) if s}

    def predict(rows):
        return [sum(c * v for c, v in zip(coefs, row)) for row in rows]

    a, b = fit_baseline([r["macs"] for r in tr], y_tr)
    y_ho = [r["timing"].median_ms for r in ho]
    pred_ho = predict([r["row"] for r in ho])
    base_ho = [a + b * r["macs"] / 1e6 for r in ho]
    noise = [r["timing"].noise for r in results]
    spread = [r["timing"].round_spread for r in results]
    per_space = {}
    for name in sorted({r["space"] for r in ho}):
        idx = [i for i, r in enumerate(ho) if r["space"] == name]
        per_space[name] = agreement([pred_ho[i] for i in idx], [y_ho[i] for i in idx])
    per_bits = {}
    for bits in sorted({r["bits"] for r in ho}, key=lambda b: int(b[1:])):
        idx = [i for i, r in enumerate(ho) if r["bits"] == bits]
        per_bits[bits] = agreement([pred_ho[i] for i in idx], [y_ho[i] for i in idx])
    stats = {
        "fit": {**agreement(predict([r["row"] for r in tr]), y_tr),
                "single_block_networks": sum(r["space"].endswith("/block") for r in tr)},
        "heldout": {**agreement(pred_ho, y_ho), "per_space": per_space, "per_bits": per_bits,
                    "per_bits_means": "networks grouped by the weight bit width that carries most of their MACs"},
        "baseline_macs": {"model": "latency_ms = a + b * macs / 1e6", "a_ms": a, "b_ms_per_mmac": b,
                          "fit": agreement([a + b * r["macs"] / 1e6 for r in tr], y_tr),
                          "heldout": agreement(base_ho, y_ho)},
        "noise": {"median_iqr_over_median": statistics.median(noise),
                  "p90_iqr_over_median": _p90(noise),
                  "median_round_spread": statistics.median(spread), "p90_round_spread": _p90(spread)},
        "unfitted_terms": [t for t in lat.TERMS if t not in seen_terms],
        "load_average_1m": {"start": load_start, "end": load_average()},
        "measure_s": round(time.time() - t0, 1),
        "spaces": [str(p) for p in paths],
        "quick": quick,
        "seed": seed,
    }
    profile = lat.Profile(coefs=terms, machine=machine, protocol=protocol.to_dict(), stats=stats,
                          created=lat.now_iso())
    report = {"heldout_networks": [{"space": r["space"], "bits": r["bits"], "arch": r["arch"], "measured_ms": m, "predicted_ms": p,
                                    "baseline_ms": q, "noise": r["timing"].noise}
                                   for r, m, p, q in zip(ho, y_ho, pred_ho, base_ho)]}
    return profile, report


def run(args) -> int:
    check_device(args.device)
    threads = parse_threads(args.threads) if args.threads is not None else lat.default_threads()
    out = Path(args.output).expanduser() if args.output else lat.default_profile_path(threads, args.device)
    if out.exists() and out.is_dir():
        raise UsageError(f"-o {str(out)!r}: is a folder; expected a profile file path, e.g. -o profile.json")
    from nas import fsio

    fsio.check_output_path(out, "-o")  # a link, a device, a long name, an unwritable folder: before measuring
    profile, report = calibrate(threads, args.device, args.quick, tuple(args.space or DEFAULT_SPACES), args.seed,
                                progress=not args.no_progress)
    path = lat.save_profile(profile, out)
    result = {"profile": str(path), "machine": profile.machine, "protocol": profile.protocol, **profile.stats,
              "goals": {"within_10pct": GOAL_WITHIN, "spearman": GOAL_SPEARMAN},
              **({"heldout_networks": report["heldout_networks"]} if args.json else {})}
    if args.json:
        print(json.dumps(result))
    else:
        print(format_report(profile, str(path)))
    return 0


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _rho(x) -> str:
    return "    -" if x is None else f"{x:.3f}"


def format_report(profile: lat.Profile, path: str) -> str:
    s, m = profile.stats, profile.machine
    ho, base, fit = s["heldout"], s["baseline_macs"]["heldout"], s["fit"]
    lines = [f"device profile written to {path}",
             f"  {m['cpu_model']}, {m['cores']} cores, device {m['device']}, {m['threads']} thread(s), torch "
             f"{m['torch']}, packed kernels {m['kernels'] or 'not used'}, integer kernels "
             f"{m.get('integer_kernels') or 'not built'}",
             f"  timing: batch 1, median of the runs of {profile.protocol['rounds']} rounds (>= "
             f"{profile.protocol['min_repeats']} runs each, after warm-up); noise IQR / median: median "
             f"{_pct(s['noise']['median_iqr_over_median'])}, 90th percentile {_pct(s['noise']['p90_iqr_over_median'])}; "
             f"spread of round medians: median {_pct(s['noise']['median_round_spread'])}, 90th percentile "
             f"{_pct(s['noise']['p90_round_spread'])}",
             f"  load average (1 min) {s['load_average_1m']['start']} at start, {s['load_average_1m']['end']} at end; "
             f"{s['measure_s']:.0f} s",
             f"  fit: {fit['networks']} networks ({fit['single_block_networks']} single-block), "
             f"{_pct(fit['within_10pct'])} within ±10%",
             "",
             f"held-out networks ({ho['networks']}, never used in the fit)   within ±10%   Spearman",
             f"  latency model (this profile)          {_pct(ho['within_10pct']):>14}   {ho['spearman']:.3f}",
             f"  baseline: latency = a + b * macs      {_pct(base['within_10pct']):>14}   {base['spearman']:.3f}",
             f"  goal                                  {_pct(GOAL_WITHIN):>14}   {GOAL_SPEARMAN:.3f}"]
    for name, a in ho["per_space"].items():
        lines.append(f"    {name:<34} {_pct(a['within_10pct']):>14}   {_rho(a['spearman'])}   ({a['networks']} networks)")
    lines.append("  per bit width (the weight bits carrying most MACs)")
    for name, a in ho.get("per_bits", {}).items():
        lines.append(f"    {name:<34} {_pct(a['within_10pct']):>14}   {_rho(a['spearman'])}   ({a['networks']} networks)")
    if s["noise"]["median_iqr_over_median"] > NOISY:
        lines.append(f"  warning: timings were noisy (median IQR / median {_pct(s['noise']['median_iqr_over_median'])} > "
                     f"{_pct(NOISY)}): something else used this machine; re-run `nas calibrate` when it is idle")
    if s["unfitted_terms"]:
        lines.append(f"  note: no measured network had {', '.join(s['unfitted_terms'])}: those terms are 0")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - `nas calibrate` is the entry point
    from nas.cli import main

    sys.exit(main(["calibrate", *sys.argv[1:]]))
