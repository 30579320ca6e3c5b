"""`nas infer --bundle DIR --dataset D`: run an exported bundle's packed model on a test split.

Loads only the bundle: every file's sha256 is checked against manifest.json first (a
missing or modified file is a one-line error naming it, exit 2), the network is rebuilt
from arch.yaml's arch string and its weights are read from payload.bin — not from
weights.safetensors: the packed payload alone is what is deployed. Each layer runs where the
conversion table (`nas.export.convert`) puts it: 1-bit layers on the packed-binary kernels,
2/4/8-bit layers with 2/4/8-bit PACT inputs on the integer kernels (integer from layer to
layer where consecutive layers are), the rest in PyTorch float; the manifest's `layer_paths`
lists which. Images are normalised with the mean / std
recorded in the manifest (those of the training data), not recomputed from `D`.

A bundle written by `nas compress` (`nas.compress.bundle`) runs the same way: its network is
rebuilt from the manifest's source and every weight is decoded from payload.bin (dense,
bitmap, relative, codebook, pq or int8 records; static PTQ sites with their stored scale and
zero point), then runs in PyTorch float.
"""

import json

from nas.errors import UsageError


def add_arguments(p):
    p.add_argument("--bundle", required=True, help="bundle directory written by `nas export`")
    p.add_argument("--dataset", help="dataset name or path (default: the one the bundle was exported with)")
    p.add_argument("--data-dir", help="where the dataset's files are")
    p.add_argument("--subset", type=int, help="a fixed stratified subset of this many test images")
    p.add_argument("--threads", type=int, help="torch / kernel threads (default: torch's own choice)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--c", action="store_true", help="also build the bundle's C package (c/, `nas export --format c`) "
                   "with gcc, run it on the test split, compare its logits with the packed model's bit for bit")
    p.add_argument("--mcu", action="store_true", help="with --c: also cross-compile for Cortex-M4 and run 10 test "
                   "images under qemu-system-arm -M mps2-an386 (flash, SRAM, instructions per inference)")


def test_split(manifest: dict, dataset: str, data_dir: str | None, subset: int | None):
    """The dataset's test split at the bundle's resolution, normalised as in training."""
    import torch

    from nas.data import ImageDataset, load_dataset
    from nas.data.split import stratified_subset

    inp = manifest["input"]
    data = load_dataset(dataset, data_dir, resolution=inp["resolution"])
    if data.in_chs != inp["in_chs"] or data.num_classes > manifest["num_classes"]:
        raise UsageError(f"--dataset {dataset}: {data.in_chs} channel(s), {data.num_classes} classes; the bundle "
                         f"expects {inp['in_chs']} channel(s) and at most {manifest['num_classes']} classes")
    test = ImageDataset(data.test.images, data.test.labels, inp["mean"], inp["std"])
    if subset is not None:
        if not 1 <= subset <= len(test):
            raise UsageError(f"--subset {subset}: expected 1 to {len(test)} (the test split of {data.name})")
        test = test.subset(torch.from_numpy(stratified_subset(test.labels.numpy(), subset, seed=0)))
    return test


def path_counts(layer_paths: list[dict]) -> dict[str, int]:
    """How many payload records run on each path (`nas.export.convert`), in table order."""
    from nas.export.convert import PATHS

    return {path: n for path in PATHS if (n := sum(e["path"] == path for e in layer_paths))}


