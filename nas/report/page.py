"""The report page: figures of a study and one self-contained HTML file.

Sections, in page order:
1. Pareto fronts: validation accuracy vs weight_bytes, vs predicted latency_ms and vs macs.
   Trained feasible trials, their Pareto front (straight segments between its points),
   pruned trials (last validation accuracy), and infeasible trials (never trained, drawn in
   a band under the trained accuracies with a different marker), with the budget drawn as a
   line and the region over it shaded. Without a device profile the latency section shows
   what is known instead: the latency measured on this machine for the retrained finalists
   (else accuracy vs mem_access_bytes, the memory-access cost latency follows on small
   devices), under a one-line note saying how to get a profile.
2. Optimisation history (`optuna.visualization.plot_optimization_history`; optuna greys the
   infeasible trials from the constraints the sampler stored).
3. Parameter importances (`optuna.visualization.plot_param_importances`) over the trained
   trials only: infeasible trials score 0 by rule, not by training, and would swamp them.
4. The chosen trial: per-layer bit widths, weight_bytes, macs, mem_access_bytes and
   predicted latency, and the seed's metrics table.

plotly.js is embedded once in <head>, so the file opens offline.
"""

import html
import math
from dataclasses import dataclass, field

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from nas.report import study as study_view
from nas.search.records import ProfileStamp, StudyRecord, TrialRecord
from nas.search.results import best_feasible, is_feasible, result_trial, tally
from nas.units import format_bytes, format_count, format_seconds

MIN_IMPORTANCE_TRIALS = 3  # fANOVA on fewer trained trials says nothing
LOG_SPAN = 20  # a Pareto plot's cost axis turns logarithmic when its values span more than this factor
PLOT_CONFIG = {"displaylogo": False, "responsive": True}

FEASIBLE, PARETO, PRUNED, INFEASIBLE, CHOSEN, BUDGET = "#1f77b4", "#2ca02c", "#7f7f7f", "#d62728", "#ff7f0e", "#d62728"


class Latency:
    """Predicted latency on one device profile (`nas.cost.latency.Profile`), given explicitly.

    No profile (`reason` says why: none there, or one this version cannot read): every
    prediction is None, and the report shows "no device profile" in place of latency figures."""

    def __init__(self, profile=None, reason: str | None = None):
        self._profile = profile
        self.reason: str | None = None if profile is not None else (reason or "no device profile")
        self._cache: dict = {}

    @classmethod
    def load(cls, path=None) -> "Latency":
        """The profile at `path` (default: `$NAS_PROFILE`, else this host's), for a command's edge;
        a missing, corrupt or foreign-version profile gives a Latency without one: the report goes on."""
        from nas.cost import latency
        try:
            return cls(latency.require_profile(path))
        except Exception as e:
            message = str(e).splitlines()[0] if str(e) else type(e).__name__
            return cls(None, message if message.startswith("no device profile") else f"no device profile ({message})")

    @property
    def available(self) -> bool:
        return self._profile is not None

    @property
    def profile(self):
        return self._profile

    def predict(self, arch: str, cost=None):
        """`nas.cost.latency.Prediction` (total_ms, layers[i].ms) of an arch string, or None."""
        if not self.available:
            return None
        if arch not in self._cache:
            from nas.cost.latency import predict
            from nas.space import decode
            try:
                self._cache[arch] = predict(decode(arch), self._profile, cost)
            except Exception as e:  # a profile that cannot price some op: report it, show the rest
                self.reason = f"the latency model failed ({type(e).__name__}: {e})"
                self._cache[arch] = None
        return self._cache[arch]

    def total(self, trial: FrozenTrial) -> float | None:
        """latency_ms the search recorded (predicted then), else predicted now from the arch string."""
        record = TrialRecord.of(trial)
        recorded = record.cost("latency_ms")
        if recorded is not None:
            return float(recorded)
        prediction = self.predict(record.arch) if record.arch is not None else None
        return None if prediction is None else float(prediction.total_ms)

    def layers(self, arch: str, cost) -> list[float] | None:
        prediction = self.predict(arch, cost)
        return None if prediction is None else [float(layer.ms) for layer in prediction.layers]


