"""`nas bench compress`: Deep Compression's LeNet-5 anchor on Fashion-MNIST (or the ResNet-20-like).

Trains LeNet-5 (`nas.compress.model.lenet5`, 1 724 320 fp32 weight_bytes) or, with
`--model resnet20`, the ResNet-20-like hand net (BatchNorm folded into the convs after
training) uncompressed, then prune -> retrain -> share -> fine-tune -> pack, and prints fp32 weight_bytes /
compressed weight_bytes (both exact: `nas.cost.layout`, the payload written to the byte)
and the test-accuracy loss against the uncompressed net. Deep Compression: LeNet-5 on
MNIST 1720 KB -> 44 KB (39x), no accuracy loss.
"""

import json
import sys
import time

import torch

from nas.compress.model import HAND_MODELS


def add_arguments(p) -> None:
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir")
    p.add_argument("--model", choices=HAND_MODELS, default="lenet5")
    p.add_argument("--width", type=float, default=1.0, help="--model resnet20: width multiplier (default 1)")
    p.add_argument("--epochs", type=int, default=4, help="uncompressed training epochs (default 4)")
    p.add_argument("--subset", type=int, help="train on a stratified subset of N images")
    p.add_argument("--weights", help="skip the uncompressed training: load these weights (as --save wrote them)")
    p.add_argument("--save", help="save the trained uncompressed weights (before any BatchNorm fold) here")
    p.add_argument("--retrain-subset", type=int, help="retrain on a stratified subset of N training images")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of the retraining (default 1e-3)")
    p.add_argument("--prune", type=float, default=0.92, help="sparsity of the large layers (default 0.92)")
    p.add_argument("--layer-sparsity", default="0=0.4", help="per-layer overrides (default 0=0.4: the "
                   "500-weight first conv, Deep Compression kept 66%% of it)")
    p.add_argument("--iterative", type=int, default=3)
    p.add_argument("--share", type=int, default=4, help="codebook bits (default 4)")
    p.add_argument("--retrain-epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--same-budget", action="store_true",
                   help="also train a copy of the uncompressed net for as many epochs as the compression "
                        "retrains, and report the loss against it (the same net trained the same way)")
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    from nas.compress.report import parse_layer_sparsity, print_table
    from nas.compress.model import hand_model
    from nas.compress.pipeline import CompressConfig, compress
    from nas.compress.prune import retrain
    from nas.data import load_dataset

    config = CompressConfig(prune=args.prune, layer_sparsity=parse_layer_sparsity(args.layer_sparsity),
                            iterative=args.iterative, share=args.share, retrain_epochs=args.retrain_epochs,
                            retrain_subset=args.retrain_subset, lr=args.lr, seed=args.seed)
    data = load_dataset(args.dataset, args.data_dir)
    torch.manual_seed(args.seed)
    model = hand_model(args.model, data.in_chs, data.resolution, data.num_classes, args.width)
    start = time.perf_counter()
    if args.weights:
        from nas.weights import read_weights

        state, _ = read_weights(args.weights, "--weights")
        model.load_state_dict(state)
    else:
        retrain(model, data, args.epochs, regularizer="l2", strength=1e-5, seed=args.seed, subset=args.subset,
                label="uncompressed train")
    if args.save:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.save)
    train_s = time.perf_counter() - start
    reference = _same_budget_accuracy(model, data, config, args) if args.same_budget else None
    result = compress(model, data, config)
    result.pop("payload")
    result.update(model=args.model, width=args.width if args.model == "resnet20" else None, train_s=train_s,
                  compress_s=time.perf_counter() - start - train_s,
                  accuracy_loss_points=100 * (result["test_accuracy_before"] - result["test_accuracy_after"]),
                  threads=torch.get_num_threads())
    if reference is not None:
        result.update(test_accuracy_same_budget=reference["accuracy"], same_budget_epochs=reference["epochs"],
                      accuracy_loss_points_same_budget=100 * (reference["accuracy"] - result["test_accuracy_after"]))
    if args.json:
        print(json.dumps(result))
        return 0
    print_table(result)
    print(f"ratio {result['ratio']:.1f}x at {result['accuracy_loss_points']:+.2f} points test accuracy loss "
          f"(train {train_s:.0f} s, compress {result['compress_s']:.0f} s, {torch.get_num_threads()} threads)")
    if reference is not None:
        print(f"uncompressed net trained {reference['epochs']} more epochs (the compression's retraining): test "
              f"accuracy {reference['accuracy']:.4f}; loss against it {result['accuracy_loss_points_same_budget']:+.2f} "
              f"points")
    return 0


def _same_budget_accuracy(model, data, config, args) -> dict:
    """Train a copy of the uncompressed `model` for the epochs the compression will retrain
    (every prune step's and the codebook's), on the same images and learning rate."""
    import copy

    from nas.compress.model import fold_batchnorm_
    from nas.compress.prune import retrain
    from nas.train.evaluate import evaluate

    pruning = config.prune is not None or bool(config.layer_sparsity)
    epochs = config.retrain_epochs * ((config.iterative if pruning else 0) + (config.share is not None))
    twin = copy.deepcopy(model)
    if epochs:
        retrain(twin, data, epochs, lr=config.lr, batch_size=config.batch_size, regularizer=config.regularizer,
                strength=config.strength, seed=config.seed + 1, subset=config.retrain_subset,
                label="uncompressed, same budget")
    return {"epochs": epochs, "accuracy": evaluate(fold_batchnorm_(twin), data.test)}
