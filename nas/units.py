"""Parse and print sizes, counts and times. Leaf module: imports nothing from `nas`.

Sizes use SI for `KB/MB/GB` (5MB = 5·10^6 bytes) and IEC for `KiB/MiB/GiB`
(5MiB = 5·2^20). A bare number is bytes. Times accept `ms`, `s`, `m`, `h`.
"""

import re

from nas.errors import UsageError, shown

_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9,
    "kib": 2**10, "mib": 2**20, "gib": 2**30,
}
_COUNT_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_TIME_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"


def _split(text: str, what: str, where: str, allowed: dict) -> tuple[float, str]:
    # re.ASCII: Unicode digits ('５MB') are refused; 30 digits at most, so a number never parses to inf
    m = re.fullmatch(_NUMBER + r"([A-Za-z]*)", text.strip(), re.ASCII) if isinstance(text, str) else None
    if m is None or m.group(2).lower() not in allowed or len(m.group(1)) > 30:
        units = ", ".join(u for u in allowed if u) or "none"
        raise UsageError(
            f"{where}: {shown(text)} is not a {what}; expected a number with an optional unit "
            f"({units}), no spaces, e.g. {_EXAMPLE[what]}"
        )
    return float(m.group(1)), m.group(2).lower()


_EXAMPLE = {"size": "'5MB' or '100KiB'", "count": "'300M' or '1.5G'", "time": "'2ms' or '30m'"}


def _positive(text: str, what: str, where: str, units: dict) -> float:
    """The value of `text` in base units (bytes, count, seconds); must be > 0."""
    value, unit = _split(text, what, where, units)
    n = value * units[unit]
    if n <= 0:
        raise UsageError(f"{where}: {shown(text)} must be a positive {what}")
    return n


def parse_bytes(text: str, where: str = "size") -> int:
    """'5MB' -> 5_000_000; '5MiB' -> 5_242_880; '512' -> 512."""
    return int(round(_positive(text, "size", where, _SIZE_UNITS)))


def parse_count(text: str, where: str = "count") -> int:
    """'300M' -> 300_000_000 (for MACs budgets)."""
    return int(round(_positive(text, "count", where, _COUNT_UNITS)))


def parse_seconds(text: str, where: str = "time") -> float:
    """'2ms' -> 0.002; '30m' -> 1800.0; a bare number is seconds."""
    return _positive(text, "time", where, {"": 1.0, **_TIME_UNITS_S})


def format_bytes(n: float) -> str:
    """SI, three significant figures: 4_980_736 -> '4.98 MB'."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def format_count(n: float) -> str:
    """385_000_000 -> '385M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def format_seconds(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.3g} us"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    if s < 120:
        return f"{s:.3g} s"
    if s < 7200:
        return f"{s / 60:.3g} min"
    return f"{s / 3600:.3g} h"
