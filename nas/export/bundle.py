"""The export bundle: write it (`export_model`), check it (`verify_bundle`), load it (`load_bundle`).

A bundle is a directory::

    arch.yaml            arch string (the only input needed to rebuild the network), space, scaling
    weights.safetensors  trained float / fake-quant state dict (metadata: arch)
    model.onnx           the fake-quant model, batch dimension dynamic (opset of the exporter)
    model.ts             the same, TorchScript (torch.jit.trace)
    model.int8.onnx      QDQ int8 for onnxruntime, when every layer is <= 8 bits (`nas.export.onnx_int8`)
    payload.bin          the packed deployable weights (`nas.cost.layout`); its size is
                         `weight_bytes` of the cost model, to the byte
    manifest.json        figures, the payload index, versions, and sha256 of every other file

`export_model` writes into a temporary sibling directory and renames it into place, so an
interrupted or refused export leaves nothing half-written. `verify_bundle` checks every
hash before anything is loaded; `load_bundle` rebuilds the packed model from arch.yaml and
payload.bin alone (`nas.export.deploy`).
"""

import contextlib
import importlib.metadata
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

import nas
from nas import fsio
from nas.cost import arch_cost
from nas.errors import UsageError
from nas.export.deploy import packed_model
from nas.export.fold import model_records
from nas.export.formats import write_formats
from nas.export.payload import encode_payload
from nas.manifest import MANIFEST, file_entries, read_verified, sha256
from nas.manifest import digest as _manifest_digest
from nas.quant import BinaryConv2d, packed_kernels
from nas.space import decode, encode
from nas.units import format_bytes

FORMAT = "nas-bundle/1"
FILES = ("arch.yaml", "weights.safetensors", "payload.bin", "model.onnx", "model.ts")
OPTIONAL_FILES = ("model.int8.onnx", "model.tflite")  # written when the model has one / --format asks; verified when listed
LATENCY_REPEATS = 30
THROUGHPUT_BATCH = 256
EVAL_BATCH = 512


# ---- figures ---------------------------------------------------------------------------------

