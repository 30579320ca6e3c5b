"""`nas compress (--bundle B | --arch A --weights W | --model lenet5|resnet20 --weights W)
[--prune S [--structured] [--iterative N]] [--share BITS] [--pq d=D,k=K] [--ptq static8|dynamic8]
-o DIR`: compress a trained float model.

Deep Compression's order: prune (retrain after each step) -> share (fine-tune the
centroids) -> pack. The output directory is a compressed bundle (`nas.compress.bundle`):
`payload.bin` (exactly the `weight_bytes` that `nas.cost.layout` predicts; checked before
writing), `weights.safetensors` (the compressed model's float weights) and `manifest.json`
(accuracy before / after, the per-layer table, the payload index). Before it is written the
payload is decoded into a fresh network and its logits are compared with the compressed
model's (`identical_logits`); `nas infer --bundle DIR` runs that decoded network.

--bundle takes a `nas export` bundle of a full-precision arch (w32 a32 everywhere; its
weights.safetensors after the sha256 check). A bundle with any quantized layer is refused
with one line (its 1..16-bit records have no sparse or codebook form), except by
`--ptq static8`, which makes its 32-bit layers 8-bit in the export's integer semantics and
writes a `nas export` bundle (`nas.export.ptq`). A bundle that `nas compress` wrote is
refused too. Retraining prints one line per epoch on stderr.
"""

import json
import sys
from pathlib import Path

from nas.compress.model import HAND_MODELS
from nas.compress.report import parse_layer_sparsity, print_table
from nas.errors import UsageError