@dataclass
class Point:
    trial: FrozenTrial
    accuracy: float | None
    x: float | None


@dataclass
class Report:
    """Everything the page shows (`nas.report.cli` turns it into the --json summary)."""

    study: optuna.Study
    storage: str
    trials: list
    chosen: FrozenTrial
    latency: Latency
    figures: dict = field(default_factory=dict)  # id -> (title, go.Figure or None, note)
    pareto: list = field(default_factory=list)  # trial numbers on the weight_bytes front
    metrics: dict = field(default_factory=dict)
    layers: list = field(default_factory=list)
    layer_latency: list | None = None
    best: int | None = None  # number of the best feasible trial
    profile_note: str | None = None  # set when the study was priced on another device profile


def pareto_front(points: list[Point]) -> list[Point]:
    """Non-dominated points: no other point has higher-or-equal accuracy at lower-or-equal cost."""
    front, best = [], -math.inf
    for p in sorted(points, key=lambda p: (p.x, -p.accuracy)):
        if p.accuracy > best:
            front.append(p)
            best = p.accuracy
    return front


def _hover(t: FrozenTrial, accuracy: float | None, what: str) -> str:
    r = TrialRecord.of(t)
    acc = "not trained" if accuracy is None else f"val acc {accuracy:.4f}"
    return (f"trial {t.number} ({what})<br>{acc}<br>weight {format_bytes(r.cost('weight_bytes', 0))}, "
            f"macs {format_count(r.cost('macs', 0))}<br>{html.escape(r.arch or '')}")


def _scatter(points: list[Point], name: str, what: str, **marker) -> go.Scatter:
    return go.Scatter(x=[p.x for p in points], y=[p.accuracy if p.accuracy is not None else 0.0 for p in points],
                      mode="markers", name=name, marker=marker,
                      hovertext=[_hover(p.trial, p.accuracy, what) for p in points], hoverinfo="text")


def _x_range(xs: list[float], log: bool) -> list[float]:
    """Axis range holding every x with a margin (log axes take log10 coordinates)."""
    lo, hi = min(xs), max(xs)
    if log:
        pad = 0.06 * max(math.log10(hi / lo), 0.3)
        return [math.log10(lo) - pad, math.log10(hi) + pad]
    pad = 0.06 * (hi - lo) if hi > lo else 0.1 * abs(hi) or 1.0
    return [lo - pad, hi + pad]


