"""`nas bench infer`: the packed model (what `nas infer` runs) end to end, integer vs 32-bit.

For each base architecture from the default space (`search_spaces/default.yaml`: stem,
five stages, head and classifier within its choices) three variants of the same arch:

    fp32    every layer w32 a32 (stem, head and classifier included): PyTorch float
    int8    every layer w8 a8: the integer kernels (`nas.export.convert` path "integer")
    mixed   stages at --mixed bits (default 8,4,2,4,8), stem / head / classifier w8 a8

each built with seeded random weights, packed to its payload and read back by
`packed_model` (the same conversion `nas export` and `nas infer` use), then timed at batch 1
with the one timing protocol (`nas.measure.timing.measure_inference_ms`) at --threads
(default 1), the variants interleaved over --rounds rounds (median of the round medians).
Prints ms per image, speedup over fp32, how many layers run on each path, and the latency
model's prediction (`predicted_ms`, from --profile, default this host's device profile of
`nas calibrate`; none without one) with whether it orders the three variants as measured.
Timing figures depend on the machine and its load; the benchmark says nothing it did not
measure.
"""

import json
import re

from nas.errors import UsageError

# Base architectures within the default space's choices (bits are replaced per variant).
BASES = {
    "ir": "in_r28_c1-stem_c16_k3_s1_w8_a8-ir_r1_k3_s1_e3_c16_w8_a8-ir_r2_k3_s2_e6_c24_w8_a8"
          "-ir_r3_k5_s2_e6_c40_w8_a8-ir_r3_k3_s1_e6_c80_w8_a8-ir_r2_k3_s2_e6_c112_w8_a8-head_c256_w8_a8-fc_n10_w8_a8",
    "kinds": "in_r28_c1-stem_c16_k3_s1_w8_a8-grouped_r1_k3_s1_g2_c16_w8_a8-shift_r2_k3_s2_e3_c24_w8_a8"
             "-grouped_r2_k3_s2_g4_c40_w8_a8-dense_r2_k3_s1_gr16_c80_w8_a8-ir_r2_k3_s2_e6_c112_w8_a8"
             "-head_c256_w8_a8-fc_n10_w8_a8",
}
DEFAULT_MIXED = (8, 4, 2, 4, 8)


def add_arguments(p):
    p.add_argument("--arch", action="append", help="base arch string (repeatable; default: the built-in ir "
                                                    "and mixed-kind bases); its bits are replaced per variant")
    p.add_argument("--mixed", default=",".join(map(str, DEFAULT_MIXED)),
                   help="per-stage weight = activation bits of the mixed variant, 2/4/8 (default 8,4,2,4,8)")
    p.add_argument("--threads", type=int, default=1, help="torch / kernel threads (default 1)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per variant and round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the median of their medians is reported)")
    p.add_argument("--profile", metavar="PATH", help="device profile for the predicted column (default: $NAS_PROFILE, "
                                                     "else this host's `nas calibrate` profile; none: no prediction)")
    p.add_argument("--json", action="store_true", help="one JSON object per row on stdout")


def with_bits(arch_string: str, stage_bits: list[int], end_bits: int) -> str:
    """`arch_string` with stage i at w=a=stage_bits[i] and stem, head, fc at end_bits."""
    parts = arch_string.split("-")
    stages = [i for i, p in enumerate(parts) if p.split("_")[0] not in ("in", "stem", "head", "fc")]
    if len(stage_bits) != len(stages):
        raise UsageError(f"--mixed: {len(stage_bits)} bit widths for an arch of {len(stages)} stages; expected "
                         f"one per stage")
    bits = {i: end_bits for i, p in enumerate(parts) if p.split("_")[0] in ("stem", "head", "fc")}
    bits.update(zip(stages, stage_bits))
    return "-".join(re.sub(r"_w\d+_a\d+", f"_w{bits[i]}_a{bits[i]}", p) if i in bits else p
                    for i, p in enumerate(parts))


TIE = 0.03  # two variants within 3% of each other (measured, or predicted) count as a tie


def _order(a: float, b: float) -> int:
    return 0 if abs(a - b) <= TIE * max(a, b) else (1 if a > b else -1)


def orders_as_measured(predicted: dict, measured: dict) -> bool:
    """Does the latency model order every pair of variants as measured? A pair within `TIE` on
    one side and not the other counts as agreeing when the other side's gap is also small
    (under 2 x TIE): an int8 and a mixed 2/4/8-bit variant run the same kernels, and the model
    prices them alike, so their order is noise."""
    names = list(predicted)
    for i, u in enumerate(names):
        for v in names[i + 1:]:
            p, m = _order(predicted[u], predicted[v]), _order(measured[u], measured[v])
            if p != m and not (0 in (p, m) and abs(predicted[u] - predicted[v]) <= 2 * TIE * max(predicted[u], predicted[v])
                               and abs(measured[u] - measured[v]) <= 2 * TIE * max(measured[u], measured[v])):
                return False
    return True


