"""nas: hardware-aware neural-architecture search and scaling for compact CNNs."""

__version__ = "0.1.0"