def run(args) -> int:
    from nas.export.bundle import load_bundle, predictions, set_threads, timings

    from nas.compress.bundle import is_compressed, load_compressed_bundle

    if args.mcu and not args.c:
        raise UsageError("--mcu: expected --c as well (the MCU check runs the bundle's C package)")
    if args.mcu:
        from nas.export.c import mcu_tools

        mcu_tools()  # before any work: a missing cross tool is one line, exit 2
    set_threads(args.threads)
    # a `nas compress` bundle: the network decoded from its sparse / codebook / pq / int8 payload
    manifest, model = load_compressed_bundle(args.bundle) if is_compressed(args.bundle) else load_bundle(args.bundle)
    dataset = args.dataset or manifest.get("dataset")
    if dataset is None:
        raise UsageError("--dataset: the bundle does not name its dataset; expected --dataset NAME or PATH")
    test = test_split(manifest, dataset, args.data_dir, args.subset)
    preds = predictions(model, test)
    result = {
        "bundle": str(args.bundle), "arch": manifest["arch"] or manifest.get("model"), "dataset": dataset, "images": len(test),
        "accuracy": int((preds == test.labels).sum()) / len(test),
        "accuracy_at_export": manifest["accuracy"], "test_images_at_export": manifest["test_images"],
        "payload_bytes": manifest["payload_bytes"], "weight_bytes": manifest["weight_bytes"],
        "latency_ms": manifest.get("latency_ms"), **timings(model, test),
        "layer_paths": path_counts(model.layer_paths),
    }
    if args.c:
        result["c"] = c_check(args.bundle, model, test, preds, args.mcu)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"bundle {args.bundle}: {result['arch']}")
        print(f"  accuracy  {result['accuracy']:.4f} on {result['images']} test images of {dataset} "
              f"(at export: {result['accuracy_at_export']:.4f} on {result['test_images_at_export']})")
        print(f"  latency   {result['latency_measured_ms']:.3g} ms/image (batch 1, median, {result['threads']} "
              f"threads, kernels {result['kernels']}); {result['throughput_ips']:.0f} images/s at batch 256")
        print(f"  payload   {result['payload_bytes']} bytes")
        where = ", ".join(f"{n} {path}" for path, n in result["layer_paths"].items())
        print(f"  layers    {where} (integer kernels {result['integer_kernels']})")
        if args.c:
            c = result["c"]
            print(f"  C (gcc)   accuracy {c['accuracy']:.4f}, predictions agree {c['prediction_agreement']:.4f}, "
                  f"logits bit-identical on {c['identical_logits']}/{c['images']} images")
        if args.mcu:
            m = result["c"]["mcu"]
            print(f"  Cortex-M4 logits equal the host's on {m['identical_logits']}/{m['images']} images; flash "
                  f"{m['flash_bytes']} B (payload {m['payload_bytes']}, kernels {m['kernel_code_bytes']}), SRAM "
                  f"{m['sram_bytes']} B (arena {m['arena_bytes']}, stack peak {m['stack_peak_bytes']}), "
                  f"predicted flash {m['predicted_flash_bytes']} B, SRAM {m['predicted_sram_bytes']} B, "
                  f"{m['instructions_per_inference']} instructions/inference")
    return 0


def c_check(bundle, model, test, preds, mcu: bool = False) -> dict:
    """Build `bundle/c` on the host, run it on `test`, compare with the packed model."""
    from pathlib import Path

    import numpy as np
    import torch

    from nas.export.c import host_logits, images_f32

    c_dir = Path(bundle) / "c"
    if not (c_dir / "model.c").is_file():
        raise UsageError(f"--c: {c_dir} has no model.c; expected a bundle exported with `nas export --format c`")
    images = images_f32(test)
    logits = host_logits(c_dir, images, model.arch.fc.num_classes)
    with torch.inference_mode():
        ref = model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    same = np.all(logits.view(np.uint32) == ref.view(np.uint32), axis=1)
    labels = test.labels.numpy()
    out = {}
    if mcu:
        from nas.export.c import mcu_check

        m = mcu_check(c_dir, images[:10], model.arch.fc.num_classes)
        got = m.pop("logits")
        m["identical_logits"] = int(np.all(got.view(np.uint32) == logits[:10].view(np.uint32), axis=1).sum())
        text = (c_dir / "model.h").read_text()
        m["arena_bytes"] = int(text.split("NAS_ARENA_BYTES ")[1].split()[0])
        m["payload_bytes"] = int(text.split("NAS_PAYLOAD_BYTES ")[1].split()[0])
        from nas.cost.mcu import mcu_cost

        predicted = mcu_cost(model.arch, m["payload_bytes"])  # what nas search --target-flash/-sram priced
        m["predicted_flash_bytes"], m["predicted_sram_bytes"] = predicted.flash_bytes, predicted.sram_bytes
        out["mcu"] = m
    return {**out, "images": len(test), "accuracy": float((logits.argmax(1) == labels).mean()),
            "prediction_agreement": float((logits.argmax(1) == preds.numpy()).mean()),
            "identical_logits": int(same.sum())}
