"""`nas scale --arch BASE | --study S [--trial N] --targets 100KB,500KB,2MB [--by weight_bytes|macs|latency_ms]
[--coefficients A,B,G | --search-coefficients] [--train ...] [--json] [--config FILE]`.

Compound scaling's two steps (survey 000 ch. 3 sec. 2-6; `nas.scale`): (1) alpha, beta, gamma
under alpha * beta^2 * gamma^2 ~ target at phi = 1 (EfficientNet's 1.2, 1.1, 1.15 by default,
`--coefficients`, or a small search, `--search-coefficients`); (2) with them fixed, each
budget's member is the base at the largest real phi whose cost fits. Prints a table of the
family B1..Bn (or one JSON object with `--json`).

The constraint (target and tolerance) and the channel divisor come from `--space`, else from
the study's space, else 2.0 within 5% and 8. `--train` trains the base and every member with
the search's final recipe (`nas search`'s --final-epochs, --final-subset, --final-batch-size
defaults), and the width-, depth- and resolution-only families of the same base at the same
budgets too, and writes a plotly figure of test accuracy against weight_bytes (`-o`).
Progress lines go to stderr, one per step, flushed (readable in a pipe).
"""

import json
import sys
import time

from nas import limits
from nas.errors import UsageError
from nas.scale import BY, Coster, comparison, scale_family, search_coefficients
from nas.measure.device import add_device_arguments, resolve_device
from nas.scale.family import MAX_MULTIPLIER, check_targets
from nas.space.scaling import DEFAULT_TARGET, DEFAULT_TOLERANCE, EFFICIENTNET, flops_factor, meets_constraint
from nas.units import format_bytes, format_count, parse_bytes, parse_count, parse_seconds

# option -> default; a --config file may set any of these (with - or _), the command line wins
DEFAULTS = {
    "arch": None, "study": None, "storage": None, "trial": None, "targets": None, "by": "weight_bytes",
    "coefficients": None, "search_coefficients": False, "coefficient_trials": 8, "space": None,
    "max_multiplier": MAX_MULTIPLIER, "train": False, "dataset": "fashion-mnist", "data_dir": None,
    "epochs": None, "subset": None, "val_subset": None, "batch_size": None, "seed": 0, "output": "scale.html", "json": False,
    "device": None, "amp": None,
}


def add_arguments(p) -> None:
    p.add_argument("--config", metavar="FILE", help="a YAML file of these options (see studies/scale-fm.yaml)")
    p.add_argument("--arch", metavar="STR", help="the base network B0 as an arch string")
    p.add_argument("--study", metavar="S", help="take the base from this study: its result, or --trial N")
    p.add_argument("--storage", metavar="URL", help="the study's storage (default: studies/<study>.journal)")
    p.add_argument("--trial", type=int, metavar="N", help="with --study: this trial instead of the result")
    p.add_argument("--targets", metavar="LIST", help="budgets, comma-separated, e.g. 100KB,500KB,2MB (macs: 50M; "
                                                     "latency_ms: 2ms)")
    p.add_argument("--by", choices=BY, help="the cost the targets bound (default weight_bytes)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--coefficients", metavar="A,B,G", help="alpha,beta,gamma (default EfficientNet's 1.2,1.1,1.15)")
    how.add_argument("--search-coefficients", action="store_true", default=None,
                     help="step 1 first: a small Optuna search over alpha, beta, gamma at phi = 1 (trains each)")
    p.add_argument("--coefficient-trials", type=int, metavar="N", help="trials of --search-coefficients (default 8)")
    p.add_argument("--space", metavar="FILE", help="take the constraint (target, tolerance) and divisor from "
                                                   "this space's scaling block")
    p.add_argument("--max-multiplier", type=float, metavar="M",
                   help=f"cap on each of alpha^phi, beta^phi, gamma^phi (default {MAX_MULTIPLIER:g})")
    p.add_argument("--train", action="store_true", default=None,
                   help="train every member (and width/depth/resolution-only scaling) and write the figure")
    p.add_argument("--dataset", help="fashion-mnist (default), digits, or a path (see `nas train --help`)")
    p.add_argument("--data-dir", help="folder of a named dataset")
    p.add_argument("--epochs", type=int, help="training epochs (default: the search's final recipe)")
    p.add_argument("--subset", type=int, help="training images (default: the search's final recipe)")
    p.add_argument("--val-subset", type=int, help="validation images scored after training (default: all, as the "
                                                  "final recipe; they pick --search-coefficients' winner)")
    p.add_argument("--batch-size", type=int, help="training batch (default: the search's final recipe)")
    p.add_argument("--seed", type=int, help="seeds init, data order and the coefficient search (default 0)")
    add_device_arguments(p)
    p.add_argument("-o", "--output", metavar="HTML", help="the figure's path with --train (default scale.html)")
    p.add_argument("--json", action="store_true", default=None, help="print one JSON object on stdout")


