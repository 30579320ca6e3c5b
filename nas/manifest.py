"""A bundle's manifest.json: the digest that seals it and the checks that read it back.

Shared by the two bundle kinds, `nas export`'s (`nas.export.bundle`, format `nas-bundle/1`)
and `nas compress`'s (`nas.compress.bundle`, `nas-compressed/1`). The digest is an unkeyed
checksum: it catches a damaged or hand-edited manifest, not a forger, so every field is
still checked where it is used.
"""

import hashlib
import json
from pathlib import Path

from nas import limits
from nas.errors import UsageError

MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def digest(manifest: dict) -> str:
    """sha256 of the manifest without its own `manifest_sha256` field (keys sorted)."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def file_entries(folder: Path, names) -> dict:
    """{name: {bytes, sha256}} of the files `names` in `folder`, as a manifest lists them."""
    return {n: {"bytes": (folder / n).stat().st_size, "sha256": sha256(folder / n)} for n in names}


def read_verified(bundle_dir, fmt: str, files: tuple, optional: tuple = (), writer: str = "nas export",
                  redo: str = "re-export the bundle") -> dict:
    """The manifest of `bundle_dir`, after checking its format, its digest and every file it must
    list (`files`, and those of `optional` it does list): size and sha256. Any problem: a one-line
    UsageError naming the file, `writer` (the command that writes such bundles) and `redo`."""
    d = Path(bundle_dir)
    if not d.is_dir():
        raise UsageError(f"--bundle {bundle_dir}: no such directory; expected a bundle written by `{writer}`")
    path = d / MANIFEST
    if not path.is_file():
        raise UsageError(f"bundle {d}: {MANIFEST} is missing; expected a bundle written by `{writer}`")
    try:
        manifest = limits.load_json(path, "bundle manifest")  # size, depth, integer digits
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"bundle {d}: {MANIFEST} is not valid JSON ({str(e).splitlines()[0]}); "
                         f"the file is corrupt, {redo}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != fmt:
        raise UsageError(f"bundle {d}: {MANIFEST} is not a {fmt} manifest; expected a bundle written by `{writer}`")
    if manifest.get("manifest_sha256") != digest(manifest):
        raise UsageError(f"bundle {d}: {MANIFEST} was modified after `{writer}` wrote it (its content does not "
                         f"match its manifest_sha256); {redo}")
    _check_fields(d, manifest, redo)
    listed = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    for name in tuple(files) + tuple(n for n in optional if n in listed):
        entry, p = listed.get(name), d / name
        if not (isinstance(entry, dict) and isinstance(entry.get("bytes"), int) and isinstance(entry.get("sha256"), str)):
            raise UsageError(f"bundle {d}: {MANIFEST} lists no {name} with bytes and sha256; "
                             f"expected every file of {list(files)}")
        if not p.is_file():
            raise UsageError(f"bundle {d}: {name} is missing (listed in {MANIFEST}); {redo}")
        size = p.stat().st_size
        if size != entry["bytes"] or sha256(p) != entry["sha256"]:
            raise UsageError(f"bundle {d}: {name} does not match {MANIFEST} ({size} bytes, sha256 differs; "
                             f"expected {entry['bytes']} bytes, sha256 {entry['sha256'][:12]}...); "
                             f"the file was modified or corrupted, {redo}")
    return manifest


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _check_fields(d: Path, manifest: dict, redo: str) -> None:
    """The fields a reader uses, by type and range. The digest is an unkeyed checksum anyone can
    recompute (issue 18), so a forged manifest must still fail here in one line, not deep inside
    torch: `input` {in_chs, resolution, mean, std}, `num_classes`, `arch`, `dataset` and the
    numbers `nas infer` reports."""
    def bad(field, value, expected):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return UsageError(f"bundle {d}: {MANIFEST} field {field} is {shown}; expected {expected}; {redo}")

    inp = manifest.get("input")
    if "input" in manifest:
        if not isinstance(inp, dict):
            raise bad("input", inp, "an object with in_chs, resolution, mean and std")
        for key in ("in_chs", "resolution"):
            v, limit = inp.get(key), limits.MAGNITUDES[key]
            if not (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= limit):
                raise bad(f"input.{key}", v, f"a whole number from 1 to {limit}")
        for key in ("mean", "std"):
            v = inp.get(key)
            if not (isinstance(v, list) and len(v) == inp["in_chs"] and all(_is_number(x) for x in v)
                    and (key == "mean" or all(x > 0 for x in v))):
                raise bad(f"input.{key}", v, f"a list of {inp['in_chs']} {'positive ' if key == 'std' else ''}numbers "
                                             f"(one per input channel)")
    if "num_classes" in manifest:
        v, limit = manifest["num_classes"], limits.MAGNITUDES["num_classes"]
        if not (isinstance(v, int) and not isinstance(v, bool) and 2 <= v <= limit):
            raise bad("num_classes", v, f"a whole number from 2 to {limit}")
    for key in ("arch", "dataset", "model"):
        if manifest.get(key) is not None and not isinstance(manifest[key], str):
            raise bad(key, manifest[key], "a string")
    for key in ("accuracy", "test_images", "payload_bytes", "weight_bytes", "latency_ms"):
        if manifest.get(key) is not None and not _is_number(manifest[key]):
            raise bad(key, manifest[key], "a number")
