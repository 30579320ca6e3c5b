"""`nas cost --arch STR | --model timm:NAME [--input R] [--json]`.

--arch: the analytic cost model over the decoded spec (`--input` overrides its resolution).
--model timm:NAME: timm's EfficientNet / MobileNetV2 / MobileNetV3 / MnasNet families are
translated to our specs (`nas.cost.timm_arch`) and costed analytically, then cross-checked
against timm's built module with the module counter (`nas.count`); any other timm model
is built (`pretrained=False`, nothing downloaded) and counted by the module counter only,
which gives params and macs but not the figures that need a spec (weight_bytes,
peak_act_bytes, mem_access, bops): those print as null, and the output says why.
Human output: a per-layer table, then totals. `--json`: one JSON object on stdout.

Latency: with a device profile (`nas calibrate`; `nas.cost.latency.default_profile_path`),
`--arch` also reports the predicted `latency_ms` (total and per layer; null without a
profile, with a note). `--measure` builds the network (`--arch`: the packed model `nas infer`
runs, with seeded random weights, which is what `latency_ms` predicts, see docs/latency.md;
`--model`: timm's module) and times its eval-mode forward at batch 1 with the protocol of
`nas calibrate` (warm-up, median of repeats, threads fixed to the profile's or torch's
default): `latency_measured_ms`, plus `latency_measured` (quartiles, repeats, threads).
"""

import difflib
import json
import sys

from nas.cost import latency
from nas.cost.model import TOTALS, Cost, arch_cost
from nas.cost.timm_arch import timm_spec
from nas.errors import UsageError
from nas.space import decode, encode
from nas.space.spec import replace
from nas.units import format_bytes, format_count

MAX_INPUT = 4096


