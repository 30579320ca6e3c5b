"""`nas train --arch STR --dataset D [--data-dir P] --epochs E [--subset N] [--teacher ARCH]
[--seed S] [--json]`: build an arch string, train it, print the seed's five metrics.

Progress and logs go to stderr; with `--json` stdout is exactly one JSON object.
"""

import json
import sys

import torch

from nas.errors import UsageError
from nas.measure.device import add_device_arguments, resolve_device
from nas.measure.load import add_threads_argument, apply_threads
from nas.units import format_bytes, parse_seconds


def add_arguments(p) -> None:
    p.add_argument("--arch", required=True, help="arch string (see `nas space sample`)")
    p.add_argument("--dataset", default="fashion-mnist",
                   help="fashion-mnist (default), digits, cifar10, cifar100, or a path: IDX / CIFAR / "
                        "ImageFolder folder or .npz")
    p.add_argument("--data-dir", help="folder of a named dataset (default for fashion-mnist: "
                                      "/usr/share/datasets/fashion-mnist)")
    p.add_argument("--epochs", type=int, default=1, help="training epochs (default 1)")
    p.add_argument("--subset", type=int, help="train on a fixed stratified subset of N training images")
    p.add_argument("--val-subset", type=int, help="score on a fixed stratified subset of N validation images")
    p.add_argument("--teacher", metavar="ARCH", help="distil from this arch, trained first on the same data")
    p.add_argument("--teacher-epochs", type=int, help="epochs for the teacher (default: --epochs)")
    p.add_argument("--seed", type=int, default=0, help="seeds weight init and data order (default 0)")
    p.add_argument("--split-seed", type=int, default=0, help="seeds the train/validation split (default 0)")
    p.add_argument("--batch-size", type=int, default=64, help="default 64")
    p.add_argument("--lr", type=float, help="learning rate (default: 5e-3 for adamw, 0.1 for sgd)")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--max-time", help="stop training after this long, e.g. 90s or 5m")
    p.add_argument("--test", action="store_true", help="also score the test set (final figures only)")
    p.add_argument("--save", metavar="PATH", help="write the trained weights as safetensors")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    g = p.add_argument_group("recipe extras (nas.train.recipe; docs/training.md has what they measured)")
    g.add_argument("--augment", action="store_true",
                   help="random crop (pad: an eighth of the side) and, where labels survive it, a horizontal flip")
    g.add_argument("--erasing", type=float, default=0.0, metavar="P",
                   help="random erasing of one rectangle with probability P (default 0; implies --augment)")
    g.add_argument("--ema", action="store_true", help="end on an exponential moving average of the weights")
    g.add_argument("--recalibrate-bn", type=int, default=0, metavar="N",
                   help="recompute BatchNorm statistics on N unaugmented training images at the end (default 0)")
    m = p.add_argument_group("training methods (nas.train.methods; docs/training.md has what they measured)")
    m.add_argument("--two-stage", type=float, default=0.0, metavar="F",
                   help="Bi-Real's two-stage recipe: the first F of the epochs (rounded, at least one) train a "
                        "real-valued net (1-bit sites compute Clip(-1, x, 1), 1-bit layers use float weights), "
                        "the rest binarize from those weights (default 0: one stage)")
    m.add_argument("--sign-grad", choices=("approxsign", "htanh"), default="approxsign",
                   help="gradient of the 1-bit activation sign: Bi-Real's ApproxSign max(0, 2 - 2|x|) (default) "
                        "or BNN's hard tanh 1_{|x| <= 1}")
    m.add_argument("--act-quant", choices=("pact", "dorefa"), default="pact",
                   help="2..8-bit activations: PACT with a learned clip (default) or DoReFa, clip fixed at 1")
    m.add_argument("--grad-bits", type=int, metavar="K",
                   help="DoReFa gradient quantization: each quantized layer's output gradient to K bits "
                        "(2..16) with stochastic rounding (default: float gradients)")
    m.add_argument("--weight-quant", choices=("dorefa", "lqnet"), default="dorefa",
                   help="2..8-bit weights: DoReFa's fixed uniform levels (default) or LQ-Net's learned levels "
                        "v^T e, e in {-1,+1}^K, one basis v per output channel fitted by least squares while "
                        "training; LQ-Net's levels are not the DoReFa codes the payload stores, so it is for "
                        "measuring only: --save is refused with it")
    m.add_argument("--weight-grad", choices=("ste", "metaquant"), default="ste",
                   help="gradient of the 1..8-bit weights: the straight-through estimator (default) or MetaQuant, "
                        "a small meta network trained jointly that gives it from the quantized weight's gradient "
                        "and the weight (weights export as usual)")
    add_threads_argument(p)
    add_device_arguments(p)
    p.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true",
                   help="no progress on stderr (default: a bar on a terminal, one line per epoch elsewhere)")