def parse_mixed(text: str) -> list[int]:
    from nas.quant.integer import check_int_bits

    try:
        bits = [int(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"--mixed {text!r}: expected comma-separated bit widths such as 8,4,2,4,8") from None
    for b in bits:
        check_int_bits(f"--mixed {text}", "bits", b)
    return bits


def packed_of(arch_string: str, seed: int = 0):
    """The packed model of `arch_string` with seeded random weights (payload round trip)."""
    import torch

    from nas.blocks.model import build_model
    from nas.export.bundle import payload_of
    from nas.export.deploy import packed_model
    from nas.space import decode

    torch.manual_seed(seed)
    model = build_model(decode(arch_string)).eval()
    payload, _ = payload_of(model)
    return packed_model(decode(arch_string), payload)


def run(args) -> int:
    import statistics

    import torch

    from nas.export.bundle import set_threads
    from nas.export.infer import path_counts
    from nas.measure.timing import measure_inference_ms
    from nas.space import decode

    if args.repeats < 1 or args.rounds < 1:
        raise UsageError(f"--repeats {args.repeats} / --rounds {args.rounds}: expected whole numbers >= 1")
    from nas.cost import latency

    set_threads(args.threads)
    mixed = parse_mixed(args.mixed)
    profile = latency.find_profile(args.profile) if args.profile != "none" else None
    if args.profile not in (None, "none") and profile is None:
        raise UsageError(f"--profile {args.profile!r}: no such file; expected a device profile written by "
                         "`nas calibrate` (or --profile none)")
    bases = {f"arch{i}": s for i, s in enumerate(args.arch)} if args.arch else BASES
    rows = []
    for name, base in bases.items():
        n_stages = len(decode(base).blocks)
        variants = {"fp32": with_bits(base, [32] * n_stages, 32), "int8": with_bits(base, [8] * n_stages, 8),
                    "mixed": with_bits(base, mixed, 8)}
        models = {v: packed_of(s) for v, s in variants.items()}
        a = models["fp32"].arch
        x = torch.randn(1, a.in_chs, a.resolution, a.resolution, generator=torch.Generator().manual_seed(0))
        times = {v: [] for v in variants}
        for _ in range(args.rounds):  # interleaved, so a load change on a shared machine hits every variant
            for v, model in models.items():
                times[v].append(measure_inference_ms(model, x, repeats=args.repeats, warmup=2))
        fp32_ms = statistics.median(times["fp32"])
        predicted = {v: (round(latency.predict_latency_ms(decode(s), profile), 4) if profile is not None else None)
                     for v, s in variants.items()}
        measured = {v: statistics.median(t) for v, t in times.items()}
        ordered = None if profile is None else orders_as_measured(predicted, measured)
        for variant, model in models.items():
            ms = statistics.median(times[variant])
            paths = path_counts(model.layer_paths)
            row = {"name": name, "variant": variant, "arch": variants[variant], "threads": torch.get_num_threads(),
                   "batch": 1, "ms": round(ms, 4), "ms_rounds": [round(t, 4) for t in times[variant]],
                   "speedup_vs_fp32": round(fp32_ms / ms, 3), "layer_paths": paths,
                   "chained": sum(1 for e in model.layer_paths if "output" in e),
                   "predicted_ms": predicted[variant], "order_as_measured": ordered}
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                where = ", ".join(f"{k} {v}" for k, v in paths.items())
                spread = f"{min(times[variant]):.3f}..{max(times[variant]):.3f}"
                pred = "-" if predicted[variant] is None else f"{predicted[variant]:.3f}"
                print(f"{name:6} {variant:6} {ms:8.3f} ms (rounds {spread})  {row['speedup_vs_fp32']:5.2f}x fp32  "
                      f"predicted {pred} ms  layers: {where}; {row['chained']} chained", flush=True)
        if not args.json and profile is not None:
            print(f"{name:6} latency model orders fp32 / int8 / mixed as measured (ties within {TIE:.0%}): "
                  f"{'yes' if ordered else 'no'}",
                  flush=True)
    if not args.json:
        from nas.kernels import integer

        print(f"batch 1, {torch.get_num_threads()} thread(s), median of {args.rounds} interleaved rounds x "
              f"{args.repeats} runs; integer kernels {integer.isa() if integer.available() else 'not built'}; "
              f"predicted: {profile.path if profile is not None else 'no device profile (run `nas calibrate`)'}")
    return 0
