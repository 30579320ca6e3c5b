"""`nas compress (--arch A | --model lenet5) --weights W [--prune S [--structured] [--iterative N]]
[--share BITS] [--pq d=D,k=K] [--ptq static8|dynamic8] -o DIR`: compress a trained float model.

Deep Compression's order: prune (retrain after each step) -> share (fine-tune the
centroids) -> pack. The output directory gets `payload.bin` (exactly the `weight_bytes`
that `nas.cost.layout` predicts; checked before writing), `weights.safetensors` (the
compressed model's float weights) and `manifest.json` (accuracy before / after, the
per-layer table). Retraining prints one line per epoch on stderr.
"""

import json
import sys
from pathlib import Path

from nas.compress.report import parse_layer_sparsity, print_table
from nas.errors import UsageError


def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--arch", help="a full-precision arch string (w32 a32), trained with `nas train --save`")
    src.add_argument("--model", choices=("lenet5",), help="a built-in plain network")
    p.add_argument("--weights", required=True, help="safetensors file of the trained weights")
    p.add_argument("--dataset", default="fashion-mnist")
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
                          regularizer=None if args.regularizer == "none" else args.regularizer,
                          strength=args.strength, share=args.share, share_method=args.share_method, pq=pq, ptq=ptq,
                          calib_images=args.calib_images, batch_size=args.batch_size, lr=args.lr, seed=args.seed)


def load_model(args, data):
    from nas.compress.model import lenet5, plain_from_arch
    from nas.weights import read_weights

    state, _ = read_weights(args.weights, "--weights")
    if args.model == "lenet5":
        model = lenet5(data.in_chs, data.resolution, data.num_classes)
    else:
        from nas.blocks.model import build_model
        from nas.space import decode

        model = build_model(decode(args.arch))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise UsageError(f"--weights {args.weights!r}: does not fit the model ({first})") from None
    return model if args.model else plain_from_arch(model)


def run(args) -> int:
    from nas.compress.pipeline import compress
    from nas.data import load_dataset
    config = config_of(args)  # validates before any data is read
    out = Path(args.output)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise UsageError(f"-o {args.output}: exists and is not an empty directory; expected a new path")
    data = load_dataset(args.dataset, args.data_dir)
    if args.arch:
        from nas.space import decode

        data = data.resized(decode(args.arch).resolution)
    elif args.resolution:
        data = data.resized(args.resolution)
    model = load_model(args, data)
    if config.pq is not None:
        from nas.compress.pq import check_pq

        check_pq(model, config.pq[0])
    result = compress(model, data, config)
    payload = result.pop("payload")
    out.mkdir(parents=True, exist_ok=True)
    if payload is not None:
        (out / "payload.bin").write_bytes(payload)
    from safetensors.torch import save_file
    from torch.nn.utils import parametrize

    for m in model.modules():
        if parametrize.is_parametrized(m):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "weights.safetensors"))
    manifest = {"arch": args.arch, "model": args.model, "dataset": args.dataset, **result,
                "config": {k: v for k, v in vars(args).items() if not k.startswith("_")}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
    if args.json:
        print(json.dumps(manifest, default=str))
    else:
        print_table(result)
    return 0
