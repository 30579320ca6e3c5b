"""Which final recipe: the same arch trained under recipe variants, test accuracy on the
dataset's whole test split (Fashion-MNIST: the 10,000 test images).

    OMP_NUM_THREADS=1 python benchmarks/final_recipe.py [--arch A] [--epochs 4] [--subset 20000]
        [--variants plain,crop,crop+ema,crop+ema+bn] [--seed 0]

Variants (combine with '+'): plain (today's recipe before augmentation: cosine, label
smoothing 0.1), crop (random crop, pad side/8, + flip where the dataset allows it), erase
(random erasing, p 0.25), ema (EMA of the weights, horizon a tenth of the run), bn
(BatchNorm recalibrated on 2,000 unaugmented training images). Prints one line per variant:
validation and test accuracy, wall seconds, images/s.
"""

import argparse
import time

import torch

from nas.blocks.model import build_model
from nas.data import load_dataset
from nas.space import decode
from nas.train.evaluate import evaluate
from nas.train.recipe import default_augment
from nas.train.trainer import train

ARCH = "in_r28_c1-stem_c16_k3_s1_w8_a8-ir_r2_k3_s2_e4_c32_w8_a8-ir_r2_k3_s2_e4_c64_w8_a8-head_c128_w8_a8-fc_n10_w8_a8"


def recipe(variant: str, dataset: str, resolution: int) -> dict:
    parts = set(variant.split("+"))
    unknown = parts - {"plain", "crop", "erase", "ema", "bn"}
    if unknown:
        raise SystemExit(f"--variants: unknown part(s) {sorted(unknown)}; expected plain, crop, erase, ema, bn")
    kw = {}
    if "crop" in parts or "erase" in parts:
        aug = default_augment(dataset, resolution, erasing=0.25 if "erase" in parts else 0.0)
        kw["augment"] = aug if "crop" in parts else type(aug)(pad=0, flip=False, erasing=aug.erasing)
    if "ema" in parts:
        kw["ema_decay"] = "auto"
    if "bn" in parts:
        kw["recalibrate_bn"] = 2000
    return kw


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default=ARCH)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--subset", type=int, default=20000, help="training images (0: the whole training split)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--variants", default="plain,crop,crop+ema,crop+ema+bn")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    arch = decode(args.arch)
    data = load_dataset(args.dataset, split_seed=args.seed, subset=args.subset or None, resolution=arch.resolution)
    print(f"arch {args.arch}\n{args.dataset}: {len(data.train)} training, {len(data.val)} validation, "
          f"{len(data.test)} test images; {args.epochs} epochs, batch {args.batch_size}, "
          f"{torch.get_num_threads()} thread(s)", flush=True)
    for variant in args.variants.split(","):
        torch.manual_seed(args.seed)
        model = build_model(arch)
        start = time.time()
        result = train(model, data, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, progress=False,
                       measure_inference=False, **recipe(variant, data.name, arch.resolution))
        test = evaluate(model, data.test)
        print(f"{variant:>16}: val {result.accuracy:.4f}  test {test:.4f}  {time.time() - start:6.0f} s  "
              f"{result.images_per_s:6.0f} images/s", flush=True)


if __name__ == "__main__":
    main()