def _check(args) -> None:
    for name in ("epochs", "batch_size", "teacher_epochs", "subset", "val_subset"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} {value}: expected a whole number >= 1")
    if not 0.0 <= args.erasing <= 1.0:
        raise UsageError(f"--erasing {args.erasing}: expected a probability from 0 to 1")
    if args.recalibrate_bn < 0:
        raise UsageError(f"--recalibrate-bn {args.recalibrate_bn}: expected a whole number >= 0 (training images)")
    if args.lr is not None and not args.lr > 0:
        raise UsageError(f"--lr {args.lr}: expected a positive number")
    if not 0.0 <= args.two_stage < 1.0:  # NaN fails too
        raise UsageError(f"--two-stage {args.two_stage}: expected a fraction of the epochs, 0 <= F < 1 (0: one stage)")
    if args.two_stage:
        from nas.train.methods import stage_epochs
        stage_epochs(args.epochs, args.two_stage, "--two-stage")
    if args.grad_bits is not None and not 2 <= args.grad_bits <= 16:
        raise UsageError(f"--grad-bits {args.grad_bits}: expected a whole number from 2 to 16")
    if args.weight_quant == "lqnet" and args.weight_grad == "metaquant":
        raise UsageError("--weight-grad metaquant with --weight-quant lqnet: expected one of the two (MetaQuant "
                         "works on DoReFa's and BWN's quantizers)")
    if args.weight_quant == "lqnet" and args.save:
        raise UsageError(f"--save {args.save} with --weight-quant lqnet: LQ-Net's learned levels are not the "
                         f"DoReFa codes the payload stores, so its weights would export wrong; expected no --save "
                         f"(--weight-quant lqnet is for measuring)")


def _check_method_layers(args, spec) -> None:
    """A weight method on an arch with no layer it applies to is refused (it would be a no-op)."""
    if args.weight_quant == "dorefa" and args.weight_grad == "ste":
        return
    from nas.blocks.model import build_model
    from nas.quant.lqnet import lqnet_layers
    from nas.train.metaquant import meta_layers

    model = build_model(spec)  # a throwaway: the trained net is built (and seeded) later
    if args.weight_quant == "lqnet" and not lqnet_layers(model):
        raise UsageError("--weight-quant lqnet: --arch has no 2..8-bit weight layer; expected "
                         "at least one w2..w8 layer")
    if args.weight_grad == "metaquant" and not meta_layers(model):
        raise UsageError("--weight-grad metaquant: --arch has no 1..8-bit weight layer; expected at least one "
                         "w1..w8 layer")


def _capped(option: str, value: int | None, split: int, which: str, name: str) -> int | None:
    """`value`, or the split's size with a note on stderr when it asks for more than the split holds."""
    if value is not None and value > split:
        print(f"nas: note: {option} {value}: capped to {split}, the {which} split of {name}", file=sys.stderr)
        return split
    return value


def _fit(spec, data, where: str):
    """`data` at the spec's resolution, after checking channels and classes match."""
    if spec.in_chs != data.in_chs:
        raise UsageError(f"{where}: in_chs={spec.in_chs} but {data.name} images have {data.in_chs} channel(s); "
                         f"expected in_r{spec.resolution}_c{data.in_chs}")
    if spec.fc.num_classes != data.num_classes:
        raise UsageError(f"{where}: fc_n{spec.fc.num_classes} but {data.name} has {data.num_classes} classes; "
                         f"expected fc_n{data.num_classes}")
    return data.resized(spec.resolution)


