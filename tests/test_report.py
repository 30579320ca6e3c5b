"""`nas report` and `nas dashboard` on a real study: a short `nas search` on real data (scikit-learn's
digits, the project's dataset for tiny tests), built once for this module.

The report is opened in headless Chromium, driven over the DevTools protocol on a pipe: every
plot must draw, the page must look like something (screenshot far from blank), and there must be
no uncaught exception, no console error and no request leaving the file (it works offline).
"""

import base64
import io
import itertools
import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import pytest

from nas.cli import build_parser, main
from nas.report.page import Point, pareto_front

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason=f"{CHROMIUM} not installed (Debian package chromium)")
STUDY = "rep"
SEARCH = ["search", "--study", STUDY, "--target-mem", "40KB", "--space", "search_spaces/mcu.yaml", "--dataset",
          "digits", "--trials", "3", "--subset", "64", "--batch-size", "64", "--epochs", "1", "--final-epochs", "1",
          "--final-subset", "64", "--seed", "1", "--no-progress", "--json"]


def _nas(args, cwd, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "nas.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """A folder holding a real searched study `rep` in studies/rep.journal (with a final retraining)."""
    d = tmp_path_factory.mktemp("report_study")
    (d / "search_spaces").symlink_to(REPO / "search_spaces")
    r = _nas(SEARCH, d)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["trained"] >= 3 and summary["final"], summary
    return d


@pytest.fixture(scope="module")
def report(study_dir):
    """(html text, --json summary, path) of `nas report` run as a user would."""
    out = study_dir / "out" / "report.html"
    r = _nas(["report", "--study", STUDY, "-o", str(out), "--json"], study_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    return out.read_text(encoding="utf-8"), json.loads(r.stdout), out


def _study(study_dir):
    from nas.search.storage import open_storage
    return optuna.load_study(study_name=STUDY, storage=open_storage(f"journal:{study_dir / 'studies' / 'rep.journal'}"))


def _best(study) -> int:
    """The search's result: of the retrained finalists, the best final validation accuracy."""
    finals = [v for k, v in study.user_attrs.items() if k.startswith("final:")]
    assert len(finals) >= 2  # the fixture's search retrains its top distinct architectures
    return max(finals, key=lambda r: (r["val_accuracy"], -r["costs"]["weight_bytes"], -r["trial"]))["trial"]


# ------------------------------------------------------------------------------ the page


def test_pareto_front_keeps_only_non_dominated_points():
    pts = [Point(None, a, x) for a, x in [(0.5, 10), (0.6, 20), (0.55, 30), (0.6, 25), (0.7, 40), (0.4, 5)]]
    assert [(p.accuracy, p.x) for p in pareto_front(pts)] == [(0.4, 5), (0.5, 10), (0.6, 20), (0.7, 40)]


def test_report_is_self_contained_and_holds_the_study(report, study_dir):
    text, summary, path = report
    study = _study(study_dir)
    trained = [t for t in study.trials if t.user_attrs.get("trained")]
    assert summary["report"] == str(path.resolve()) and summary["bytes"] == path.stat().st_size
    duplicates = {t.number for t in study.trials if "duplicate_of" in t.user_attrs}
    assert summary["trained"] == len({t.number for t in trained} - duplicates) and summary["trials"] == len(study.trials)
    assert summary["duplicates"] == len(duplicates)
    parts = ("trained", "duplicates", "infeasible", "pruned", "failed", "running")
    assert sum(summary[k] for k in parts) == summary["trials"], summary
    assert summary["chosen_trial"] == summary["best_trial"] == _best(study)
    chosen = study.trials[summary["chosen_trial"]]
    assert summary["arch"] == chosen.user_attrs["arch"]
    # plotly.js is embedded; nothing is fetched from the network
    assert len(text) > 3_000_000  # plotly.min.js alone is ~3.5 MB
    assert "Plotly" in text and not re.search(r"<script[^>]*\bsrc=", text)
    # every section and the plots' data: ids, every trained trial's arch and hover text, the budget line
    for div in ("pareto-weight", "latency-measured", "pareto-macs", "history", "importance", "layers-figure",
                "metrics", "layers"):
        assert f'id="{div}"' in text, div
    for t in trained:
        assert t.user_attrs["arch"] in text
        assert f"trial {t.number} (feasible)" in text
    assert 'budget weight_bytes \\u003c= 40 KB","x":[40000,40000]' in text  # plotly's JSON escapes '<'
    infeasible = [t for t in study.trials if t.user_attrs.get("feasible") is False]
    for t in infeasible:
        assert f"trial {t.number} (infeasible)" in text
    # the seed's metrics for the chosen trial, from the search and from the final retraining
    m = summary["metrics"]
    assert m["search"]["weight_bytes"] == chosen.user_attrs["costs"]["weight_bytes"]
    assert m["search"]["accuracy"] == pytest.approx(chosen.values[0])
    assert m["final"]["accuracy"] == study.user_attrs[f"final:{chosen.number}"]["test_accuracy"]
    for column in ("search", "final"):
        for key in ("weight_bytes", "train_time_s", "peak_train_mem_bytes", "accuracy", "information_density",
                    "netscore"):
            assert m[column][key] is not None, (column, key)
    assert m["final"]["infer_ms_per_image"] is not None
    # peak training memory: what it measures is said, and the search's and the final retraining's
    # figures of one arch are in the same range (once 57.6 MB against 139 KB: the second training
    # in a process reused the heap the first had freed)
    ratio = m["search"]["peak_train_mem_bytes"] / max(m["final"]["peak_train_mem_bytes"], 1)
    assert 0.1 < ratio < 10, (m["search"]["peak_train_mem_bytes"], m["final"]["peak_train_mem_bytes"])
    assert "peak training memory (process RSS growth while training)" in text
    assert "VmHWM" in text or "sampled" in text or "ru_maxrss" in text  # the method, in the note under the table
    for label in ("memory footprint", "training time", "inference time", "accuracy",
                  "Information Density", "NetScore"):
        assert label in text
    # per-layer table rows = the cost model's layers
    from nas.cost import arch_cost
    from nas.space import decode
    layers = arch_cost(decode(chosen.user_attrs["arch"])).layers
    assert text.count("<tr>", text.index('id="layers"')) == len(layers) + 1


def test_pareto_figures_show_every_trial_the_budget_and_units(study_dir):
    """Nothing clipped: the x axis spans every trial and the budget, the region over budget is
    shaded, the y axis spans the trained accuracies (not 0..1), infeasible trials sit in a band
    under them, the Pareto front is straight segments, the per-layer axes carry units, and
    without a device profile the latency section shows measured finalists and how to get one."""
    import math

    from nas.report.page import build
    from nas.search.records import TrialRecord

    study = _study(study_dir)
    report = build(study, "journal", None)
    assert set(report.figures) >= {"pareto-weight", "latency-measured", "pareto-macs", "history", "importance"}
    for key, cost in (("pareto-weight", "weight_bytes"), ("pareto-macs", "macs")):
        fig = report.figures[key][1]
        lo, hi = fig.layout.xaxis.range
        log = fig.layout.xaxis.type == "log"
        xs = [TrialRecord.of(t).cost(cost) for t in study.trials if TrialRecord.of(t).cost(cost)]
        for x in xs + ([40_000] if cost == "weight_bytes" else []):
            v = math.log10(x) if log else x
            assert lo < v < hi, (key, x, lo, hi)
        y_lo, y_hi = fig.layout.yaxis.range
        trained = [t.values[0] for t in study.trials if TrialRecord.of(t).trained_complete]
        assert y_lo <= min(trained) and max(trained) <= y_hi and y_hi - y_lo < 0.5, (y_lo, y_hi, trained)
        names = [tr.name for tr in fig.data]
        infeasible = [tr for tr in fig.data if tr.name.startswith("infeasible")]
        # never-trained trials: a band under the trained accuracies, markers whole inside the plot
        span = y_hi - y_lo
        assert all(y_lo + 0.03 * span <= y < min(trained) for tr in infeasible for y in tr.y), (y_lo, infeasible)
        if cost == "weight_bytes":
            assert "over budget (infeasible)" in names and infeasible, names
            shade = next(tr for tr in fig.data if tr.name == "over budget (infeasible)")
            assert min(shade.x) == 40_000 and max(shade.x) >= max(xs) and shade.fill == "toself"
            assert min(shade.y) <= y_lo and max(shade.y) >= y_hi  # the whole height over budget
            budget = next(tr for tr in fig.data if tr.name.startswith("budget weight_bytes"))
            assert list(budget.x) == [40_000, 40_000] and lo < (math.log10(40_000) if log else 40_000) < hi
        # the Pareto front: straight segments between its points, spread over the plot's height
        front = next(tr for tr in fig.data if tr.name == "Pareto front")
        assert front.line.shape == "linear", front.line.shape
        if len(set(front.y)) > 1:
            assert (max(front.y) - min(front.y)) / span > 0.3, (list(front.y), y_lo, y_hi)
        assert fig.layout.xaxis.title.text.endswith(("B)", "per image)"))  # units on the cost axes
    layers = report.figures["layers"][1]
    axes = sorted((k for k in layers.layout if k.startswith("yaxis")), key=lambda k: int(k[5:] or 1))
    titles = [layers.layout[k].title.text for k in axes]
    assert titles[:4] == ["bits", "bytes", "MACs", "bytes"], titles
    # no device profile here: the latency section shows what is known (the finalists' latency
    # measured on this machine), with a one-line note saying how to get a profile
    assert "pareto-latency" not in report.figures
    title, fig, note = report.figures["latency-measured"]
    finals = {k: v for k, v in study.user_attrs.items() if k.startswith("final:")}
    assert fig is not None and "nas calibrate" in note and "\n" not in note, note
    assert sorted(fig.data[0].x) == sorted(v["latency_measured_ms"] for v in finals.values())
    assert "ms" in fig.layout.xaxis.title.text and "measured" in fig.layout.xaxis.title.text


def _trial(number: int, x: float, accuracy: float, feasible: bool):
    from optuna.trial import TrialState, create_trial
    t = create_trial(state=TrialState.COMPLETE, values=[accuracy if feasible else 0.0], user_attrs={
        "arch": f"arch{number}", "costs": {"weight_bytes": round(x), "macs": round(x)},
        "constraints": [-0.1 if feasible else 1.0], "feasible": feasible, "trained": feasible})
    t.number = number
    return t


# (cost low, high, budget): narrow and wide spans, linear and log axes
TICK_CASES = [(12, 95, 60), (1000, 25_000, 20_000), (900, 150_000, 100_000), (300, 700_000, 40_000),
              (10, 10_000_000, None)]

_OVERLAPS = """[...document.querySelectorAll('.plotly-graph-div')].map(div => {
  const labels = axis => [...div.querySelectorAll(`.${axis}tick text`)]
    .filter(t => !(t.getAttribute('transform') || '').includes('rotate') && t.textContent)
    .map(t => { const r = t.getBoundingClientRect(); return [t.textContent, r.left, r.right, r.top, r.bottom]; });
  const clash = (ls, a, b) => ls.slice().sort((p, q) => p[a] - q[a]).some((p, i, s) => i > 0 && s[i - 1][b] > p[a] + 0.5);
  const xs = labels('x'), ys = labels('y');
  return {id: div.id, x: xs.map(l => l[0]), y: ys.map(l => l[0]), clash: clash(xs, 1, 2) || clash(ys, 3, 4)};
})"""


@needs_chromium
def test_cost_axes_ticks_do_not_collide_in_chromium(tmp_path):
    """Accuracy-vs-cost figures over spans from 8x to 6 decades (log axes from 20x), 1100 to 450
    pixels wide, drawn by real plotly.js in Chromium: no two tick labels overlap, and every axis
    has at least 3."""
    from plotly.offline import get_plotlyjs

    from nas.report.page import pareto_figure
    from nas.search.records import TrialRecord

    divs = []
    for k, ((lo, hi, budget), width) in enumerate(itertools.product(TICK_CASES, (1100, 700, 450))):
        xs = [lo * (hi / lo) ** (i / 6) for i in range(7)]
        trials = [_trial(i, x, 0.5 + 0.05 * i, budget is None or x <= budget) for i, x in enumerate(xs)]
        fig, _ = pareto_figure(trials, trials[0], lambda t: TrialRecord.of(t).cost("weight_bytes"),
                               "weight_bytes (B)", budget, "budget")
        divs.append(f'<div style="width:{width}px">'
                    + fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"case{k}") + "</div>")
    page = tmp_path / "ticks.html"
    page.write_text(f"<html><head><script>{get_plotlyjs()}</script></head><body>{''.join(divs)}</body></html>")
    browser = DevTools(tmp_path / "chromium-profile", 1200, 2400)
    try:
        browser.open_page()
        events = _load(browser, page)
        _wait_for(browser, "document.querySelectorAll('.plotly-graph-div .xtick').length > 0", "the plots")
        ticks = browser.evaluate(_OVERLAPS)
    finally:
        browser.close()
    assert _problems(events) == []
    assert len(ticks) == 3 * len(TICK_CASES)
    for case in ticks:
        assert not case["clash"] and len(case["x"]) >= 3 and len(case["y"]) >= 3, case