def pareto_figure(trials: list, chosen: FrozenTrial, x_of, x_title: str, budget: float | None,
                  budget_text: str) -> tuple[go.Figure, list[int]]:
    """Accuracy vs one cost; returns the figure and the Pareto trials' numbers.

    The x axis spans every trial and the budget (nothing clipped), the region over budget is
    shaded, the y axis spans the trained accuracies (so that a front of close accuracies is not
    flattened against 0), and infeasible trials, never trained, sit on the axis floor."""
    trained, pruned, infeasible = [], [], []
    for t in trials:
        x = x_of(t)
        if x is None:
            continue
        if TrialRecord.of(t).trained_complete:
            trained.append(Point(t, study_view.search_accuracy(t), x))
        elif t.state == TrialState.COMPLETE and not is_feasible(t):
            infeasible.append(Point(t, None, x))
        elif t.state == TrialState.PRUNED:
            pruned.append(Point(t, study_view.search_accuracy(t), x))
    y_lo, y_hi, floor = _y_range([p.accuracy for p in trained + pruned if p.accuracy is not None], bool(infeasible))
    feasible_trained = [p for p in trained if is_feasible(p.trial)]
    front = pareto_front(feasible_trained)
    fig = go.Figure()
    xs = [p.x for p in trained + pruned + infeasible if p.x > 0] + ([budget] if budget else [])
    log = bool(xs) and max(xs) > LOG_SPAN * min(xs)  # costs spanning decades: log axis
    x_range = _x_range(xs, log) if xs else None
    if budget is not None and x_range is not None:
        # over budget: a filled trace, not a shape (shapes on log axes take log10 coordinates)
        right = 10 ** x_range[1] if log else x_range[1]
        if right > budget:
            fig.add_trace(go.Scatter(x=[budget, right, right, budget, budget], y=[y_lo, y_lo, y_hi, y_hi, y_lo],
                                     fill="toself", fillcolor="rgba(214,39,40,0.08)", line=dict(width=0),
                                     mode="lines", name="over budget (infeasible)", hoverinfo="name"))
    fig.add_trace(_scatter(feasible_trained, "trained, feasible", "feasible", color=FEASIBLE, size=9))
    # straight segments between the front's points: with 2-3 points a staircase reads as a flat step
    fig.add_trace(go.Scatter(x=[p.x for p in front], y=[p.accuracy for p in front], mode="lines+markers",
                             line=dict(color=PARETO, shape="linear", width=2), name="Pareto front", hoverinfo="skip",
                             marker=dict(size=15, color="rgba(0,0,0,0)", line=dict(color=PARETO, width=2))))
    if pruned:
        fig.add_trace(_scatter(pruned, "pruned (last val acc)", "pruned", color="rgba(0,0,0,0)", size=8,
                               line=dict(color=PRUNED, width=1.5)))
    if infeasible:
        trace = _scatter(infeasible, "infeasible (never trained; bottom band)", "infeasible", color=INFEASIBLE,
                         size=9, symbol="x")
        trace.y = [floor] * len(infeasible)
        fig.add_trace(trace)
    x = x_of(chosen)
    if x is not None:
        y = study_view.search_accuracy(chosen)
        fig.add_trace(go.Scatter(x=[x], y=[floor if y is None else y], mode="markers",
                                 name=f"shown below: trial {chosen.number}", hoverinfo="skip",
                                 marker=dict(symbol="star", size=16, color=CHOSEN, line=dict(color="black", width=1))))
    if budget is not None:
        fig.add_trace(go.Scatter(x=[budget, budget], y=[y_lo, y_hi], mode="lines", name=budget_text,
                                 line=dict(color=BUDGET, dash="dash"), hoverinfo="name"))
    fig.update_layout(xaxis_title=x_title, yaxis_title="validation accuracy (search)", height=460,
                      margin=dict(l=60, r=20, t=30, b=50), legend=dict(orientation="h", y=-0.18))
    fig.update_yaxes(range=[y_lo, y_hi])
    if x_range is not None:
        fig.update_xaxes(range=x_range)
    if log:
        fig.update_xaxes(type="log", **_log_ticks(x_range))
    else:
        fig.update_xaxes(tickformat="~s")  # 20k, 1.5M: SI, as the units module prints sizes
    return fig, [p.trial.number for p in front]


def _y_range(accuracies: list[float], floor_band: bool) -> tuple[float, float, float]:
    """(low, high, floor): the trained accuracies with a margin (not 0..1, so that close
    accuracies are not flattened), and, when there are never-trained trials to draw, a band
    under them whose middle (`floor`) holds those markers whole (not cut by the axis)."""
    if not accuracies:
        return 0.0, 1.0, 0.04
    lo, hi = min(accuracies), max(accuracies)
    pad = max(0.08 * (hi - lo), 0.005)
    y_lo, y_hi = lo - pad, hi + pad
    band = 0.12 * (y_hi - y_lo) if floor_band else 0.0
    y_lo -= band
    return y_lo, y_hi, y_lo + band / 2 if floor_band else y_lo


