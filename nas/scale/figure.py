"""The scaling figure: test accuracy against weight_bytes for the compound family and the
width-, depth- and resolution-only families of the same base at the same budgets (the
comparison of the EfficientNet paper's Figure 3). One self-contained HTML file (plotly.js
embedded, opens offline), written atomically."""

import html

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from nas import fsio
from nas.scale.family import Member

STYLE = {"compound": ("#d62728", "circle"), "width": ("#1f77b4", "square"), "depth": ("#2ca02c", "diamond"),
         "resolution": ("#9467bd", "triangle-up")}


def figure(families: dict[str, list[Member]], base_accuracy: float | None, base_weight_bytes: int) -> go.Figure:
    fig = go.Figure()
    for name, members in families.items():
        color, symbol = STYLE[name]
        points = [m for m in members if m.extra.get("test_accuracy") is not None]
        fig.add_trace(go.Scatter(
            x=[base_weight_bytes] + [m.costs["weight_bytes"] for m in points],
            y=[base_accuracy] + [m.extra["test_accuracy"] for m in points],
            mode="lines+markers", name=f"{name} scaling", line={"color": color},
            marker={"symbol": symbol, "size": 9},
            text=["B0 (base)"] + [f"target {m.target:g} {m.by}, phi={m.scaling.phi:.3f}"
                                  f"{' (capped)' if m.capped else ''}<br>{html.escape(m.to_dict()['arch'])}"
                                  for m in points],
            hoverinfo="x+y+text"))
    fig.update_layout(title="Test accuracy vs weight_bytes: compound vs single-dimension scaling",
                      xaxis={"title": "weight_bytes", "type": "log"}, yaxis={"title": "test accuracy"},
                      template="plotly_white")
    return fig


def write_html(path, fig: go.Figure, caption: str) -> None:
    body = fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True})
    text = (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>nas scale</title>'
            f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
            f'{body}<p>{html.escape(caption)}</p></body></html>')
    fsio.write_text(path, text)
