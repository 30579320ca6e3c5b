"""Extra export targets: `nas export --format c,tflite`.

Every bundle holds payload.bin, model.onnx, model.ts and (when every layer is <= 8 bits)
model.int8.onnx. A format listed here is written on request, into the bundle's temporary
directory before it is moved into place (so a failing format leaves no bundle).

A format is a module with one function::

    write(tmp: Path, arch, payload: bytes, manifest: dict, test, predictions, calibration) -> dict

tmp: the bundle directory being written; arch: the `ArchSpec`; payload: payload.bin's bytes;
manifest: the manifest so far; test: the normalised test split (`ImageDataset`);
predictions: `nas infer`'s (the packed model's) predicted labels on `test`; calibration:
normalised training images (`ImageDataset`) for a format that must range tensors the model
leaves unquantized, or None when the caller has none (the format then says which split it
used: never silently the test split it is scored on). It writes its
files under tmp and returns what goes into ``manifest[name]`` (sizes, agreement with
`nas infer`, measured figures). A model it cannot express is a `UsageError` naming the
layer and why (exit 2). A format that needs optional packages also has
``require_extra()``, which `parse_formats` calls: a missing package is one line (exit 2)
before any work.
"""

import importlib

from nas.errors import UsageError

FORMATS = {
    "c": "nas.export.c",            # C99 sources + Makefile (host gcc, Cortex-M4 under QEMU)
    "tflite": "nas.export.tflite",  # full-integer model.tflite via litert-torch (pip install nas[tflite])
}


def parse_formats(text: str | None) -> tuple[str, ...]:
    """'c,tflite' -> ('c', 'tflite'); '' / None -> (). Unknown names are a UsageError."""
    if not text:
        return ()
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",")))
    for n in names:
        if n not in FORMATS:
            raise UsageError(f"--format {text!r}: unknown format {n!r}; expected a comma-separated list of "
                             f"{', '.join(FORMATS)}")
    for n in names:  # a format whose packages are missing says so before any work
        require = getattr(importlib.import_module(FORMATS[n]), "require_extra", None)
        if require is not None:
            require()
    return names


def write_formats(formats, tmp, arch, payload: bytes, manifest: dict, test, predictions,
                  calibration=None) -> None:
    """Write each requested format into `tmp` and record its figures in `manifest`."""
    for name in formats:
        module = importlib.import_module(FORMATS[name])
        manifest[name] = module.write(tmp, arch, payload, manifest, test, predictions, calibration)
