"""Reading a safetensors weights file (a trial's final weights, `--weights`): a missing,
truncated or foreign file is one line naming it (a `UsageError`), never safetensors' own
exception. A leaf module: it imports nothing from nas but nas.errors."""

from pathlib import Path

from nas.errors import UsageError


def read_weights(path, what: str = "weights file") -> tuple[dict, dict]:
    """(state dict of tensors, metadata) of the safetensors file at `path`."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{what} {str(path)!r}: no such file; expected a safetensors file")
    try:
        with safe_open(str(p), "pt") as f:
            # safe_open checks the header against the file size, so a cut file fails here
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UsageError(f"{what} {str(path)!r}: not a complete safetensors file ({first}); "
                         f"expected the file as it was written (truncated or damaged?)") from None
