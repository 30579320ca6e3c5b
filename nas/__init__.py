"""nas: hardware-aware neural-architecture search and scaling for compact CNNs.

The Python API, for notebooks (each loads only what it needs; `import nas` stays light):

    import nas
    nas.cost("in_r28_c1-stem_c16_k3_s1_w8_a8-ir_r1_k3_s2_e4_c24_w4_a4-head_c64_w8_a8-fc_n10_w8_a8")["weight_bytes"]
    model = nas.build(arch_string)         # the fake-quant torch module
    arch = nas.sample("search_spaces/mcu.yaml", seed=0)   # an arch string from a space
    summary = nas.search(target_mem="100KB", space="search_spaces/mcu.yaml", study="s1", budget="5m")
    manifest = nas.export("s1", "out/")    # the search result's bundle, as `nas export --best`

`nas.cost`, `nas.search` and `nas.export` are also packages (`nas.cost.arch_cost`,
`nas.search.runner`, `nas.export.export_trial`, ...): each package is callable.

Importing nas defaults OMP_WAIT_POLICY to PASSIVE (unless set): OpenMP threads then sleep
instead of spinning while they wait, which on a shared machine is the difference between a
right latency figure and one 10-100x off (`nas.measure.load`). It only takes effect if torch
was not imported first.
"""

import os
from importlib.metadata import PackageNotFoundError, version as _version

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    __version__ = _version("nas")  # one home: the [project] version in pyproject.toml
except PackageNotFoundError:  # a source tree that was never installed (`pip install -e .`)
    __version__ = "0+unknown"


def build(arch):
    """The fake-quant network (torch.nn.Module) of an arch string or `ArchSpec`."""
    from nas.blocks.model import build_model
    from nas.space import ArchSpec, decode

    return build_model(arch if isinstance(arch, ArchSpec) else decode(arch))


def sample(space, seed: int = 0, n: int | None = None):
    """One arch string sampled from a space (a YAML path or a loaded `Space`), or a list of
    `n`; the same seed gives the same strings (as `nas space sample`)."""
    import optuna

    from nas.space import encode, load_space
    from nas.space.sample import iter_random_archs

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one in-memory study per chunk: no log lines
    space = load_space(space) if isinstance(space, (str, os.PathLike)) else space
    archs = [encode(a) for a in iter_random_archs(space, 1 if n is None else n, seed)]
    return archs[0] if n is None else archs


def __getattr__(name):  # PEP 562: `nas.cost`, `nas.search`, `nas.export` load their package on first use
    if name in ("cost", "search", "export"):
        import importlib

        return importlib.import_module(f"nas.{name}")
    raise AttributeError(f"module 'nas' has no attribute {name!r}")