def test_report_can_show_another_trial(study_dir, tmp_path, monkeypatch, capsys):
    study = _study(study_dir)
    # an infeasible trial if there is one: never trained, but its layers are still priced
    candidates = [t for t in study.trials if "arch" in t.user_attrs and t.number != _best(study)]
    other = min(candidates, key=lambda t: (t.user_attrs.get("trained", False), t.number))
    monkeypatch.chdir(study_dir)
    rc = main(["report", "--study", STUDY, "--trial", str(other.number), "-o", str(tmp_path / "r.html"), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["chosen_trial"] == other.number and summary["arch"] == other.user_attrs["arch"]


@pytest.mark.parametrize("args, expected", [
    (["--study", "nope"], "--study 'nope': no storage file"),
    (["--study", "nope", "--storage", "journal:{dir}/studies/rep.journal"], "--study 'nope': no such study"),
    (["--study", STUDY, "--trial", "9999"], "--trial 9999: no such trial"),
    (["--study", STUDY, "--storage", "not-a-url"], "not a storage URL"),
    (["--study", STUDY, "--storage", "sqlite:///{dir}/missing.db"], "no storage file"),
])
def test_report_usage_errors_are_one_line_exit_2(study_dir, tmp_path, monkeypatch, capsys, args, expected):
    monkeypatch.chdir(study_dir)
    args = [a.format(dir=study_dir) for a in args]
    assert main(["report", *args, "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r.html").exists()
    assert not (study_dir / "studies" / "nope.journal").exists()  # reading never creates a storage


def test_report_of_a_study_without_trained_trials_is_a_usage_error(tmp_path, capsys):
    from nas.search.storage import open_storage
    url = f"journal:{tmp_path / 'empty.journal'}"
    study = optuna.create_study(study_name="empty", storage=open_storage(url), directions=["maximize"])
    study.add_trial(optuna.trial.create_trial(value=0.0, user_attrs={
        "arch": "x", "costs": {"weight_bytes": 1}, "constraints": [1.0], "feasible": False, "trained": False}))
    assert main(["report", "--study", "empty", "--storage", url, "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "no trained trial yet (1 trials: 0 trained, 0 duplicate, 1 infeasible" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------ Chromium


class DevTools:
    """Headless Chromium over the DevTools protocol on a pipe (`--remote-debugging-pipe`: the
    browser reads NUL-terminated JSON commands on fd 3 and writes replies and events on fd 4)."""

    def __init__(self, user_data_dir: Path, width: int, height: int):
        import fcntl
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        # above 9, so that the child's dup2 onto 3 and 4 cannot clobber one another
        child_in, child_out = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_r, from_w))
        for fd in (to_r, from_w):
            os.close(fd)

        def wire():  # in the child, before exec; close_fds then keeps only 0-2 and pass_fds
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--hide-scrollbars", "--remote-debugging-pipe", f"--user-data-dir={user_data_dir}",
                 f"--window-size={width},{height}", "about:blank"]
        self.proc = subprocess.Popen([CHROMIUM, *flags], pass_fds=(3, 4), preexec_fn=wire,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(child_in)
        os.close(child_out)
        self._w, self._r = to_w, from_r
        self._id = 0
        self.events: queue.Queue = queue.Queue()
        self._replies: dict = {}
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.session = None

    def _read(self):
        buf = b""
        while chunk := os.read(self._r, 1 << 16):
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for raw in messages:
                msg = json.loads(raw)
                if "id" in msg:
                    with self._cond:
                        self._replies[msg["id"]] = msg
                        self._cond.notify_all()
                else:
                    self.events.put(msg)

    def send(self, method: str, timeout: float = 60, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        with self._cond:
            if not self._cond.wait_for(lambda: self._id in self._replies, timeout):
                raise TimeoutError(f"no reply to {method} in {timeout} s")
            reply = self._replies.pop(self._id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def open_page(self):
        page = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (a Promise is awaited)."""
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                         awaitPromise=True)["result"].get("value")

    def drain(self) -> list[dict]:
        out = []
        while not self.events.empty():
            out.append(self.events.get_nowait())
        return out

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except (OSError, TimeoutError, RuntimeError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)


def _problems(events: list[dict]) -> list[str]:
    """Uncaught exceptions, console errors, error log entries and requests that leave the file."""
    out = []
    for e in events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = p["exceptionDetails"]
            out.append(f"uncaught: {details.get('exception', {}).get('description') or details.get('text')}")
        elif method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            out.append(f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p['args']]}")
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            out.append(f"log: {p['entry']['text']} ({p['entry'].get('url', '')})")
        elif method == "Network.requestWillBeSent" and not p["request"]["url"].startswith(("file:", "data:", "blob:")):
            out.append(f"network request: {p['request']['url']}")
    return out


def _load(browser: DevTools, path: Path) -> list[dict]:
    """Navigate to `path` and return the events up to the load event (bounded: 60 s)."""
    browser.send("Emulation.setDeviceMetricsOverride", width=1200, height=2400, deviceScaleFactor=1, mobile=False)
    browser.send("Page.navigate", url=path.resolve().as_uri())
    deadline, events = time.time() + 60, []
    while time.time() < deadline:
        try:
            events.append(browser.events.get(timeout=1))
        except queue.Empty:
            continue
        if events[-1].get("method") == "Page.loadEventFired":
            return events
    raise AssertionError(f"{path} did not load in 60 s")


@needs_chromium
def test_devtools_check_catches_broken_pages(tmp_path):
    """The detector itself: a page with an exception, a console error and a network request."""
    page = tmp_path / "broken.html"
    page.write_text("<html><body><img src='http://127.0.0.1:9/x.png'>"
                    "<script>console.error('bad thing'); undefinedFunction();</script></body></html>")
    browser = DevTools(tmp_path / "chromium-profile", 1200, 2400)
    try:
        browser.open_page()
        events = _load(browser, page)
        time.sleep(0.5)
        problems = _problems(events + browser.drain())
    finally:
        browser.close()
    assert any("undefinedFunction" in p for p in problems), problems
    assert any("console.error" in p and "bad thing" in p for p in problems), problems
    assert any(p.startswith("network request: http://127.0.0.1:9/") for p in problems), problems


@needs_chromium
def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    _, _, path = report
    browser = DevTools(tmp_path / "chromium-profile", 1200, 2400)
    try:
        browser.open_page()
        events = _load(browser, path)
        drawn = "[...document.querySelectorAll('.plotly-graph-div')].map(d => !!d.querySelector('.main-svg .trace'))"
        for _ in range(100):  # plotly draws during load; give it a bounded moment more
            status = browser.evaluate(drawn)
            if status and all(status):
                break
            time.sleep(0.1)
        assert status and all(status), f"plots not drawn: {status}"
        ticks = browser.evaluate(_OVERLAPS)
        points = browser.evaluate("document.querySelectorAll('.plotly-graph-div .scatterlayer .point').length")
        bars = browser.evaluate("document.querySelectorAll('.plotly-graph-div .barlayer .point').length")
        png = base64.b64decode(browser.send("Page.captureScreenshot", format="png")["data"])
        time.sleep(0.2)
        events += browser.drain()
    finally:
        browser.close()
    (tmp_path / "report.png").write_bytes(png)
    assert _problems(events) == []
    assert [t for t in ticks if t["clash"]] == [], ticks  # no tick label overlaps another, on any plot
    # Pareto (weight_bytes), measured latency, macs, history, importances (3 trained trials), per layer
    assert len(status) >= 6, status
    assert points >= 8 and bars >= 10, (points, bars)
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert image.shape[:2] == (2400, 1200)
    ink = (image.min(axis=2) < 230).mean()  # plot areas, markers, text: not the white page
    colours = len(np.unique(image.reshape(-1, 3)[::7], axis=0))
    assert ink > 0.10 and colours > 50, (ink, colours)


# ------------------------------------------------------------------------------ dashboard


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_dashboard_defaults_to_loopback():
    args = build_parser("dashboard").parse_args(["dashboard", "--study", "s"])
    assert args.host == "127.0.0.1" and args.port == 8080


def _start_dashboard(study_dir):
    """`nas dashboard` on the fixture's study, as a user starts it: (process, port, /api/studies)."""
    port = _free_port()
    storage = f"journal:{study_dir / 'studies' / 'rep.journal'}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "nas.cli", "dashboard", "--study", STUDY, "--storage", storage,
                             "--port", str(port)], cwd=study_dir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    studies = None
    for _ in range(120):  # bounded: 60 s
        if proc.poll() is not None:
            break
        try:
            studies = _get_json(f"http://127.0.0.1:{port}/api/studies")
            break
        except OSError:
            time.sleep(0.5)
    if studies is None:
        _stop(proc)
        raise AssertionError(f"dashboard did not answer (rc {proc.poll()})")
    return proc, port, studies


def _stop(proc) -> str:
    """Stop a started dashboard; its stderr."""
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def test_dashboard_serves_the_study_on_loopback(study_dir):
    proc, port, studies = _start_dashboard(study_dir)
    try:
        listed = {s["study_name"]: s for s in studies["study_summaries"]}
        assert STUDY in listed
        assert any(a["key"] == "identity" for a in listed[STUDY]["user_attrs"])
        detail = _get_json(f"http://127.0.0.1:{port}/api/studies/{listed[STUDY]['study_id']}")
        trained = [t for t in _study(study_dir).trials if t.user_attrs.get("trained")]
        shown = {t["number"]: {a["key"]: a["value"] for a in t["user_attrs"]} for t in detail["trials"]}
        for t in trained:  # the arch string and costs are on every trial the dashboard shows
            assert shown[t.number]["arch"] == t.user_attrs["arch"]
            assert json.loads(shown[t.number]["costs"])["weight_bytes"] == t.user_attrs["costs"]["weight_bytes"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard", timeout=5) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
        # what the dashboard knows: constraints where Optuna's tools read them, costs as sortable
        # numbers, and the final model (not the best search score) named in the notes
        study = _study(study_dir)
        infeasible = [t.number for t in study.trials if t.user_attrs.get("feasible") is False]
        by_number = {t["number"]: t for t in detail["trials"]}
        for n in infeasible:
            assert by_number[n]["constraints"] and max(by_number[n]["constraints"]) > 0, by_number[n]
        sortable = {a["key"]: a["sortable"] for a in detail["union_user_attrs"]}
        assert sortable.get("cost.weight_bytes") is True, sortable
        final = _best(study)
        assert f"Final model: trial {final}" in detail["note"]["body"]
        assert "the final model" in by_number[final]["note"]["body"]
    finally:
        err = _stop(proc)
    assert f"http://127.0.0.1:{port}/dashboard/studies/" in err


def _wait_for(browser, expression: str, what: str, timeout: float = 30):
    """Poll a JavaScript expression until it gives a truthy value (the dashboard fetches, then renders)."""
    deadline = time.time() + timeout
    while True:
        value = browser.evaluate(expression)
        if value or time.time() > deadline:
            assert value, f"{what}: not rendered in {timeout} s"
            return value
        time.sleep(0.25)


# the plotly figures optuna-dashboard drew: [{name, x, y}] per graph
_DASHBOARD_TRACES = """(() => { const gs = [...document.querySelectorAll('.js-plotly-plot')].filter(g => (g.data || []).length);
  return gs.length >= 2 ? gs.map(g => g.data.map(d => ({name: d.name || '', x: [...(d.x || [])], y: [...(d.y || [])]})))
                        : null; })()"""

# the trials table (Smart Selection page): headers, whether each sorts, and a column read after clicks
_TABLE = """(async () => {
  const table = [...document.querySelectorAll('table')].find(t => t.innerText.includes('UserAttribute cost.weight_bytes'));
  if (!table) return null;
  const heads = [...table.querySelectorAll('thead th')];
  const name = th => th.innerText.replace(/sorted (ascending|descending)/, '').trim();
  const at = heads.findIndex(th => name(th) === 'UserAttribute cost.weight_bytes');
  const column = () => [...table.querySelectorAll('tbody tr')].map(tr => tr.querySelectorAll('td')[at].innerText.trim());
  const sorter = heads[at].querySelector('.MuiTableSortLabel-root');
  const pause = () => new Promise(r => setTimeout(r, 400));
  const clicks = [column()];
  for (let i = 0; i < 2 && sorter; i++) { sorter.click(); await pause(); clicks.push(column()); }
  return {heads: heads.map(th => [name(th), !!th.querySelector('.MuiTableSortLabel-root')]), clicks};
})()"""


@needs_chromium
def test_dashboard_in_chromium_shows_infeasible_trials_and_sorts_weight_bytes(study_dir):
    """optuna-dashboard as `nas dashboard` serves it, rendered by headless Chromium: the trials the
    search found over budget are drawn as infeasible (optimisation history, timeline), never as
    ordinary points; `cost.weight_bytes` is a sortable column of numbers in the trials table
    (ascending, then descending, on clicks), where the JSON `costs` column cannot be sorted; and
    the notes name the final model."""
    study = _study(study_dir)
    infeasible = sorted(t.number for t in study.trials if t.user_attrs.get("feasible") is False)
    feasible = sorted(t.number for t in study.trials if t.user_attrs.get("feasible") is True)
    assert infeasible and feasible  # the fixture's 40 KB budget rejects at least one sampled arch
    weights = {t.number: t.user_attrs["costs"]["weight_bytes"] for t in study.trials if "costs" in t.user_attrs}
    final = _best(study)
    proc, port, studies = _start_dashboard(study_dir)
    browser = DevTools(study_dir / "chromium-dashboard", 1400, 2000)
    try:
        study_id = next(s["study_id"] for s in studies["study_summaries"] if s["study_name"] == STUDY)
        base = f"http://127.0.0.1:{port}/dashboard/studies/{study_id}"
        browser.open_page()
        browser.send("Emulation.setDeviceMetricsOverride", width=1400, height=2000, deviceScaleFactor=1, mobile=False)

        # the study page: optuna-dashboard's own history and timeline plots
        browser.send("Page.navigate", url=base)
        graphs = _wait_for(browser, _DASHBOARD_TRACES, "the study page's plots")
        traces = [tr for g in graphs for tr in g]
        history = next((tr for tr in traces if tr["name"].startswith("Infeasible Trial")), None)
        assert history is not None, [tr["name"] for tr in traces]
        assert sorted(history["x"]) == infeasible, history  # x: trial numbers
        timeline = next((tr for tr in traces if tr["name"] == "Infeasible"), None)
        assert timeline is not None, [tr["name"] for tr in traces]
        assert sorted(timeline["y"]) == infeasible, timeline  # horizontal bars, one per trial
        complete = next(tr for tr in traces if tr["name"] == "Complete")
        assert not set(complete["y"]) & set(infeasible) and set(feasible) <= set(complete["y"])
        objective = next(tr for tr in traces if tr["name"].startswith("val accuracy of"))
        assert sorted(objective["x"]) == feasible  # infeasible trials are not plotted as ordinary points

        # the trials table: weight_bytes sorts as a number
        browser.send("Page.navigate", url=f"{base}/smartSelection")
        _wait_for(browser, "[...document.querySelectorAll('table')].some(t => t.innerText.includes("
                           "'UserAttribute cost.weight_bytes') && t.querySelectorAll('tbody tr').length > 1)",
                  "the trials table")
        table = browser.evaluate(_TABLE)
        sortable = dict(table["heads"])
        assert sortable["UserAttribute cost.weight_bytes"] is True, table["heads"]
        assert sortable["UserAttribute costs"] is False, table["heads"]  # the JSON string: not sortable
        shown, first, second = table["clicks"]
        assert sorted(map(int, shown)) == sorted(weights.values()), shown  # plain numbers, every trial
        numbers = sorted(weights.values())
        assert [int(v) for v in first] in (numbers, numbers[::-1]), first
        assert [int(v) for v in second] == [int(v) for v in first][::-1], (first, second)

        # the notes: the final model (what `nas export --best` ships), not the best search score
        for url, text in {f"{base}/note": f"Final model: trial {final}",
                          f"{base}/trials?numbers={final}": "the final model"}.items():
            browser.send("Page.navigate", url=url)
            _wait_for(browser, f"document.body && document.body.innerText.includes({json.dumps(text)})", url)
    finally:
        browser.close()
        _stop(proc)


def test_dashboard_busy_port_and_missing_study_are_usage_errors(study_dir, monkeypatch, capsys):
    monkeypatch.chdir(study_dir)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["dashboard", "--study", STUDY, "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--port {port}: cannot listen there" in err and len(err.splitlines()) == 1, err
    assert main(["dashboard", "--study", "nope", "--storage", f"journal:{study_dir / 'studies' / 'rep.journal'}"]) == 2
    assert "--study 'nope': no such study" in capsys.readouterr().err


def test_report_shows_predicted_latency_with_a_device_profile(study_dir, tmp_path, monkeypatch, capsys):
    """With a device profile (here a synthetic one: every coefficient 0.01 ms per feature unit), the
    latency Pareto plot and the per-layer latency appear; without one, a note says so."""
    latency = pytest.importorskip("nas.cost.latency")
    profile = latency.Profile(coefs={t: tuple(0.01 for _ in f) for t, f in latency.TERMS.items()},
                              machine={"threads": 1, "host": "test"})
    monkeypatch.setenv("NAS_PROFILE", str(latency.save_profile(profile, tmp_path / "profile.json")))
    monkeypatch.chdir(study_dir)
    assert main(["report", "--study", STUDY, "-o", str(tmp_path / "r.html"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "pareto-latency" in summary["figures"] and "latency-measured" not in summary["figures"]
    assert summary["notes"] == []
    chosen = _study(study_dir).trials[summary["chosen_trial"]]
    from nas.space import decode
    assert summary["latency_ms"] == pytest.approx(latency.predict(decode(chosen.user_attrs["arch"]), profile).total_ms)
    text = (tmp_path / "r.html").read_text()
    assert "latency ms (predicted)" in text and "no device profile" not in text

    monkeypatch.setenv("NAS_PROFILE", str(tmp_path / "absent.json"))
    assert main(["report", "--study", STUDY, "-o", str(tmp_path / "r.html"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "pareto-latency" not in summary["figures"] and "latency-measured" in summary["figures"]
    assert any(n.startswith("no device profile") and "nas calibrate" in n for n in summary["notes"]), summary["notes"]
