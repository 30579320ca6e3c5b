"""Analytic costs over specs (never over modules): params, macs, weight_bytes,
peak_act_bytes, mem_access, mem_access_bytes, bops, and the seed's efficiency metrics.

`graph` expands a spec into ops (the one place that knows the structure for costing),
`layout` defines the deployable weight payload (shared with `nas export`), `model` prices
the ops. No torch here: `nas.count` is the module-side cross-check.
"""

import sys
import types

from nas.cost.graph import PROJECT, Conventions, Graph, GraphBuilder, Op, expand
from nas.cost.metrics import information_density, netscore
from nas.cost.model import TOTALS, Cost, LayerCost, arch_cost, graph_cost

__all__ = [
    "Conventions", "Cost", "Graph", "GraphBuilder", "LayerCost", "Op", "PROJECT", "TOTALS", "arch_cost", "expand",
    "cost", "graph_cost", "information_density", "netscore",
]


def cost(arch, *, layers: bool = False) -> dict:
    """Analytic costs of an arch string (or `ArchSpec`) as a dict of the vocabulary's names:
    params, macs, weight_bytes, peak_act_bytes, mem_access, mem_access_bytes, bops,
    peak_act_at, receptive_field (and the per-op `layers` when asked).

        >>> import nas
        >>> nas.cost("in_r28_c1-stem_c16_k3_s1_w8_a8-ir_r1_k3_s2_e4_c24_w4_a4-head_c64_w8_a8-fc_n10_w8_a8")["weight_bytes"]
    """
    from nas.space import ArchSpec, decode

    spec = arch if isinstance(arch, ArchSpec) else decode(arch)
    d = arch_cost(spec).to_dict()
    if not layers:
        del d["layers"]
    return d


class _CallableModule(types.ModuleType):
    """`nas.cost` is this package AND the function `cost` above: ``nas.cost("arch")``.
    A function named `cost` in `nas/__init__.py` would be replaced by this package as soon
    as anything imports `nas.cost`, so the package itself answers the call."""

    def __call__(self, arch, *, layers: bool = False) -> dict:
        return cost(arch, layers=layers)


sys.modules[__name__].__class__ = _CallableModule
