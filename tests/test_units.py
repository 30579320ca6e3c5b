"""Units are parsed once: 5MB = 5*10^6 bytes, 5MiB = 5*2^20; bad values name themselves."""

import pytest

from nas.errors import UsageError
from nas.units import format_bytes, format_count, parse_bytes, parse_count, parse_seconds


@pytest.mark.parametrize("text, expected", [
    ("5MB", 5_000_000), ("5MiB", 5 * 2**20), ("100KB", 100_000), ("100kib", 102_400), ("512", 512),
    ("1.5GB", 1_500_000_000), ("0.5KB", 500), ("7b", 7),
])
def test_sizes(text, expected):
    assert parse_bytes(text) == expected


def test_counts_and_times():
    assert parse_count("300M") == 300_000_000 and parse_count("1.5G") == 1_500_000_000
    assert parse_seconds("2ms") == pytest.approx(0.002) and parse_seconds("30m") == 1800.0
    assert parse_seconds("1h") == 3600.0 and parse_seconds("45") == 45.0


@pytest.mark.parametrize("text", ["5 M", "", "MB", "-5MB", "5XB", "0", "1e5KB", "five"])
def test_bad_sizes_are_one_line_usage_errors(text):
    with pytest.raises(UsageError) as e:
        parse_bytes(text, "--target-mem")
    assert str(e.value).startswith("--target-mem: ") and repr(text) in str(e.value) and "\n" not in str(e.value)


def test_printing():
    assert format_bytes(266_404) == "266 KB" and format_bytes(5_000_000) == "5 MB" and format_bytes(12) == "12 B"
    assert format_count(14_100_000) == "14.1M"