def _progress(text: str) -> None:
    print(f"nas scale: {text}", file=sys.stderr, flush=True)


def merged_options(args) -> dict:
    """Command line over --config file over DEFAULTS."""
    file_options = {}
    if args.config:
        try:
            data = limits.load_yaml(args.config, "--config")
        except FileNotFoundError:
            raise UsageError(f"--config {args.config!r}: no such file; expected a YAML file of nas scale "
                             f"options") from None
        except Exception as e:  # yaml errors: one line
            if isinstance(e, (UsageError, OSError)):
                raise
            raise UsageError(f"{args.config}: malformed YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise UsageError(f"{args.config}: expected a mapping of nas scale options, got {type(data).__name__}")
        for key, value in data.items():
            name = str(key).replace("-", "_")
            if name not in DEFAULTS or name == "config":
                raise UsageError(f"{args.config}: unknown option {key!r}; expected one of "
                                 f"{sorted(k.replace('_', '-') for k in DEFAULTS)}")
            if name in ("targets", "coefficients") and isinstance(value, list):
                value = ",".join(str(v) for v in value)
            file_options[name] = value
    out = dict(DEFAULTS)
    out.update(file_options)
    out.update({k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None})
    if out["arch"] is not None and out["study"] is not None:
        raise UsageError("--arch and --study: both given; expected one base (an arch string or a study)")
    if out["arch"] is None and out["study"] is None:
        raise UsageError("nas scale: no base; expected --arch STR or --study S")
    if out["coefficients"] is not None and out["search_coefficients"]:
        raise UsageError("--coefficients and --search-coefficients: both given; expected one of them")
    for name in ("coefficient_trials", "epochs", "subset", "val_subset", "batch_size"):
        value = out[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UsageError(f"--{name.replace('_', '-')} {value!r}: expected a whole number >= 1")
    if not isinstance(out["seed"], int) or not 0 <= out["seed"] <= limits.MAX_SEED:
        raise UsageError(f"--seed {out['seed']!r}: expected a whole number from 0 to {limits.MAX_SEED}")
    m = out["max_multiplier"]
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not 1.0 < m <= limits.MAGNITUDES["alpha"] ** 2:
        raise UsageError(f"--max-multiplier {m!r}: expected a number > 1 and <= {limits.MAGNITUDES['alpha'] ** 2:g}")
    if out["by"] not in BY:
        raise UsageError(f"--by {out['by']!r}: expected one of {list(BY)}")
    return out


def parse_targets(text, by: str) -> list[float]:
    """'100KB,500KB,2MB' -> sorted distinct budgets in `by` units."""
    if text is None or not str(text).strip():
        raise UsageError(f"--targets {text!r}: empty; expected comma-separated budgets, e.g. --targets 100KB,500KB,2MB")
    parse = {"weight_bytes": lambda v: parse_bytes(v, f"--targets item {v!r}"),
             "macs": lambda v: parse_count(v, f"--targets item {v!r}"),
             "latency_ms": lambda v: parse_seconds(v, f"--targets item {v!r}") * 1e3}[by]
    items = [t.strip() for t in str(text).split(",")]
    if any(not t for t in items):
        raise UsageError(f"--targets {text!r}: an empty item; expected comma-separated budgets like 100KB,500KB")
    if len(items) > 64:
        raise UsageError(f"--targets: {len(items)} budgets; expected at most 64")
    return sorted({float(parse(t)) for t in items})


def parse_coefficients(text, target: float, tolerance: float) -> tuple[float, float, float]:
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(1.0 <= v <= limits.MAGNITUDES["alpha"] for v in values):
        raise UsageError(f"--coefficients {text!r}: expected three numbers alpha,beta,gamma, each from 1 to "
                         f"{limits.MAGNITUDES['alpha']:g}, e.g. 1.2,1.1,1.15")
    if not meets_constraint(*values, target, tolerance):
        raise UsageError(f"--coefficients {text!r}: alpha*beta^2*gamma^2 = {flops_factor(*values):.3f}; expected "
                         f"{target:g} within {tolerance:.0%} (the constraint of compound scaling)")
    return values


def _base(opts) -> tuple:
    """(base arch, where it came from, space path or None)."""
    from nas.space import decode

    if opts["arch"] is not None:
        try:
            return decode(str(opts["arch"])), "--arch", None
        except UsageError as e:
            raise UsageError(f"--arch: {e}") from None
    from nas.export.trial import open_study, pick_trial, study_config
    from nas.search.records import TrialRecord

    study, _ = open_study(str(opts["study"]), opts["storage"])
    trial = pick_trial(study, opts["trial"] is None, opts["trial"])
    return decode(TrialRecord.of(trial).arch), f"study {study.study_name!r} trial {trial.number}", \
        study_config(study).space


def _constraint(space_path) -> tuple[float, float, int]:
    """(target, tolerance, divisor) from a space file, else the defaults."""
    if space_path is None:
        return DEFAULT_TARGET, DEFAULT_TOLERANCE, 8
    from nas.space import load_space

    space = load_space(space_path)
    return space.target, space.tolerance, space.divisor


class Recipe:
    """The search's final recipe (`nas.search.config.SearchConfig`'s final_* defaults), one net at a time."""

    def __init__(self, opts, base):
        from nas.data import load_dataset
        from nas.search.config import SearchConfig, default_sizes, final_epochs

        self.dataset, self.data_dir, self.seed = str(opts["dataset"]), opts["data_dir"], opts["seed"]
        self.device, self.amp = opts["device"], bool(opts["amp"])
        # fail early on a missing dataset or a mismatch; the sizes not given follow its splits
        full = load_dataset(self.dataset, self.data_dir, split_seed=self.seed, resolution=base.resolution)
        n_train, n_val = len(full.train), len(full.val)
        self.subset = opts["subset"] or default_sizes(n_train, n_val).final_subset
        if self.subset > n_train:
            print(f"nas: note: --subset {self.subset}: capped to {n_train}, the training split of {full.name}",
                  file=sys.stderr)
            self.subset = n_train
        if self.subset < full.num_classes:
            raise UsageError(f"--subset {self.subset}: expected {full.num_classes} to {n_train} (one image per "
                             f"class, the training split of {full.name})")
        self.epochs = opts["epochs"] or final_epochs(self.subset)
        self.batch_size = opts["batch_size"] or SearchConfig.final_batch_size
        self.val_subset = opts["val_subset"]  # None: the whole validation split, as the final recipe
        self._data, self._done = {}, {}
        data = self.data(base.resolution)
        if base.in_chs != data.in_chs or base.fc.num_classes != data.num_classes:
            raise UsageError(f"base: in_chs={base.in_chs}, fc_n{base.fc.num_classes} but {data.name} has "
                             f"{data.in_chs} channel(s) and {data.num_classes} classes; expected "
                             f"in_r{base.resolution}_c{data.in_chs} ... fc_n{data.num_classes}")

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "epochs": self.epochs, "subset": self.subset,
                "batch_size": self.batch_size, "val_subset": self.val_subset, "seed": self.seed}

    def data(self, resolution: int):
        if resolution not in self._data:
            from nas.data import load_dataset

            self._data[resolution] = load_dataset(self.dataset, self.data_dir, split_seed=self.seed,
                                                  subset=self.subset, resolution=resolution)
        return self._data[resolution]

    def train(self, arch, label: str) -> dict:
        """{val_accuracy, test_accuracy, train_time_s}; an arch trained before is not retrained."""
        import torch

        from nas.blocks.model import build_model
        from nas.cost import arch_cost
        from nas.space import encode
        from nas.train.evaluate import evaluate
        from nas.train.trainer import TrainingDiverged, train

        key = encode(arch)
        if key in self._done:
            _progress(f"{label}: same network as before, not retrained")
            return self._done[key]
        data = self.data(arch.resolution)
        _progress(f"{label}: training {self.epochs} epochs on {len(data.train)} images: {key}")
        torch.manual_seed(self.seed)
        model = build_model(arch)
        start = time.time()
        try:
            result = train(model, data, epochs=self.epochs, batch_size=self.batch_size, seed=self.seed,
                           progress=sys.stderr.isatty(), weight_bytes=int(arch_cost(arch).weight_bytes),
                           measure_inference=False, val_subset=self.val_subset, device=self.device,
                           amp=self.amp)  # the figure plots accuracy; latency is predicted
            out = {"val_accuracy": result.accuracy, "test_accuracy": evaluate(model, data.test),
                   "train_time_s": round(time.time() - start, 1)}
        except TrainingDiverged as e:
            _progress(f"{label}: {e}")
            out = {"val_accuracy": None, "test_accuracy": None, "train_time_s": round(time.time() - start, 1)}
        _progress(f"{label}: val {out['val_accuracy']} test {out['test_accuracy']} ({out['train_time_s']} s)")
        self._done[key] = out
        return out


def run(args) -> int:
    from dataclasses import replace as dc_replace

    from nas.cost import latency
    from nas.space import Scaling, encode, scale_arch

    opts = merged_options(args)
    opts["device"] = str(resolve_device(opts["device"] or "auto"))  # before any work
    targets = parse_targets(opts["targets"], opts["by"])  # before any study is opened or data loaded
    base, source, study_space = _base(opts)
    target, tolerance, divisor = _constraint(opts["space"] or study_space)
    coefficients = parse_coefficients(opts["coefficients"], target, tolerance) if opts["coefficients"] is not None \
        else EFFICIENTNET
    profile_path = latency.default_profile_path()
    profile = latency.require_profile(profile_path) if profile_path.is_file() else None
    coster = Coster(opts["by"], profile)
    base_costs = coster.costs(base)
    check_targets(targets, base_costs[opts["by"]], opts["by"])  # before any training
    recipe = Recipe(opts, base) if opts["train"] or opts["search_coefficients"] else None
    if opts["train"]:
        from nas import fsio
        fsio.check_output_path(opts["output"], "-o")

    search_history = None
    if opts["search_coefficients"]:
        _progress(f"step 1: {opts['coefficient_trials']} trials over alpha, beta, gamma at phi = 1 "
                  f"(alpha*beta^2*gamma^2 = {target:g}), scored by validation accuracy")

        def score(coeffs):
            scaled = scale_arch(base, Scaling(*coeffs, phi=1.0), divisor)
            acc = recipe.train(scaled, f"phi=1 with {coeffs}")["val_accuracy"]
            return -1.0 if acc is None else acc

        coefficients, history = search_coefficients(score, opts["coefficient_trials"], opts["seed"], target)
        search_history = [{"alpha": c[0], "beta": c[1], "gamma": c[2], "val_accuracy": s} for c, s in history]
        _progress(f"step 1: best alpha={coefficients[0]:g} beta={coefficients[1]:g} gamma={coefficients[2]:g}")

    _progress(f"step 2: base {source}, {opts['by']} {_fmt(base_costs[opts['by']], opts['by'])}; "
              f"alpha={coefficients[0]:g} beta={coefficients[1]:g} gamma={coefficients[2]:g} "
              f"(alpha*beta^2*gamma^2 = {flops_factor(*coefficients):.2f}); bisecting phi for {len(targets)} targets")
    if opts["train"]:
        families = comparison(base, coefficients, targets, coster, divisor, opts["max_multiplier"])
    else:
        families = {"compound": scale_family(base, coefficients, targets, coster, "compound", divisor,
                                             opts["max_multiplier"])}

    base_result = {"arch": encode(base), "source": source, "resolution": base.resolution,
                   "stem_chs": base.stem.out_chs, "channels": [b.out_chs for b in base.blocks],
                   "repeats": [b.repeats for b in base.blocks], "head_chs": base.head.out_chs, **base_costs}
    figure = None
    if opts["train"]:
        total = 1 + sum(len(ms) for ms in families.values())
        base_result.update(recipe.train(base, f"[1/{total}] B0 (base)"))
        done = 1
        for name, members in families.items():
            for i, m in enumerate(members):
                done += 1
                families[name][i] = dc_replace(m, extra=recipe.train(m.arch, f"[{done}/{total}] {name} B{i + 1}"))
        from nas.scale.figure import figure as make_figure, write_html

        fig = make_figure(families, base_result["test_accuracy"], base_costs["weight_bytes"])
        write_html(opts["output"], fig, f"nas scale: base {encode(base)}; coefficients {coefficients}; targets "
                   f"{targets} by {opts['by']}; recipe {recipe.to_dict()}")
        figure = str(opts["output"])
        _progress(f"figure written to {figure}")

    result = {
        "base": base_result, "by": opts["by"], "targets": targets,
        "coefficients": {"alpha": coefficients[0], "beta": coefficients[1], "gamma": coefficients[2],
                         "flops_factor": flops_factor(*coefficients)},
        "constraint": {"target": target, "tolerance": tolerance}, "divisor": divisor,
        "max_multiplier": opts["max_multiplier"],
        "families": {name: [m.to_dict() for m in ms] for name, ms in families.items()},
        "coefficient_search": search_history, "recipe": recipe.to_dict() if recipe else None, "figure": figure,
    }
    if opts["json"]:
        print(json.dumps(result))
    else:
        print(format_table(result))
    return 0


def _fmt(value, by: str) -> str:
    if value is None:
        return "-"
    if by in ("weight_bytes", "peak_act_bytes"):
        return format_bytes(value)
    if by == "latency_ms":
        return f"{value:.3g} ms"
    return format_count(value)


def format_table(result: dict) -> str:
    c = result["coefficients"]
    lines = [f"base: {result['base']['arch']} ({result['base']['source']})",
             f"coefficients: alpha={c['alpha']:g} beta={c['beta']:g} gamma={c['gamma']:g} "
             f"(alpha*beta^2*gamma^2 = {c['flops_factor']:.2f}); members at the largest phi under each "
             f"{result['by']} target"]
    trained = result["recipe"] is not None and result["figure"] is not None
    head = ["member", "target", "phi", "a^phi", "b^phi", "g^phi", "res", "channels", "repeats", "weight_bytes",
            "macs", "peak_act", "latency"] + (["test_acc"] if trained else [])
    for name, members in result["families"].items():
        rows = [head]
        b = result["base"]
        base_row = ["B0", "-", "0", "1", "1", "1", str(b["resolution"]), _channels(b), _repeats(b),
                    _fmt(b["weight_bytes"], "weight_bytes"),
                    _fmt(b["macs"], "macs"), _fmt(b["peak_act_bytes"], "peak_act_bytes"),
                    _fmt(b["latency_ms"], "latency_ms")] + ([_acc(b.get("test_accuracy"))] if trained else [])
        rows.append(base_row)
        for i, m in enumerate(members):
            rows.append([f"B{i + 1}", _fmt(m["target"], m["by"]), f"{m['phi']:.4f}" + ("*" if m["capped"] else ""),
                         f"{m['depth_multiplier']:.3f}", f"{m['width_multiplier']:.3f}",
                         f"{m['resolution_multiplier']:.3f}", str(m["resolution"]),
                         _channels(m), _repeats(m), _fmt(m["weight_bytes"], "weight_bytes"),
                         _fmt(m["macs"], "macs"), _fmt(m["peak_act_bytes"], "peak_act_bytes"),
                         _fmt(m["latency_ms"], "latency_ms")] + ([_acc(m.get("test_accuracy"))] if trained else []))
        widths = [max(len(r[j]) for r in rows) for j in range(len(head))]
        lines.append(f"\n{name} scaling:")
        lines += ["  " + "  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in rows]
    if any(m["capped"] for ms in result["families"].values() for m in ms):
        lines.append(f"\n* capped: phi stopped at the multiplier cap ({result['max_multiplier']:g}x), not at the "
                     f"budget (the cost does not grow enough along that axis)")
    lines.append("channels: stem/blocks.../head; repeats: per block")
    if result["figure"]:
        lines.append(f"figure: {result['figure']}")
    return "\n".join(lines)


def _channels(m: dict) -> str:
    return "/".join(str(x) for x in [m["stem_chs"], *m["channels"], m["head_chs"]])


def _repeats(m: dict) -> str:
    return "/".join(str(x) for x in m["repeats"])


def _acc(value) -> str:
    return "-" if value is None else f"{value:.4f}"
