"""Every size limit on user input, in one place, checked before anything is allocated.

A small hostile input must be refused within a second in one line, not expand into gigabytes:
a YAML alias bomb, YAML nested thousands of levels deep, `ir_r999999999` in an arch string,
`repeats: [100000]` in a space. The values are listed in docs/limits.md.

A leaf module: it imports nothing from nas but nas.errors.
"""

import os
import re
import stat
from pathlib import Path

import yaml

from nas.errors import UsageError

MAX_YAML_BYTES = 1 << 20        # a space file or a study config
MAX_YAML_ALIASES = 100          # `*name` references in one YAML document
MAX_YAML_DEPTH = 32             # nested mappings / lists
MAX_JSON_BYTES = 16 << 20       # a bundle manifest, a --curves file
# --seed: numpy and optuna take seeds below 2**32; a search adds 1000 per worker and the trial
# number to it, so the seed itself stays below 2**31 to leave that room
MAX_SEED = 2**31 - 1
MAX_STUDY_NAME = 100             # a study name is also a file name (studies/<name>.journal)
STUDY_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,%d}" % (MAX_STUDY_NAME - 1), re.ASCII)

# magnitudes of architectures (arch strings, space files, their scaled members): name -> max
MAGNITUDES = {
    "repeats": 64,
    "channels": 8192, "out_chs": 8192, "in_chs": 64,
    "kernel": 15,
    "resolution": 2048,
    "num_classes": 100_000,
    "groups": 1024, "growth": 1024,
    "expand": 16.0,
    "phi": 8.0,
    "alpha": 4.0, "beta": 4.0, "gamma": 4.0,
}


class LimitExceeded(UsageError):
    """An input over one of the limits above."""


def check_magnitude(where: str, name: str, value) -> None:
    """Refuse `value` for field `name` above its limit (fields without a limit pass)."""
    limit = MAGNITUDES.get(name)
    shown = repr(value)[:40]  # not ':g', which shows 16.0000001 as 16 and 999999999 as 1e+09
    if limit is not None and isinstance(value, (int, float)) and value > limit:
        raise LimitExceeded(f"{where}: {name}={shown} is over the limit {limit:g} (docs/limits.md)")
    if name == "phi" and isinstance(value, (int, float)) and value < -limit:
        raise LimitExceeded(f"{where}: {name}={shown} is under the limit {-limit:g} (docs/limits.md)")


def check_class_count(num_classes: int, where: str) -> None:
    """Labels 0..num_classes-1 must ask for a head the arch strings accept: 2 .. the fc_n limit."""
    limit = MAGNITUDES["num_classes"]
    if num_classes < 2:
        raise LimitExceeded(f"{where}: labels give {num_classes} class; expected at least 2 classes")
    if num_classes > limit:
        raise LimitExceeded(f"{where}: labels up to {num_classes - 1} give {num_classes} classes, over the "
                            f"limit of {limit} (docs/limits.md)")