def _log_ticks(x_range: list[float]) -> dict:
    """Tick values and labels for a log axis over `x_range` (log10 coordinates): 1-2-5 per
    decade over narrow spans, every decade over wide ones, every other decade (or fewer)
    beyond that: at most about 9 labels, each a short SI figure, so they never collide."""
    lo, hi = x_range
    span = hi - lo
    mantissas = (1, 2, 5) if span <= 2.2 else (1, 3) if span <= 3.5 else (1,)
    step = max(1, math.ceil(span / 8)) if mantissas == (1,) else 1
    vals = [m * 10.0 ** e for e in range(math.floor(lo) - 1, math.ceil(hi) + 1) if e % step == 0
            for m in mantissas if lo <= math.log10(m * 10.0 ** e) <= hi]
    return dict(tickmode="array", tickvals=vals, ticktext=[_si(v) for v in vals])


def _si(v: float) -> str:
    """20k, 1.5M, 0.5m: a short SI label (plotly's "~s" format, done here for explicit ticks)."""
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""), (1e-3, "m"), (1e-6, "µ")):
        if abs(v) >= factor:
            return f"{v / factor:.3g}{suffix}"
    return f"{v:.3g}"


def measured_latency_figure(study: optuna.Study, trials: list, chosen: FrozenTrial) -> tuple[go.Figure | None, str]:
    """Without a device profile, what is known of latency: the final retrainings' measured
    batch-1 latency on the machine that ran the search, against their final validation
    accuracy. (None, "") when no finalist recorded one."""
    from nas.search.results import final_record

    points = []
    for t in trials:
        record = final_record(study, t.number)
        if record is not None and record.latency_measured_ms and record.val_accuracy is not None:
            points.append((t, record))
    if not points:
        return None, ""
    accs = [r.val_accuracy for _, r in points]
    y_lo, y_hi, _ = _y_range(accs, False)
    xs = [r.latency_measured_ms for _, r in points]
    log = max(xs) > LOG_SPAN * min(xs)
    x_range = _x_range(xs, log)
    fig = go.Figure()
    hover = [f"trial {t.number} (retrained)<br>val acc {r.val_accuracy:.4f}, test acc "
             f"{r.test_accuracy if r.test_accuracy is not None else float('nan'):.4f}<br>measured "
             f"{r.latency_measured_ms:.3g} ms per image (batch 1)<br>{html.escape(r.arch or '')}" for t, r in points]
    fig.add_trace(go.Scatter(x=xs, y=accs, mode="markers", name="retrained finalist (measured, batch 1)",
                             marker=dict(color=FEASIBLE, size=10), hovertext=hover, hoverinfo="text"))
    mine = [(r.latency_measured_ms, r.val_accuracy) for t, r in points if t.number == chosen.number]
    if mine:
        fig.add_trace(go.Scatter(x=[mine[0][0]], y=[mine[0][1]], mode="markers", hoverinfo="skip",
                                 name=f"shown below: trial {chosen.number}",
                                 marker=dict(symbol="star", size=16, color=CHOSEN, line=dict(color="black", width=1))))
    fig.update_layout(xaxis_title="latency_ms (measured on this machine, batch 1, per image)",
                      yaxis_title="validation accuracy (final retraining)", height=420,
                      margin=dict(l=60, r=20, t=30, b=50), legend=dict(orientation="h", y=-0.2))
    fig.update_yaxes(range=[y_lo, y_hi])
    fig.update_xaxes(range=x_range)
    if log:
        fig.update_xaxes(type="log", **_log_ticks(x_range))
    n = len(points)
    return fig, f"the latency measured on this machine for the {n} retrained finalist{'s' * (n != 1)}"


def history_figure(study: optuna.Study) -> go.Figure:
    # optuna draws its best-value line only without a target, i.e. for single-objective studies
    target = None if len(study.directions) == 1 else (lambda t: t.values[0])
    fig = optuna.visualization.plot_optimization_history(study, target=target, target_name="validation accuracy")
    fig.update_layout(height=420, title=None, margin=dict(l=60, r=20, t=30, b=50))
    return fig


