"""Deep Compression's order on a trained float model: prune -> retrain -> share -> fine-tune -> pack.

Or, instead of prune / share, post-training affine quantization (`nas.compress.ptq`) to the
int8 record of `nas.cost.layout`. Every stage is optional; the payload is written by
`nas.compress.payload` and must equal the bytes `nas.cost.layout` predicted for it.
"""

import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from nas.compress import prune as P
from nas.compress.payload import encode_model, model_plan
from nas.compress.ptq import PTQConfig, apply_ptq
from nas.compress.share import check_share_bits, share_weights_
from nas.cost import layout
from nas.errors import UsageError


@dataclass(frozen=True)
class CompressConfig:
    prune: float | None = None  # sparsity per layer (share of weights, or of channels if structured)
    layer_sparsity: dict = field(default_factory=dict)  # layer index -> sparsity override
    structured: bool = False
    iterative: int = 1  # prune steps (Zhu & Gupta's cubic schedule); 1 = one-shot
    retrain_epochs: int = 1  # after each prune step, and for the centroid fine-tuning
    retrain_subset: int | None = None  # retrain on a fixed stratified subset of this many training images
    regularizer: str | None = "l2"  # l1 | l2 | None while retraining the pruned net
    strength: float = 1e-5
    share: int | None = None  # codebook bits
    share_method: str = "kmeans"  # kmeans | gmm
    pq: tuple[int, int] | None = None  # (d, k): product quantization instead of scalar sharing
    ptq: PTQConfig | None = None
    calib_images: int = 256
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        if self.prune is not None:
            P.check_sparsity(self.prune)
        for i, s in self.layer_sparsity.items():
            P.check_sparsity(s, f"--layer-sparsity {i}=")
        if self.share is not None:
            check_share_bits(self.share)
        P.schedule(self.iterative)
        if self.regularizer not in ("l1", "l2", None):
            raise UsageError(f"--regularizer {self.regularizer!r}: expected l1, l2 or none")
        if self.ptq is not None and (self.prune is not None or self.share is not None):
            raise UsageError("--ptq with --prune / --share: expected one of the two paths (the int8 record "
                             "has no sparse or codebook form)")
        if self.ptq is not None and self.calib_images < self.batch_size:
            raise UsageError(f"--calib-images {self.calib_images}: the calibration set is smaller than one batch "
                             f"({self.batch_size}); expected >= {self.batch_size}")
        if self.pq is not None and (self.share is not None or self.prune is not None or self.ptq is not None):
            raise UsageError("--pq with --prune / --share / --ptq: expected --pq alone (a product-quantized "
                             "layer has neither zeros nor a scalar codebook)")
        if self.retrain_epochs < 0:
            raise UsageError(f"--retrain-epochs {self.retrain_epochs}: expected >= 0")
        if self.retrain_subset is not None and self.retrain_subset < self.batch_size:
            raise UsageError(f"--retrain-subset {self.retrain_subset}: expected at least one batch "
                             f"({self.batch_size} images)")


def fp32_weight_bytes(model: nn.Module) -> int:
    """The uncompressed payload: `nas.cost.layout`'s 32-bit record of every layer."""
    total = 0
    for _, m in P.layers_of(model):
        w = m.weight
        total += layout.layer_bytes(32, w.shape[0], *w.shape[1:]) if w.dim() == 4 else \
            layout.layer_bytes(32, w.shape[0], w.shape[1])
    return total


def ptq_weight_bytes(model: nn.Module, static: bool) -> int:
    """int8 records (codes + float32 scale + bias) plus each static site's (scale, zero point)."""
    total = 0
    for _, m in P.layers_of(model):
        w = m.weight
        total += layout.layer_bytes(8, w.shape[0], *w.shape[1:]) + layout.affine_act_bytes(static)
    return total


def calibration_images(data, n: int, batch_size: int) -> torch.Tensor:
    from nas.train.batches import iterate, subset_of

    if n > len(data.train):
        raise UsageError(f"--calib-images {n}: expected at most {len(data.train)} (the training split)")
    return torch.cat([x for x, _ in iterate(subset_of(data.train, n), batch_size)])