def read_text(path, max_bytes: int, what: str) -> str:
    """The text of a regular file no larger than `max_bytes` (checked before reading)."""
    p = Path(path)
    try:
        st = os.stat(p)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{what} {str(path)!r}: not a regular file (a FIFO, device or directory); "
                             f"expected a file")
        if st.st_size > max_bytes:
            raise LimitExceeded(f"{what} {str(path)!r}: {st.st_size} bytes, over the limit of {max_bytes} "
                                f"(docs/limits.md)")
        with open(p, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise UsageError(f"{what} {str(path)!r}: cannot read ({e.strerror})") from None
    if len(data) > max_bytes:
        raise LimitExceeded(f"{what} {str(path)!r}: over the limit of {max_bytes} bytes (docs/limits.md)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{what} {str(path)!r}: not UTF-8 text (byte {e.start})") from None


class YAMLLimitError(yaml.YAMLError):
    """Raised while composing a YAML document that is over an alias or depth limit."""


class LimitedSafeLoader(yaml.SafeLoader):
    """SafeLoader that counts aliases and nesting while composing, so an alias bomb or a deeply
    nested document is refused before it is expanded (and never appears in a message)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                mark = self.peek_event().start_mark
                raise YAMLLimitError(f"line {mark.line + 1}: more than {MAX_YAML_ALIASES} aliases "
                                     f"(docs/limits.md)")
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise YAMLLimitError(f"line {mark.line + 1}: nested deeper than {MAX_YAML_DEPTH} levels "
                                     f"(docs/limits.md)")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        """Duplicate keys are refused (PyYAML keeps the last one silently)."""
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    key = key_node.value.replace("-", "_") if key_node.tag.endswith(":str") else key_node.value
                    if key in seen:
                        raise YAMLLimitError(f"line {key_node.start_mark.line + 1}: duplicate key "
                                             f"{key_node.value[:60]!r}")
                    seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path, what: str):
    """A YAML file through the size, alias, depth and duplicate-key limits."""
    return yaml.load(read_text(path, MAX_YAML_BYTES, what), Loader=LimitedSafeLoader)  # noqa: S506 (safe subclass)


MAX_DATASET_BYTES = 4 << 30      # one dataset array (decompressed): 4 GiB
MAX_IMAGE_PIXELS = 4096 * 4096   # one image (an ImageFolder PNG, an IDX/npz image)


def check_dataset_bytes(path, nbytes: int, what: str = "holds") -> None:
    """Refuse a dataset array larger than MAX_DATASET_BYTES (`nbytes` in Python ints: no overflow)."""
    if nbytes > MAX_DATASET_BYTES:
        raise LimitExceeded(f"dataset file {path}: {what} {nbytes} bytes, over the limit of "
                            f"{MAX_DATASET_BYTES} (docs/limits.md)")


def gunzip_head(data: bytes, n: int) -> bytes:
    """The first `n` decompressed bytes of gzip `data` (at most n are produced: a header is read
    before the size it declares is trusted)."""
    import zlib

    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, n)


def gunzip_limited(path, data: bytes, max_bytes: int | None = None,
                   limit: str = "the limit (docs/limits.md)") -> bytes:
    """gzip-decompress `data`, refusing (before allocating more) output over `max_bytes`: a
    6 MB gzip bomb would otherwise expand into gigabytes."""
    import zlib

    max_bytes = MAX_DATASET_BYTES if max_bytes is None else max_bytes
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = d.decompress(data, max_bytes + 1)
    if len(out) > max_bytes or d.unconsumed_tail:
        raise LimitExceeded(f"dataset file {path}: decompresses to over {max_bytes} bytes, {limit}")
    out += d.flush()
    if not d.eof:  # what gzip.decompress says of a truncated file
        raise EOFError("Compressed file ended before the end-of-stream marker was reached")
    return out


def check_npz_members(path) -> None:
    """Each array of an .npz (a zip) is checked by its declared uncompressed size before numpy
    reads it: a small zip bomb cannot expand."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                check_dataset_bytes(path, info.file_size, f"array {info.filename[:60]!r} holds")
    except zipfile.BadZipFile:
        return  # numpy gives its own one-line error


MAX_JSON_DEPTH = 32
MAX_JSON_INT_DIGITS = 30


def _bounded_int(text: str) -> int:
    if len(text) > MAX_JSON_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits, over the limit of {MAX_JSON_INT_DIGITS}")
    return int(text)


def _depth(value) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, level = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, level)
            if level <= MAX_JSON_DEPTH:
                stack.extend((c, level + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def load_json(path, what: str):
    """A JSON file within MAX_JSON_BYTES, MAX_JSON_DEPTH and MAX_JSON_INT_DIGITS; a ValueError
    (json.JSONDecodeError included) with a one-line reason otherwise."""
    text = read_text(path, MAX_JSON_BYTES, what)
    import json

    try:
        value = json.loads(text, parse_int=_bounded_int)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return value