def run(args) -> int:
    from nas.blocks.model import build_model
    from nas.cost import arch_cost
    from nas.data import load_dataset
    from nas.space import decode, encode
    from nas.train.evaluate import evaluate
    from nas.train.methods import Methods, train_with_methods
    from nas.train.trainer import TrainingDiverged, train

    _check(args)
    methods = Methods(two_stage=args.two_stage, sign_gradient=args.sign_grad, act_quant=args.act_quant,
                      grad_bits=args.grad_bits, weight_quant=args.weight_quant, weight_grad=args.weight_grad)
    device = resolve_device(args.device or "auto")  # before any work
    threads = apply_threads(args.threads)
    max_seconds = parse_seconds(args.max_time, "--max-time") if args.max_time else None
    if args.save:  # a link, a device, a long name, an unwritable folder: refused before training
        from nas import fsio

        fsio.check_output_path(args.save, "--save")
    spec = decode(args.arch)
    _check_method_layers(args, spec)
    teacher_spec = decode(args.teacher) if args.teacher else None
    if teacher_spec is not None and teacher_spec.resolution != spec.resolution:
        raise UsageError(f"--teacher: input resolution {teacher_spec.resolution} differs from --arch's "
                         f"{spec.resolution}; expected the same in_r value")
    full = load_dataset(args.dataset, args.data_dir, split_seed=args.split_seed)
    data = _fit(spec, full, "--arch")
    if teacher_spec is not None:
        _fit(teacher_spec, full, "--teacher")
    subset = _capped("--subset", args.subset, len(data.train), "training", data.name)
    val_subset = _capped("--val-subset", args.val_subset, len(data.val), "validation", data.name)
    if subset is not None and subset < data.num_classes:
        raise UsageError(f"--subset {subset}: expected {data.num_classes} to {len(data.train)} "
                         f"(one image per class, the training split of {data.name})")
    print(data.describe(), file=sys.stderr)
    common = dict(subset=subset, val_subset=val_subset, batch_size=args.batch_size, lr=args.lr,
                  optimizer=args.optimizer, seed=args.seed, progress=not args.quiet, max_seconds=max_seconds,
                  device=device, amp=bool(args.amp))
    extras = {}
    if args.augment or args.erasing:
        from nas.train.recipe import default_augment
        extras["augment"] = default_augment(data.name, spec.resolution, erasing=args.erasing)
    if args.ema:
        extras["ema_decay"] = "auto"
    if args.recalibrate_bn:
        extras["recalibrate_bn"] = min(args.recalibrate_bn, len(data.train))

    teacher = teacher_acc = None
    if teacher_spec is not None:
        torch.manual_seed(args.seed)
        teacher = build_model(teacher_spec)
        print(f"training teacher {args.teacher}", file=sys.stderr)
        try:
            teacher_acc = train(teacher, data, args.teacher_epochs or args.epochs, measure_inference=False,
                                **common).accuracy
        except TrainingDiverged as e:
            print(f"nas train: teacher {e}", file=sys.stderr)
            return 1

    torch.manual_seed(args.seed)  # weight init
    model = build_model(spec)
    try:
        result, method_record = train_with_methods(model, data, args.epochs, methods, teacher=teacher,
                                                   weight_bytes=int(arch_cost(spec).weight_bytes), **common, **extras)
    except TrainingDiverged as e:
        print(f"nas train: {e}", file=sys.stderr)
        return 1

    out = {"arch": encode(spec), "dataset": data.name, "params": sum(p.numel() for p in model.parameters()),
           **result.to_dict(), "teacher": args.teacher, "teacher_accuracy": teacher_acc,
           "threads": threads, "methods": method_record}
    if args.test:
        out["test_accuracy"] = evaluate(model, data.test)
    if args.save:
        from safetensors.torch import save_file

        from nas import fsio

        with fsio.atomic_file(args.save) as tmp:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        out["saved"] = args.save
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{out['arch']}\n  dataset {data.describe()}")
    print(f"  accuracy (val)        {result.accuracy:.4f}" +
          (f"   test {out['test_accuracy']:.4f}" if args.test else ""))
    print(f"  memory footprint      {format_bytes(result.weight_bytes)} (weight_bytes)")
    print(f"  training time         {result.train_time_s:.1f} s ({result.epochs_completed:g} epochs, "
          f"{result.train_images} images, {result.images_per_s:.0f} images/s, {result.device})")
    print(f"  inference time        {result.infer_ms_per_image:.3f} ms/image (batch 1, median, {threads} threads)")
    print(f"  peak training memory  {format_bytes(result.peak_train_mem_bytes)} ({result.peak_mem_method})")
    if not methods.is_default():
        shown = {k: v for k, v in method_record.items()
                 if k in ("two_stage", "sign_gradient", "act_quant", "grad_bits", "weight_quant", "weight_grad")}
        print("  methods               " + ", ".join(f"{k}={v}" for k, v in shown.items()) +
              (f"; stage 1: {method_record['stage1_epochs']} real-valued epochs, val "
               f"{method_record['stage1_accuracy']:.4f}" if "stage1_epochs" in method_record else ""))
    if teacher_acc is not None:
        print(f"  teacher accuracy      {teacher_acc:.4f} ({args.teacher})")
    return 0
