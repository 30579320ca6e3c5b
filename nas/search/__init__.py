"""Search: objective, constraints, typed study records, storage, the runner.

`nas.search` is also callable: ``nas.search(target_mem="100KB", dataset="digits", ...)`` runs
the whole `nas search` (see `search` below) from Python, a notebook included.
"""

import sys
import types


def search(*, profile: str | None = None, progress: bool = False, **options) -> dict:
    """Run `nas search` from Python and return its --json summary (a dict: trained, infeasible,
    final[...] with each finalist's arch and accuracies, ...).

    options: the command's long options with underscores, e.g. ``target_mem="100KB",
    space="search_spaces/mcu.yaml", dataset="digits", study="s1", trials=3, budget="30s",
    subset=64``; values as on the command line (sizes as strings or bytes). Bad values raise
    `nas.errors.UsageError` with the command's one-line message.
    profile: the device profile file that prices latency_ms (None: `$NAS_PROFILE`, else this
    host's from `nas calibrate`; "none": price no latency). progress: show progress on stderr.
    A study resumes when called again with the same study name, as the command does."""
    from nas.cost.latency import profile_option
    from nas.errors import UsageError
    from nas.search.config import OPTION_NAMES, build_config
    from nas.search.runner import run_search

    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise UsageError(f"nas.search: unknown option(s) {unknown}; expected some of {sorted(OPTION_NAMES)}")
    config = build_config({name: options.get(name) for name in OPTION_NAMES})
    required = "this search prices latency (target_latency or a latency objective)" if config.needs_latency else None
    return run_search(config, profile_option(profile, required, "profile="), show_progress=progress)


class _CallableModule(types.ModuleType):
    """`nas.search` is this package AND the function `search` above (as `nas.cost` is)."""

    def __call__(self, **options) -> dict:
        return search(**options)


sys.modules[__name__].__class__ = _CallableModule
