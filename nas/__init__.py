"""nas: hardware-aware neural-architecture search and scaling for compact CNNs."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("nas")  # one home: the [project] version in pyproject.toml
except PackageNotFoundError:  # a source tree that was never installed (`pip install -e .`)
    __version__ = "0+unknown"