def compress(model: nn.Module, data, config: CompressConfig, log=None) -> dict:
    """Compress `model` in place; return the payload bytes, the per-layer table and the figures.

    A model with BatchNorms (`--model resnet20`) is pruned and retrained with them, so the
    retraining keeps its normalisation; they are folded into the convs once the masks are
    permanent (folding scales each output channel: zeros stay zeros), before sharing, pq or
    PTQ, which work on the layers' final weights.
    """
    from nas.compress.model import fold_batchnorm_
    from nas.train.evaluate import evaluate

    log = sys.stderr if log is None else log
    pruning = config.prune is not None or bool(config.layer_sparsity)
    if not pruning:
        fold_batchnorm_(model)  # a no-op on a net without BatchNorm
    before = evaluate(model, data.test)
    fp32 = fp32_weight_bytes(model)
    print(f"uncompressed: test accuracy {before:.4f}, fp32 weight_bytes {fp32}", file=log, flush=True)
    out = {"fp32_weight_bytes": fp32, "test_accuracy_before": before}

    if config.ptq is not None:
        calib = calibration_images(data, config.calib_images, config.batch_size)
        rows = apply_ptq(model, calib, config.ptq)
        from nas.compress.payload import encode_ptq

        predicted = ptq_weight_bytes(model, config.ptq.mode == "static")
        payload = encode_ptq(model)
        if len(payload) != predicted:
            raise AssertionError(f"int8 payload {len(payload)} bytes != predicted {predicted}")
        after = evaluate(model, data.test)
        return {**out, "test_accuracy_after": after, "weight_bytes": predicted, "payload_bytes": len(payload),
                "layers": rows, "ratio": fp32 / predicted, "payload": payload}

    retrain = dict(lr=config.lr, batch_size=config.batch_size, seed=config.seed, subset=config.retrain_subset,
                   log=log)
    if pruning:
        sparsity = config.prune or 0.0
        conn = P.connections(model)
        for step, frac in enumerate(P.schedule(config.iterative), 1):
            if config.structured:
                P.prune_structured_(model, sparsity, config.layer_sparsity, frac)
            else:
                P.prune_unstructured_(model, sparsity, config.layer_sparsity, frac)
            for name, old, new in P.rescale_dropout_(model, conn):
                print(f"prune step {step}: dropout {name} {old:.3f} -> {new:.3f} (D_o sqrt(C_ir / C_io))",
                      file=log)
            if config.retrain_epochs:
                P.retrain(model, data, config.retrain_epochs, regularizer=config.regularizer,
                          strength=config.strength, label=f"prune step {step}/{config.iterative} retrain", **retrain)
        P.make_permanent_(model)
        fold_batchnorm_(model)
        if P.is_chain(model):
            if config.structured:
                out["channels_removed"] = P.remove_pruned_channels_(model)
            out["dead_neurons_removed"] = P.remove_dead_neurons_(model)
        out["test_accuracy_pruned"] = evaluate(model, data.test)
    if config.share is not None:
        share_weights_(model, config.share, config.share_method, pruned=config.prune is not None, seed=config.seed)
        out["test_accuracy_shared_before_finetune"] = evaluate(model, data.test)
        if config.retrain_epochs:
            P.retrain(model, data, config.retrain_epochs, regularizer=None, label="codebook fine-tune", **retrain)
    if config.pq is not None:
        import copy

        from nas.compress.pq import pq_weights_

        teacher = copy.deepcopy(model).eval()
        pq_weights_(model, *config.pq, seed=config.seed)
        out["test_accuracy_pq_before_finetune"] = evaluate(model, data.test)
        if config.retrain_epochs:
            P.retrain(model, data, config.retrain_epochs, regularizer=None, teacher=teacher,
                      label="pq fine-tune (distilled)", **retrain)
    plans = model_plan(model)
    predicted = sum(p.record_bytes for p in plans)
    payload, _ = encode_model(model)
    if len(payload) != predicted:
        raise AssertionError(f"payload {len(payload)} bytes != predicted {predicted}")
    after = evaluate(model, data.test)
    return {**out, "test_accuracy_after": after, "weight_bytes": predicted, "payload_bytes": len(payload),
            "ratio": fp32 / predicted, "layers": [p.to_dict() for p in plans], "payload": payload}
