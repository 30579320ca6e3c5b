"""Module-side counts (params, macs) of a built `nn.Module`: the cross-check of `nas.cost`."""

from nas.count.counter import CountResult, ModuleCount, count_modules, format_counts, handler_for

__all__ = ["CountResult", "ModuleCount", "count_modules", "format_counts", "handler_for"]