def predictions(model: torch.nn.Module, dataset, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """argmax of `model` over `dataset` in order, (N,) int64; eval mode, no autograd."""
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for start in range(0, len(dataset), batch_size):
                x, _ = dataset.batch(torch.arange(start, min(start + batch_size, len(dataset))))
                out.append(model(x).argmax(dim=1))
    finally:
        model.train(was_training)
    return torch.cat(out)


def timings(model: torch.nn.Module, dataset) -> dict:
    """Measured latency (batch 1, median ms per image) and throughput (images/s at batch 256)."""
    from nas.measure.timing import measure_inference_ms

    x, _ = dataset.batch(torch.arange(min(THROUGHPUT_BATCH, len(dataset))))
    many = measure_inference_ms(model, x, repeats=5, warmup=1)
    return {"latency_measured_ms": latency_of(model, dataset), "throughput_ips": round(1000.0 / many, 1),
            "threads": torch.get_num_threads(), "kernels": _kernel_isa(),
            "integer_kernels": _integer_isa()}


def latency_of(model: torch.nn.Module, dataset) -> float:
    """Median ms per image at batch 1 on the dataset's first image."""
    from nas.measure.timing import measure_inference_ms

    x, _ = dataset.batch(torch.arange(1))
    return round(measure_inference_ms(model, x, repeats=LATENCY_REPEATS), 4)


def set_threads(threads: int | None) -> None:
    """--threads: torch's intra-op threads (the kernels follow torch.get_num_threads())."""
    if threads is None:
        return
    if threads < 1:
        raise UsageError(f"--threads {threads}: expected a whole number >= 1")
    torch.set_num_threads(threads)


def _kernel_isa() -> str | None:
    kernels = packed_kernels()
    return kernels.isa() if kernels is not None else None


def _integer_isa() -> str | None:
    from nas.kernels import integer

    return integer.isa() if integer.available() else None


def predicted_latency_ms(arch, profile, cost=None) -> float | None:
    """The latency model's prediction for `arch` (costed as `cost`, computed when None) on the
    device `profile` (`nas.cost.latency.Profile`, loaded once by the command: `nas export
    --profile`), or None without one."""
    if profile is None:
        return None
    from nas.cost.latency import predict_latency_ms

    return float(predict_latency_ms(arch, profile, cost))


def _profile_digest(profile) -> str | None:
    if profile is None:
        return None
    from nas.cost.latency import profile_digest

    return profile_digest(profile)


def versions() -> dict:
    out = {"nas": nas.__version__, "python": platform.python_version()}
    for dist in ("torch", "timm", "optuna", "numpy", "safetensors", "onnx"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


# ---- TorchScript / ONNX of the fake-quant model -------------------------------------------

@contextlib.contextmanager
def traceable(model: torch.nn.Module):
    """The fake-quant model as it is traced: eval mode, no autograd, binary layers on the
    fake-quant path (same function as the kernels). The quantizers trace as plain tensor ops
    by themselves (`nas.quant.functions.quantizer`). Inference only."""
    flags = [(m, m.use_kernels) for m in model.modules() if isinstance(m, BinaryConv2d)]
    was_training = model.training
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        for m, _ in flags:
            m.use_kernels = False
        model.eval()
        try:
            yield model
        finally:
            for m, flag in flags:
                m.use_kernels = flag
            model.train(was_training)


def write_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    with traceable(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(model, example, check_trace=False).save(str(path))


def write_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """TorchScript-based exporter (dynamo=False): faster than the torch.export one (docs/architecture.md,
    "Lab figures") and no dynamic-shape declarations; its logs go to stderr (stdout is for --json)."""
    with traceable(model), warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)


# ---- export ----------------------------------------------------------------------------------

def payload_of(model, cost=None) -> tuple[bytes, list[dict]]:
    """The packed payload of a trained model and its index; checked against the cost model
    (`cost` = `arch_cost(model.arch)`, computed when None) layer by layer (a mismatch is a bug
    in fold / layout / graph, never a user error)."""
    active = [i for i, b in enumerate(model.arch.blocks) if b.active_shift]
    if active:  # the payload format has no record for learned shift offsets yet
        raise UsageError(f"block {active[0]} (as1): active-shift archs cannot be exported yet; the payload "
                         f"carries no shift offsets, expected a grouped or sparse shift (as0)")
    payload, index = encode_payload(model_records(model))
    cost = arch_cost(model.arch) if cost is None else cost
    predicted = [layer for layer in cost.layers if layer.weight_bytes]
    if len(payload) != cost.weight_bytes or [e["bytes"] for e in index] != [c.weight_bytes for c in predicted]:
        diff = next(((e, c) for e, c in zip(index, predicted) if e["bytes"] != c.weight_bytes), None)
        where = f"; first difference: {diff[0]['name']} {diff[0]['bytes']} vs {diff[1].name} {diff[1].weight_bytes}" \
            if diff else f"; {len(index)} layers written, {len(predicted)} predicted"
        raise AssertionError(f"payload of {len(payload)} bytes != predicted weight_bytes {cost.weight_bytes}{where}")
    return payload, index


def check_budget(payload_bytes: int, budget_bytes: int | None, where: str = "the study's --target-mem") -> None:
    if budget_bytes is not None and payload_bytes > budget_bytes:
        raise UsageError(f"payload of {payload_bytes} bytes ({format_bytes(payload_bytes)}) exceeds {where} "
                         f"{format_bytes(budget_bytes)} ({budget_bytes} bytes); refusing to export")


def check_output(out_dir, force: bool = False) -> Path:
    """The output path, unless it is a file or a non-empty directory (without `force`)."""
    out = fsio.check_output_path(out_dir)
    if out.exists() and not (out.is_dir() and (force or not any(out.iterdir()))):
        raise UsageError(f"-o {out_dir}: exists and is not an empty directory; expected a new path "
                         f"(or --force to replace it)")
    return out


def export_model(model, out_dir, test, *, space: str | None = None, scaling: dict | None = None,
                 budget_bytes: int | None = None, info: dict | None = None, force: bool = False,
                 cost=None, formats: tuple[str, ...] = (), calibration=None, profile=None) -> dict:
    """Write the bundle of a trained `QuantNet` to `out_dir`; return the manifest.

    test: the dataset's test split (`ImageDataset`), normalised as in training: its
        mean / std go into the manifest (the bundle's preprocessing), and the accuracy
        of the packed model on it is measured here.
    budget_bytes: refuse (UsageError, exit 2) when the payload is larger.
    info: extra manifest fields (study, trial, seed, val_accuracy, ...).
    force: replace an existing non-empty `out_dir`.
    cost: `arch_cost(model.arch)` when the caller has it (the arch is costed once per export).
    formats: extra targets (`nas.export.formats`: "c", "tflite"), written into the bundle.
    calibration: training images (`ImageDataset`, normalised as `test`) for formats that
        calibrate tensors the model leaves unquantized.
    profile: the device profile (`nas.cost.latency.Profile`) that prices the manifest's
        `latency_ms` (its digest: `latency_profile`); None: no prediction (null). Passed in,
        never looked up here.
    """
    arch_string = encode(model.arch)
    out = check_output(out_dir, force)
    cost = arch_cost(model.arch) if cost is None else cost
    payload, index = payload_of(model, cost)
    check_budget(len(payload), budget_bytes)
    # weights.safetensors, model.ts and model.onnx each hold the float weights; torch.jit.save
    # aborts the interpreter on a full disk, so the space is checked before any work or write
    float_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    fsio.require_free_space(out.parent, 3 * float_bytes + len(payload) + (1 << 20), f"-o {str(out)!r}: its folder")

    packed = packed_model(decode(arch_string), payload)  # read back from the bytes, as `nas infer` does
    fake = predictions(model, test)
    ours = predictions(packed, test)
    accuracy = int((ours == test.labels).sum()) / len(test)
    agreement = int((ours == fake).sum()) / len(test)
    if agreement < 1.0:
        print(f"nas: warning: the packed model's predictions differ from the fake-quant model's on "
              f"{int((ours != fake).sum())} of {len(test)} test images", file=sys.stderr)

    manifest = {
        "format": FORMAT, "arch": arch_string, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(info or {}),
        "weight_bytes": cost.weight_bytes, "payload_bytes": len(payload), "budget_mem_bytes": budget_bytes,
        "accuracy": accuracy, "fake_quant_accuracy": int((fake == test.labels).sum()) / len(test),
        "prediction_agreement": agreement, "test_images": len(test),
        "params": cost.params, "macs": cost.macs, "peak_act_bytes": cost.peak_act_bytes,
        "mem_access": cost.mem_access, "mem_access_bytes": cost.mem_access_bytes, "bops": cost.bops,
        # latency_ms: the device profile's prediction (None without one); latency_measured_ms:
        # the packed model (what `nas infer` runs: integer / binary kernels, float elsewhere)
        "latency_ms": predicted_latency_ms(model.arch, profile, cost),
        "latency_profile": _profile_digest(profile), **timings(packed, test),
        "fake_quant_latency_measured_ms": latency_of(model, test),
        "input": {"in_chs": model.arch.in_chs, "resolution": model.arch.resolution,
                  "mean": [float(v) for v in test.mean], "std": [float(v) for v in test.std],
                  "layout": "NCHW float32, (x / 255 - mean) / std"},
        "num_classes": model.arch.fc.num_classes,
        "versions": versions(),
        "payload": {"file": "payload.bin", "layout": "nas.cost.layout", "byte_order": "little", "layers": index},
        # which deployable module runs each payload record (nas.export.convert): binary / integer / float
        "layer_paths": packed.layer_paths,
    }

    with fsio.atomic_dir(out) as tmp:
        (tmp / "arch.yaml").write_text(yaml.safe_dump({"arch": arch_string, "space": space, "scaling": scaling},
                                                      sort_keys=False), encoding="utf-8")
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
                  str(tmp / "weights.safetensors"), metadata={"arch": arch_string})
        (tmp / "payload.bin").write_bytes(payload)
        example, _ = test.batch(torch.arange(1))
        write_torchscript(model, example, tmp / "model.ts")
        write_onnx(model, example, tmp / "model.onnx")
        from nas.export.onnx_int8 import write_int8_onnx  # here: `python -m nas.export.onnx_int8` imports this file
        manifest["int8_onnx"] = write_int8_onnx(tmp, model.arch, payload, manifest, test, ours)
        write_formats(formats, tmp, model.arch, payload, manifest, test, ours, calibration)
        manifest["files"] = file_entries(tmp, [n for n in FILES + OPTIONAL_FILES if n in FILES or (tmp / n).is_file()])
        manifest["manifest_sha256"] = _manifest_digest(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        _default_permissions(tmp)  # mkdtemp makes 0700, safetensors 0600: a bundle is meant to be shared
    return manifest


def _default_permissions(d: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(d, 0o777 & ~umask)
    for f in d.iterdir():
        os.chmod(f, 0o666 & ~umask)


# ---- verify and load -------------------------------------------------------------------------

def verify_bundle(bundle_dir) -> dict:
    """The manifest, after checking it and every file it lists (size and sha256).
    Any problem: a one-line UsageError naming the file."""
    return read_verified(bundle_dir, FORMAT, FILES, OPTIONAL_FILES)


def load_bundle(bundle_dir) -> tuple[dict, torch.nn.Module]:
    """(manifest, packed model) from arch.yaml and payload.bin only, after `verify_bundle`."""
    d = Path(bundle_dir)
    manifest = verify_bundle(d)
    try:
        arch_doc = yaml.safe_load((d / "arch.yaml").read_text(encoding="utf-8"))
        arch_string = arch_doc["arch"]
    except (yaml.YAMLError, UnicodeDecodeError, TypeError, KeyError) as e:
        raise UsageError(f"bundle {d}: arch.yaml has no arch string ({type(e).__name__}); "
                         f"re-export the bundle") from None
    if arch_string != manifest["arch"]:
        raise UsageError(f"bundle {d}: arch.yaml's arch {arch_string!r} differs from {MANIFEST}'s; "
                         f"re-export the bundle")
    payload = (d / "payload.bin").read_bytes()
    try:
        model = packed_model(decode(arch_string), payload)
    except ValueError as e:
        raise UsageError(f"bundle {d}: payload.bin does not fit arch.yaml's architecture ({e})") from None
    return manifest, model