def importance_figure(study: optuna.Study, trials: list) -> tuple[go.Figure | None, str | None]:
    """Importances over trained trials; (None, why) when there are too few or fANOVA cannot run."""
    trained = [t for t in trials if TrialRecord.of(t).trained_complete]
    if len(trained) < MIN_IMPORTANCE_TRIALS:
        return None, (f"parameter importances need at least {MIN_IMPORTANCE_TRIALS} trained trials; "
                      f"this study has {len(trained)}")
    copy = optuna.create_study(directions=study.directions)
    copy.add_trials(trained)
    try:
        fig = optuna.visualization.plot_param_importances(
            copy, target=lambda t: t.values[0], target_name="validation accuracy",
            evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError) as e:  # e.g. no parameter common to all trained trials
        return None, f"parameter importances unavailable: {e}"
    fig.update_layout(height=max(300, 28 * len(fig.data[0].y) + 120) if fig.data else 300, title=None,
                      margin=dict(l=140, r=20, t=30, b=50))
    return fig, None


def layer_figure(layers, latency_ms: list[float] | None) -> go.Figure:
    """One row per figure, layers in execution order on a shared x axis (latency row only
    with a device profile)."""
    names = [f"{i}:{layer.name}" for i, layer in enumerate(layers)]
    rows = [("bit width (w squares, a circles)", None, None, "bits"), ("weight_bytes", "weight_bytes", "#1f77b4", "bytes"),
            ("macs", "macs", "#ff7f0e", "MACs"), ("mem_access_bytes", "mem_access_bytes", "#2ca02c", "bytes")]
    if latency_ms is not None:
        rows.append(("latency ms (predicted)", "latency_ms", "#8c564b", "ms"))
    fig = make_subplots(rows=len(rows), cols=1, shared_xaxes=True, vertical_spacing=0.03,
                        subplot_titles=[r[0] for r in rows])
    hover = [f"{n}<br>{layer.op} k{layer.kernel} s{layer.stride} g{layer.groups}<br>in {list(layer.in_shapes[0])} "
             f"out {list(layer.out_shape)}<br>w{layer.w_bits} a{layer.a_bits}" for n, layer in zip(names, layers)]
    fig.add_trace(go.Scatter(x=names, y=[layer.w_bits or None for layer in layers], mode="markers", name="w_bits",
                             marker=dict(symbol="square", size=9, color="#9467bd"), hovertext=hover), 1, 1)
    fig.add_trace(go.Scatter(x=names, y=[layer.a_bits for layer in layers], mode="markers", name="a_bits",
                             marker=dict(symbol="circle-open", size=12, color="#17becf", line=dict(width=2)),
                             hovertext=hover), 1, 1)
    for row, (*_, unit) in enumerate(rows, start=1):
        fig.update_yaxes(title_text=unit, row=row, col=1)
    for row, (_, attr, color, _unit) in enumerate(rows[1:], start=2):
        y = latency_ms if attr == "latency_ms" else [getattr(layer, attr) for layer in layers]
        fig.add_trace(go.Bar(x=names, y=y, name=attr, marker_color=color, hovertext=hover), row, 1)
    fig.update_yaxes(type="log", tickvals=[1, 2, 4, 8, 16, 32], ticktext=["1", "2", "4", "8", "16", "32"],
                     range=[-0.15, 1.65], row=1, col=1)
    fig.update_xaxes(tickangle=-60, tickfont=dict(size=9), row=len(rows), col=1)
    fig.update_layout(height=230 * len(rows) + 200, showlegend=False, margin=dict(l=70, r=20, t=40, b=180))
    return fig