def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--arch", help="a full-precision arch string (w32 a32), trained with `nas train --save`")
    src.add_argument("--model", choices=HAND_MODELS, help="a built-in plain network")
    src.add_argument("--bundle", help="a bundle written by `nas export`: of a full-precision (w32 a32) arch, "
                                       "or any with --ptq static8 (its 32-bit layers become 8-bit)")
    p.add_argument("--weights", help="safetensors file of the trained weights (--arch / --model)")
    p.add_argument("--width", type=float, default=1.0, help="--model resnet20: width multiplier (default 1)")
    p.add_argument("--dataset", help="default: the bundle's dataset, else fashion-mnist")
    p.add_argument("--data-dir")
    p.add_argument("--resolution", type=int, help="--model only: resize the images (LeNet-5 needs >= 16)")
    p.add_argument("--prune", type=float, metavar="S", help="sparsity per layer, 0 <= S < 1 (e.g. 0.9)")
    p.add_argument("--layer-sparsity", default="", metavar="I=S,...",
                   help="per-layer overrides by layer index in execution order, e.g. 0=0.5,3=0.8")
    p.add_argument("--structured", action="store_true", help="prune whole output channels and remove them")
    p.add_argument("--iterative", type=int, default=1, metavar="N", help="prune steps (cubic schedule), default 1")
    p.add_argument("--regularizer", choices=("l1", "l2", "none"), default="l2")
    p.add_argument("--strength", type=float, default=1e-5, help="regularization strength (default 1e-5)")
    p.add_argument("--share", type=int, metavar="BITS", help="codebook of 2^BITS shared values per layer")
    p.add_argument("--share-method", choices=("kmeans", "gmm"), default="kmeans")
    p.add_argument("--pq", metavar="d=D,k=K", help="product quantization: sub-vectors of D input channels, "
                                                   "K centroids per layer (e.g. d=4,k=256)")
    p.add_argument("--ptq", help="post-training affine quantization: static8 or dynamic8")
    p.add_argument("--calibration", choices=("minmax", "percentile", "mse"), default="minmax")
    p.add_argument("--calib-images", type=int, default=256, help="training images for PTQ calibration")
    p.add_argument("--retrain-epochs", type=int, default=1)
    p.add_argument("--retrain-subset", type=int, metavar="N", help="retrain on a stratified subset of N images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="output directory (must not exist or be empty)")
    p.add_argument("--json", action="store_true")


def config_of(args):
    from dataclasses import replace

    from nas.compress.pipeline import CompressConfig
    from nas.compress.ptq import parse_ptq

    from nas.compress.pq import parse_pq

    ptq = replace(parse_ptq(args.ptq), calibration=args.calibration) if args.ptq else None
    pq = parse_pq(args.pq) if args.pq else None
    return CompressConfig(prune=args.prune, layer_sparsity=parse_layer_sparsity(args.layer_sparsity),
                          structured=args.structured, iterative=args.iterative, retrain_epochs=args.retrain_epochs,
                          retrain_subset=args.retrain_subset,
                          regularizer=None if args.regularizer == "none" else args.regularizer,
                          strength=args.strength, share=args.share, share_method=args.share_method, pq=pq, ptq=ptq,
                          calib_images=args.calib_images, batch_size=args.batch_size, lr=args.lr, seed=args.seed)


def bundle_source(bundle: str, ptq_static: bool = False) -> dict:
    """The `nas export` manifest of --bundle, after its checks; refuses a compressed bundle and,
    unless `ptq_static` (which keeps quantized layers: `nas.export.ptq`), one with quantized
    layers, before any data is read. Its ``quantized`` key says whether any layer is."""
    from nas.compress.bundle import FORMAT, read_format
    from nas.export.bundle import verify_bundle

    if read_format(bundle) == FORMAT:
        raise UsageError(f"--bundle {bundle}: is already compressed (manifest format {FORMAT}, written by "
                         f"`nas compress`); expected a bundle written by `nas export`")
    manifest = verify_bundle(bundle)
    from nas.blocks.model import build_model
    from nas.space import decode

    quantized = [layer for layer in build_model(decode(manifest["arch"])).quant_layers()
                 if layer.w_bits != 32 or layer.a_bits != 32]
    if quantized and not ptq_static:
        q = quantized[0]
        raise UsageError(f"--bundle {bundle}: layer {q.name} is quantized (w{q.w_bits} a{q.a_bits}); expected a "
                         f"full-precision bundle (w32 a32 everywhere): a quantized record has no sparse or "
                         f"codebook form (only --ptq static8 takes it: its 32-bit layers become 8-bit)")
    return {**manifest, "quantized": bool(quantized)}


def load_model(args, data, arch: str | None = None):
    from nas.compress.model import hand_model, plain_from_arch
    from nas.weights import read_weights

    weights = str(Path(args.bundle) / "weights.safetensors") if args.bundle else args.weights
    state, _ = read_weights(weights, "--weights")
    if args.model:
        model = hand_model(args.model, data.in_chs, data.resolution, data.num_classes, args.width)
    else:
        from nas.blocks.model import build_model
        from nas.space import decode

        model = build_model(decode(arch or args.arch))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise UsageError(f"--weights {weights!r}: does not fit the model ({first})") from None
    return model if args.model else plain_from_arch(model)  # compress() folds a hand model's BatchNorms


def readback(manifest: dict, payload: bytes, model, test) -> dict:
    """Decode `payload` into a fresh network (what `nas infer` runs); compare it with `model`
    on the test split: accuracy, prediction agreement, rows of logits identical bit for bit."""
    import torch

    from nas.compress.bundle import model_from_payload

    loaded = model_from_payload(manifest, payload)
    model.eval()
    same = agree = correct = 0
    with torch.inference_mode():
        for start in range(0, len(test), 512):
            x, y = test.batch(torch.arange(start, min(start + 512, len(test))))
            a, b = model(x), loaded(x)
            same += int((a == b).all(dim=1).sum())
            agree += int((a.argmax(1) == b.argmax(1)).sum())
            correct += int((b.argmax(1) == y).sum())
    return {"accuracy": correct / len(test), "prediction_agreement": agree / len(test), "identical_logits": same,
            "test_images": len(test)}


def run(args) -> int:
    from nas.compress.bundle import payload_index, write_compressed_bundle
    from nas.compress.pipeline import compress
    from nas.data import load_dataset
    from nas.fsio import check_output_path

    config = config_of(args)  # validates before any data is read
    if not args.bundle and not args.weights:
        raise UsageError(f"--{'arch' if args.arch else 'model'}: expected --weights W as well (the trained "
                         f"weights to compress)")
    if args.bundle and args.weights:
        raise UsageError("--weights with --bundle: expected one of the two (the bundle carries its weights)")
    out = check_output_path(args.output)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise UsageError(f"-o {args.output}: exists and is not an empty directory; expected a new path")
    ptq_static = config.ptq is not None and config.ptq.mode == "static"
    source_manifest = bundle_source(args.bundle, ptq_static) if args.bundle else None
    arch = source_manifest["arch"] if source_manifest else args.arch
    dataset = args.dataset or (source_manifest or {}).get("dataset") or "fashion-mnist"
    data = load_dataset(dataset, args.data_dir)
    if arch:
        from nas.space import decode

        data = data.resized(decode(arch).resolution)
    elif args.resolution:
        data = data.resized(args.resolution)
    if source_manifest:
        inp = source_manifest["input"]
        if [float(v) for v in data.mean] != inp["mean"] or [float(v) for v in data.std] != inp["std"]:
            raise UsageError(f"--dataset {dataset}: normalises with mean {[float(v) for v in data.mean]}, std "
                             f"{[float(v) for v in data.std]}; the bundle was trained with mean {inp['mean']}, "
                             f"std {inp['std']}; expected the bundle's dataset")
    if source_manifest and source_manifest["quantized"]:
        return _ptq_quantized_bundle(args, data)
    model = load_model(args, data, arch)
    if config.pq is not None:
        from nas.compress.pq import check_pq

        check_pq(model, config.pq[0])
    result = compress(model, data, config)
    payload = result.pop("payload")
    ptq = None if config.ptq is None else {"mode": config.ptq.mode, "bits": config.ptq.bits,
                                           "act_symmetric": config.ptq.act_symmetric}
    manifest = {
        "arch": arch, "model": args.model, "dataset": dataset,
        "source": {"arch": arch, "model": args.model, "width": args.width if args.model == "resnet20" else None,
                   "bundle": args.bundle, "bundle_accuracy": (source_manifest or {}).get("accuracy"),
                   "weights": args.weights},
        "input": {"in_chs": data.in_chs, "resolution": data.resolution, "mean": [float(v) for v in data.mean],
                  "std": [float(v) for v in data.std], "layout": "NCHW float32, (x / 255 - mean) / std"},
        "num_classes": data.num_classes, "ptq": ptq, **result,
        "payload": {"file": "payload.bin", "layout": "nas.cost.layout", "byte_order": "little",
                    "layers": payload_index(model, ptq)},
        "config": {k: v for k, v in vars(args).items() if not k.startswith("_")},
    }
    manifest.update(readback(manifest, payload, model, data.test))
    if manifest["identical_logits"] != len(data.test):
        print(f"nas: warning: the model decoded from payload.bin gives different logits on "
              f"{len(data.test) - manifest['identical_logits']} of {len(data.test)} test images", file=sys.stderr)
    manifest = write_compressed_bundle(out, model, payload, manifest)
    if args.json:
        print(json.dumps(manifest, default=str))
    else:
        print_table(result)
    return 0


def _ptq_quantized_bundle(args, data) -> int:
    """--bundle (with quantized layers) --ptq static8: its 32-bit layers made 8-bit in the
    export's integer semantics; the output is a `nas export` bundle (`nas.export.ptq`)."""
    from nas.export.ptq import ptq_export

    manifest = ptq_export(args.bundle, args.output, data, method=args.calibration, calib_images=args.calib_images,
                          batch_size=args.batch_size, seed=args.seed)
    if args.json:
        print(json.dumps(manifest, default=str))
        return 0
    ptq = manifest["ptq"]
    print(f"{'layer':<28}{'bits':>14}{'weight SQNR':>13}{'act clip':>10}{'act SQNR':>10}")
    for r in ptq["layers"]:
        w = f"{r['weight_sqnr_db']:.1f} dB" if "weight_sqnr_db" in r else "-"
        clip = f"{r['act_clip']:.3f}" if "act_clip" in r else "-"
        a = f"{r['act_sqnr_db']:.1f} dB" if "act_sqnr_db" in r else "-"
        print(f"{r['layer']:<28}{r['bits_before'] + '->' + r['bits_after']:>14}{w:>13}{clip:>10}{a:>10}")
    print(f"test accuracy {ptq['source_accuracy']:.4f} -> {manifest['accuracy']:.4f} "
          f"({100 * (ptq['source_accuracy'] - manifest['accuracy']):+.2f} points lost); weight_bytes "
          f"{ptq['source_weight_bytes']} -> {manifest['weight_bytes']}; a `nas export` bundle in {args.output}")
    return 0