def add_arguments(parser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--arch", metavar="STR", help="arch string, e.g. 'in_r28_c1-stem_c16-ir_r1_k3_s1_e1_c16-head_c0-fc_n10'")
    what.add_argument("--model", metavar="timm:NAME", help="a timm model, e.g. timm:efficientnet_b0 (no download)")
    parser.add_argument("--input", metavar="R", help="input resolution in pixels (default: the arch's / the model's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--measure", action="store_true",
                        help="also build the network and time its forward pass (latency_measured_ms)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="--measure at N threads (default: the device profile's, else torch's)")


def parse_input(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(str(text).strip())
    except ValueError:
        value = None
    if value is None or not 1 <= value <= MAX_INPUT:
        raise UsageError(f"--input {text!r}: expected an image size in pixels, a whole number from 1 to "
                         f"{MAX_INPUT}, e.g. --input 224")
    return value


def run(args) -> int:
    resolution = parse_input(args.input)
    result = cost_arch_string(args.arch, resolution) if args.arch is not None else cost_model(args.model, resolution)
    if args.threads is not None and (args.threads < 1 or not args.measure):
        raise UsageError(f"--threads {args.threads}: expected a whole number >= 1, with --measure")
    if args.measure:
        result.update(measure(result, args.threads))
    if args.json:
        print(json.dumps(result))
    else:
        print(format_result(result))
    return 0


# --- the two sources ---

def cost_arch_string(text: str, resolution: int | None) -> dict:
    try:
        arch = decode(text)
    except UsageError as e:
        raise UsageError(f"--arch: {e}") from None
    if resolution is not None:
        arch = replace(arch, resolution=resolution)
    cost = arch_cost(arch)
    result = {"arch": encode(arch), "resolution": arch.resolution, "source": "spec", **cost.to_dict(), "notes": []}
    return add_latency(result, arch, cost)


def add_latency(result: dict, arch, cost: Cost) -> dict:
    """`latency_ms` (total and per layer) from this device's profile; null and a note without one."""
    path = latency.default_profile_path()
    if not path.is_file():
        result.update(latency_ms=None)
        result["notes"].append(f"latency_ms: no device profile at {path}; run `nas calibrate` to measure this device")
        return result
    profile = latency.require_profile(path)
    pred = latency.predict(arch, profile, cost)
    for layer, p in zip(result["layers"], pred.layers):
        layer["latency_ms"] = p.ms
    result.update(latency_ms=pred.total_ms, latency_network_ms=pred.network_ms, latency_profile=str(path))
    return result


def measure(result: dict, threads: int | None = None) -> dict:
    """Time the built network (`nas calibrate`'s protocol) at `threads`, else the profile's,
    else torch's default."""
    from nas.measure import calibrate

    path = latency.default_profile_path()
    if threads is None:
        threads = latency.require_profile(path).machine["threads"] if path.is_file() else latency.default_threads()
    with calibrate.fixed_threads(threads):
        if result.get("model") is None:
            timing = calibrate.measure_arch(decode(result["arch"]))
        else:
            import timm
            import torch

            model = timm.create_model(result["model"][5:], pretrained=False).eval()
            in_chs = model.pretrained_cfg.get("input_size", (3,))[0] if getattr(model, "pretrained_cfg", None) else 3
            x = torch.randn(1, in_chs, result["resolution"], result["resolution"],
                            generator=torch.Generator().manual_seed(0))
            timing = calibrate.time_forward(model, x)
    from nas.measure.timing import warn_if_unreliable

    warn_if_unreliable(timing, "latency_measured_ms")
    return {"latency_measured_ms": timing.median_ms,
            "latency_measured": {**timing.to_dict(), "threads": threads, "batch": 1, "statistic": "median"}}


def _timm_model_name(value: str) -> str:
    if not isinstance(value, str) or not value.startswith("timm:") or not value[5:]:
        raise UsageError(f"--model {value!r}: expected 'timm:NAME', e.g. --model timm:efficientnet_b0")
    import timm

    name = value[5:]
    known = timm.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `timm.list_models()` lists the names"
        raise UsageError(f"--model {value!r}: {name!r} is not a timm model{hint}")
    return name


def _build_and_count(name: str, resolution: int):
    import timm

    from nas.count import count_modules

    model = timm.create_model(name, pretrained=False)
    in_chs = model.pretrained_cfg.get("input_size", (3,))[0] if getattr(model, "pretrained_cfg", None) else 3
    try:
        return count_modules(model, (in_chs, resolution, resolution))
    except RuntimeError as e:  # e.g. an input too small for the network's strides
        raise UsageError(f"--input {resolution}: timm:{name} cannot run on a {resolution}x{resolution} "
                         f"image ({str(e).splitlines()[0]}); expected a larger --input") from None


def _default_resolution(name: str) -> int:
    import timm

    cfg = timm.get_pretrained_cfg(name)
    size = getattr(cfg, "input_size", None) if cfg is not None else None
    return int(size[-1]) if size else 224


def cost_model(value: str, resolution: int | None) -> dict:
    name = _timm_model_name(value)
    spec = timm_spec(name, resolution)
    if spec is not None:
        return _cost_timm_spec(value, spec)
    resolution = resolution or _default_resolution(name)
    counts = _build_and_count(name, resolution)
    notes = ["not a translated family: params and macs from the module counter over timm's built module; "
             "weight_bytes, peak_act_bytes, mem_access, mem_access_bytes and bops need a spec and are null"]
    notes += [f"unknown module, not counted: {u}" for u in counts.unknown]
    if counts.unattributed_macs:
        notes.append(f"{counts.unattributed_macs} MACs in functional ops that no module handler saw are not in macs")
    result = {"model": value, "resolution": resolution, "source": "modules"}
    result.update({name_: None for name_ in TOTALS})
    result.update(params=counts.params, macs=counts.macs, peak_act_at=None, latency_ms=None,
                  layers=[{"name": r.name, "op": r.type, "in_shape": list(r.in_shape), "out_shape": list(r.out_shape),
                           "params": r.params, "macs": r.macs} for r in counts.layers],
                  unknown=list(counts.unknown), unattributed_macs=counts.unattributed_macs, notes=notes)
    return result


def _cost_timm_spec(value: str, spec) -> dict:
    cost: Cost = arch_cost(spec.arch, spec.conventions)
    counts = _build_and_count(spec.name, spec.arch.resolution)
    match = counts.params == cost.params and counts.macs == cost.macs and counts.complete
    notes = list(spec.notes)
    result = {"model": value, "arch": encode(spec.arch), "resolution": spec.arch.resolution, "source": "spec",
              **cost.to_dict()}
    if not match:
        notes.append(f"the spec translation differs from timm's module (params {cost.params} vs {counts.params}, "
                     f"macs {cost.macs} vs {counts.macs}); params and macs are the module counter's, the other "
                     f"figures the translation's")
        result.update(params=counts.params, macs=counts.macs)
    result["check"] = {"source": "modules", "params": counts.params, "macs": counts.macs, "match": match,
                       "unknown": list(counts.unknown), "unattributed_macs": counts.unattributed_macs}
    result["latency_ms"] = None
    notes.append("latency_ms: predicted for --arch only (the profile is fitted on networks nas builds); "
                 "--measure times timm's module")
    result["notes"] = notes
    return result


# --- printing ---

def _bits(layer: dict) -> str:
    if layer.get("w_bits"):
        return f"w{layer['w_bits']}a{layer['a_bits']}"
    return f"a{layer['a_bits']}" if "a_bits" in layer else ""


def format_result(result: dict) -> str:
    """Per-layer table, then totals with units."""
    layers = result["layers"]
    spec = result["source"] == "spec"
    width = max([len(layer["name"]) for layer in layers] + [5])
    lines = []
    if spec:
        timed = result.get("latency_ms") is not None and all("latency_ms" in layer for layer in layers)
        lines.append(f"{'layer':<{width}}  {'op':<11} {'out (C,H,W)':<15} {'bits':<7} {'params':>10} {'macs':>13} "
                     f"{'weight B':>10} {'mem_access':>11}" + (f" {'pred ms':>8}" if timed else ""))
        for layer in layers:
            shape = "x".join(str(v) for v in layer["out_shape"])
            lines.append(f"{layer['name']:<{width}}  {layer['op']:<11} {shape:<15} {_bits(layer):<7} "
                         f"{layer['params']:>10,} {layer['macs']:>13,} {layer['weight_bytes']:>10,} "
                         f"{layer['mem_access']:>11,}" + (f" {layer['latency_ms']:>8.4f}" if timed else ""))
    else:
        lines.append(f"{'module':<{width}}  {'type':<18} {'out shape':<20} {'params':>12} {'macs':>15}")
        for layer in layers:
            lines.append(f"{layer['name']:<{width}}  {layer['op']:<18} {str(layer['out_shape']):<20} "
                         f"{layer['params']:>12,} {layer['macs']:>15,}")
    lines.append("")
    subject = result.get("model") or result["arch"]
    lines.append(f"{subject} at {result['resolution']}x{result['resolution']} ({'analytic, spec' if spec else 'module counter'})")

    def show(name, fmt):
        value = result.get(name)
        return "n/a" if value is None else f"{fmt(value)} ({value:,})"

    lines.append(f"  params            {show('params', format_count)}")
    lines.append(f"  macs              {show('macs', format_count)}")
    lines.append(f"  weight_bytes      {show('weight_bytes', format_bytes)}")
    peak = show("peak_act_bytes", format_bytes)
    lines.append(f"  peak_act_bytes    {peak}" + (f" during {result['peak_act_at']}" if result.get("peak_act_at") else ""))
    lines.append(f"  mem_access        {show('mem_access', format_count)} elements")
    lines.append(f"  mem_access_bytes  {show('mem_access_bytes', format_bytes)}")
    lines.append(f"  bops              {show('bops', format_count)}")
    if result.get("receptive_field"):
        lines.append(f"  receptive_field   {result['receptive_field']} px (input pixels one output sees, one side)")
    if result.get("latency_ms") is not None:
        lines.append(f"  latency_ms        {result['latency_ms']:.3f} ms (predicted, batch 1, profile "
                     f"{result['latency_profile']})")
    if result.get("latency_measured_ms") is not None:
        m = result["latency_measured"]
        lines.append(f"  latency_measured_ms {result['latency_measured_ms']:.3f} ms (median of {m['repeats']} runs, "
                     f"quartiles {m['q1_ms']:.3f}..{m['q3_ms']:.3f} ms, batch 1, {m['threads']} thread(s))")
    check = result.get("check")
    if check:
        verdict = "match" if check["match"] else "MISMATCH"
        lines.append(f"  check vs timm module: params {check['params']:,}, macs {check['macs']:,}: {verdict}")
    for note in result.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - `nas cost` is the entry point
    from nas.cli import main

    sys.exit(main(["cost", *sys.argv[1:]]))