def build(study: optuna.Study, storage: str, trial_number: int | None, latency: Latency | None = None) -> Report:
    """The report of `study`, per-layer figures for trial `trial_number` (None: the search's
    result), latency priced on `latency`'s profile (None: no profile)."""
    from nas.cost import arch_cost
    from nas.space import decode

    trials = study.get_trials(deepcopy=False)
    chosen = study_view.pick_trial(study, trials, trial_number)
    best = result_trial(study, trials).number
    latency = latency if latency is not None else Latency()
    report = Report(study=study, storage=storage, trials=trials, chosen=chosen, latency=latency, best=best)
    record = StudyRecord.of(study)
    budgets = record.budgets
    stamp = record.profile  # the profile that priced the recorded latency_ms (digest None: none was recorded)
    if latency.available and stamp is not None and stamp.digest not in (None, ProfileStamp.of(latency.profile).digest):
        report.profile_note = (f"the search priced latency with {record.profile.describe()}; figures predicted "
                               f"here use {ProfileStamp.of(latency.profile).describe()}")

    def weight(t):
        return TrialRecord.of(t).cost("weight_bytes")

    mem = budgets.weight_bytes
    fig, report.pareto = pareto_figure(trials, chosen, weight, "weight_bytes (deployable weight payload, B)", mem,
                                       f"budget weight_bytes <= {format_bytes(mem)}" if mem else "")
    report.figures["pareto-weight"] = ("Accuracy vs weight_bytes", fig, None)

    lat_budget = budgets.latency_ms
    have_latency = latency.available or any(TrialRecord.of(t).cost("latency_ms") is not None
                                            for t in trials)  # the search records None without a profile
    if have_latency:
        fig, _ = pareto_figure(trials, chosen, latency.total, "latency_ms (predicted)", lat_budget,
                               f"budget latency_ms <= {lat_budget:.3g} ms" if lat_budget else "")
        report.figures["pareto-latency"] = ("Accuracy vs predicted latency", fig, None)
    else:
        hint = "" if "nas calibrate" in latency.reason else "; run `nas calibrate` on the target device"
        fig, shown = measured_latency_figure(study, trials, chosen)
        if fig is not None:
            report.figures["latency-measured"] = (
                "Accuracy vs latency measured on this machine (retrained finalists)", fig,
                f"{latency.reason}{hint} to predict every trial's latency; shown: {shown}")
        else:
            def mem_access(t):
                return TrialRecord.of(t).cost("mem_access_bytes")

            fig, _ = pareto_figure(trials, chosen, mem_access, "mem_access_bytes (bytes read and written per image)",
                                   None, "")
            report.figures["latency-measured"] = (
                "Accuracy vs memory-access cost (no latency known)", fig,
                f"{latency.reason}{hint} to predict every trial's latency; shown: memory-access cost, which "
                f"latency follows on small devices (no finalist has a measured latency yet)")

    def macs(t):
        return TrialRecord.of(t).cost("macs")

    macs_budget = budgets.macs
    fig, _ = pareto_figure(trials, chosen, macs, "macs (multiply-accumulates per image)", macs_budget,
                           f"budget macs <= {format_count(macs_budget)}" if macs_budget else "")
    report.figures["pareto-macs"] = ("Accuracy vs macs", fig, None)

    report.figures["history"] = ("Optimisation history", history_figure(study), None)
    fig, note = importance_figure(study, trials)
    report.figures["importance"] = ("Parameter importances (fANOVA, trained trials)", fig, note)

    chosen_arch = TrialRecord.of(chosen).arch
    cost = arch_cost(decode(chosen_arch))
    report.layers = list(cost.layers)
    report.layer_latency = latency.layers(chosen_arch, cost)
    no_latency = None
    if report.layer_latency is None:
        no_latency = f"per-layer latency: {latency.reason or 'the latency model gives no per-layer figures'}"
    report.figures["layers"] = (f"Trial {chosen.number}: per layer", layer_figure(cost.layers, report.layer_latency),
                                no_latency)
    report.metrics = study_view.seed_metrics(study, chosen)
    return report


