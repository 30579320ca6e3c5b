"""Analytic costs over specs (never over modules): params, macs, weight_bytes,
peak_act_bytes, mem_access, mem_access_bytes, bops, and the seed's efficiency metrics.

`graph` expands a spec into ops (the one place that knows the structure for costing),
`layout` defines the deployable weight payload (shared with `nas export`), `model` prices
the ops. No torch here: `nas.count` is the module-side cross-check.
"""

from nas.cost.graph import PROJECT, Conventions, Graph, GraphBuilder, Op, expand
from nas.cost.metrics import information_density, netscore
from nas.cost.model import TOTALS, Cost, LayerCost, arch_cost, graph_cost

__all__ = [
    "Conventions", "Cost", "Graph", "GraphBuilder", "LayerCost", "Op", "PROJECT", "TOTALS", "arch_cost", "expand",
    "graph_cost", "information_density", "netscore",
]