# ----------------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1150px;color:#222}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0} td,th{border:1px solid #ddd;padding:3px 8px}
th{background:#f4f4f4;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:12px;word-break:break-all} .note{color:#555;font-style:italic;padding:12px}
#layers{font-size:11px} #layers td{padding:2px 4px}
.small{color:#555;font-size:13px}
"""


def _fmt(value, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "bytes":
        return f"{format_bytes(value)} ({int(value):,} B)"
    if kind == "seconds":
        return format_seconds(value)
    if kind == "ms":
        return f"{value:.4g} ms"
    if kind == "acc":
        return f"{value:.4f}"
    return f"{value:.4g}"


METRIC_ROWS = (  # key, label, kind
    ("weight_bytes", "memory footprint (weight_bytes)", "bytes"),
    ("train_time_s", "training time", "seconds"),
    ("infer_ms_per_image", "inference time (batch 1, per image)", "ms"),
    ("peak_train_mem_bytes", "peak training memory (process RSS growth while training)", "bytes"),
    ("accuracy", "accuracy", "acc"),
    ("information_density", "Information Density (% per M params)", "num"),
    ("netscore", "NetScore (20 log10 a^2 / (p^0.5 m^0.5))", "num"),
)


def _metrics_table(metrics: dict) -> str:
    cols = [("search", "search (short training; val accuracy)")]
    if "final" in metrics:
        cols.append(("final", f"final retraining ({metrics['final'].get('epochs')} epochs; test accuracy)"))
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in cols)
    rows = []
    for key, label, kind in METRIC_ROWS:
        cells = "".join(f'<td class="num">{html.escape(_fmt(metrics[c].get(key), kind))}</td>' for c, _ in cols)
        rows.append(f"<tr><th>{html.escape(label)}</th>{cells}</tr>")
    methods = sorted({m for c, _ in cols if (m := metrics[c].get("peak_mem_method"))})
    how = (" Peak training memory: " + "; ".join(html.escape(m) for m in methods) + ". It counts what the training "
           "step really allocates (activations kept for backward, gradients, optimizer state, batches) and the "
           "allocator's own overhead, freed heap handed back first, so each training reads its own growth "
           "(search and final runs of one arch land in the same range).") if methods else ""
    return (f'<table id="metrics"><tr><th>metric</th>{head}</tr>{"".join(rows)}</table>'
            "<p class='small' id='metrics-note'>-: not measured (search trials skip the inference timing; the final "
            "retraining measures it). Information Density and NetScore use each column's accuracy in %, params and "
            f"macs in millions (Wong, arXiv:1806.05512).{how}</p>")


def _layers_table(layers, latency_ms) -> str:
    head = ("#", "layer", "op", "in (C,H,W)", "out (C,H,W)", "k/s/g", "w bits", "a bits", "params", "weight_bytes",
            "macs", "mem_access", "mem_access_bytes", "latency ms")
    rows = []
    for i, layer in enumerate(layers):
        lat = "-" if latency_ms is None else f"{latency_ms[i]:.4g}"
        cells = (i, layer.name, layer.op, "x".join(map(str, layer.in_shapes[0])), "x".join(map(str, layer.out_shape)),
                 f"{layer.kernel}/{layer.stride}/{layer.groups}", layer.w_bits or "-", layer.a_bits,
                 f"{layer.params:,}", f"{layer.weight_bytes:,}", f"{layer.macs:,}", f"{layer.mem_access:,}",
                 f"{layer.mem_access_bytes:,}", lat)
        rows.append("<tr>" + "".join(f'<td class="num">{html.escape(str(c))}</td>' for c in cells) + "</tr>")
    th = "".join(f"<th>{h}</th>" for h in head)
    return f'<table id="layers"><tr>{th}</tr>{"".join(rows)}</table>'


def _best_table(trials: list, latency: Latency) -> str:
    rows = []
    for t in best_feasible(trials)[:10]:
        r = TrialRecord.of(t)
        c = r.costs
        lat = latency.total(t)
        cells = (t.number, f"{t.values[0]:.4f}", format_bytes(c["weight_bytes"]), format_bytes(c["peak_act_bytes"]),
                 format_count(c["macs"]), "-" if lat is None else f"{lat:.3g} ms")
        tds = "".join(f'<td class="num">{html.escape(str(x))}</td>' for x in cells)
        rows.append(f"<tr>{tds}<td><code>{html.escape(r.arch)}</code></td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("trial", "val acc", "weight", "peak act", "macs", "latency", "arch"))
    return f'<table id="best"><tr>{head}</tr>{"".join(rows)}</table>'


def _figure_html(fig_id: str, fig: go.Figure | None, note: str | None) -> str:
    if fig is None:
        return f'<div id="{fig_id}" class="note">{html.escape(note or "")}</div>'
    above = f'<p class="note" id="{fig_id}-note">{html.escape(note)}</p>' if note else ""
    return above + fig.to_html(full_html=False, include_plotlyjs=False, div_id=fig_id, config=PLOT_CONFIG)


def render(report: Report) -> str:
    s, t = report.study, report.chosen
    identity = StudyRecord.of(s).identity
    c = tally(report.trials)
    budgets = identity.budgets.describe() if identity is not None else "none"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>nas report: {html.escape(s.study_name)}</title><style>{_CSS}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>',
        f"<h1>Study <code>{html.escape(s.study_name)}</code></h1>",
        f"<p class='small'>storage <code>{html.escape(report.storage)}</code> · space "
        f"<code>{html.escape(str(getattr(identity, 'space', None) or '?'))}</code> · dataset "
        f"<code>{html.escape(str(getattr(identity, 'dataset', None) or '?'))}</code> · budgets {html.escape(budgets)} · "
        f"objectives {html.escape(str(getattr(identity, 'objectives', None) or '?'))}</p>",
        f"<p class='small' id='counts'>{c.trials} trials: {c.trained} trained, {c.duplicates} duplicate (an "
        f"architecture trained before: its result reused), {c.infeasible} infeasible (never trained), "
        f"{c.pruned} pruned, {c.failed} failed, {c.running} running</p>",
        f"<p class='note' id='profile-note'>{html.escape(report.profile_note)}</p>" if report.profile_note else "",
        "<h2>Best feasible trials</h2>", _best_table(report.trials, report.latency),
    ]
    order = ("pareto-weight", "pareto-latency", "latency-measured", "pareto-macs", "history", "importance")
    for fig_id in order:
        if fig_id not in report.figures:
            continue
        title, fig, note = report.figures[fig_id]
        parts += [f"<h2>{html.escape(title)}</h2>", _figure_html(fig_id, fig, note)]
    chosen = TrialRecord.of(t)
    costs = chosen.costs
    lat = report.latency.total(t)
    parts += [
        f"<h2>Trial {t.number}{' (best feasible)' if t.number == report.best else ''}</h2>",
        f"<p><code id='arch'>{html.escape(chosen.arch)}</code></p>",
        f"<p class='small'>params {costs['params']:,} · macs {costs['macs']:,} · weight_bytes "
        f"{costs['weight_bytes']:,} · peak_act_bytes {costs['peak_act_bytes']:,} "
        f"(at {html.escape(str(costs.get('peak_act_at', '?')))}, input counted) · mem_access "
        f"{costs['mem_access']:,} elements / {costs['mem_access_bytes']:,} B · bops {costs['bops']:,} · "
        f"latency {'-' if lat is None else f'{lat:.3g} ms (predicted)'}</p>",
        "<h3>The seed's metrics</h3>", _metrics_table(report.metrics),
    ]
    title, fig, note = report.figures["layers"]
    parts += ["<h3>Per layer (execution order)</h3>",
              f"<p class='note'>{html.escape(note)}</p>" if note else "", _figure_html("layers-figure", fig, None),
              _layers_table(report.layers, report.layer_latency), "</body></html>"]
    return "\n".join(parts)
