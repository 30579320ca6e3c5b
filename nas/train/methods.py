"""The seed's training methods as options of a training run (issue 19 item 3; the
switches themselves: `nas.quant.methods`).

`Methods()` (all defaults) is today's training, untouched: `train_with_methods` then calls
`nas.train.trainer.train` once with the same arguments, and the model is trained bit for bit
as before.

- ``two_stage=F`` (0 < F < 1): Bi-Real's two-stage recipe (seed 003 §3; survey 000 ch. 2
  sec. 2, item 4). Stage 1 trains F · epochs epochs (rounded, halves up) with every 1-bit input site computing
  Clip(-1, x, 1) and every 1-bit layer using its float weight; stage 2 binarizes and trains
  the remaining epochs from the weights (and BatchNorm statistics, PACT clips) stage 1
  reached. Each stage is one `train` call: its own optimizer, warm-up and cosine schedule,
  as in the paper, where a real-valued net is trained first and then binarized. Stage 1
  gets the run's augmentation and teacher; the EMA, BatchNorm recalibration, inference
  timing and `on_epoch_end` belong to stage 2, whose result is the run's.
  8-bit stems and classifiers stay 8-bit in both stages (only the 1-bit parts are relaxed).
- ``sign_gradient="htanh"``: BNN's hard-tanh straight-through estimator for 1-bit
  activations instead of Bi-Real's ApproxSign.
- ``act_quant="dorefa"``: DoReFa activations at 2..8 bits (clip at 1, not learned) instead
  of PACT's learned clip.
- ``grad_bits=k``: DoReFa's k-bit stochastic gradient quantization at every quantized layer's
  output (the hooks are removed when training ends).
- ``weight_quant="lqnet"``: LQ-Net's learned quantizers on the 2..8-bit weight layers
  (`nas.quant.lqnet`): levels v^T e, e in {-1, +1}^K, one basis v per output channel,
  fitted by the alternating least-squares step at every training forward, STE gradient.
  They stay on the model after training (its scores are theirs); the payload stores
  DoReFa codes, so such a model has no export (`nas train` refuses `--save` with it).
- ``weight_grad="metaquant"``: MetaQuant (`nas.train.metaquant`): a shared meta network
  gives the 1..8-bit layers' weight gradients in place of the STE, trained jointly; its
  hooks are removed when training ends, the weights export as usual. Not with ``lqnet``
  (MetaQuant's preprocessing and quantizer are BWN's and DoReFa's, eqs. 2-32 .. 2-35).
"""

import time
from dataclasses import asdict, dataclass

from torch import nn

from nas.errors import UsageError
from nas.quant.lqnet import use_lqnet
from nas.quant.methods import (GRAD_BITS, SIGN_GRADIENTS, fix_activation_clips, quantize_gradients,
                               real_valued_stage, set_sign_gradient)
from nas.train.metaquant import MetaQuant
from nas.train.trainer import TrainResult, train

ACT_QUANTIZERS = ("pact", "dorefa")
WEIGHT_QUANTIZERS = ("dorefa", "lqnet")
WEIGHT_GRADIENTS = ("ste", "metaquant")
STAGE2_ONLY = ("ema_decay", "recalibrate_bn", "on_epoch_end", "measure_inference", "weight_bytes")


@dataclass(frozen=True)
class Methods:
    two_stage: float = 0.0  # fraction of the epochs in Bi-Real's real-valued stage 1 (0: one stage)
    sign_gradient: str = "approxsign"  # or "htanh"
    act_quant: str = "pact"  # or "dorefa"
    grad_bits: int | None = None  # DoReFa gradient bits (None: float gradients)
    weight_quant: str = "dorefa"  # or "lqnet": LQ-Net's learned levels on 2..8-bit weights
    weight_grad: str = "ste"  # or "metaquant": a meta network's weight gradients

    def __post_init__(self):
        if isinstance(self.two_stage, bool) or not 0.0 <= self.two_stage < 1.0:
            raise UsageError(f"two_stage={self.two_stage!r}: expected a fraction of the epochs, 0 <= F < 1 "
                             f"(0: one stage)")
        for name, allowed in (("sign_gradient", sorted(SIGN_GRADIENTS)), ("act_quant", list(ACT_QUANTIZERS)),
                              ("weight_quant", list(WEIGHT_QUANTIZERS)), ("weight_grad", list(WEIGHT_GRADIENTS))):
            if getattr(self, name) not in allowed:
                raise UsageError(f"{name}={getattr(self, name)!r}: expected one of {allowed}")
        if self.grad_bits is not None and (isinstance(self.grad_bits, bool) or self.grad_bits not in GRAD_BITS):
            raise UsageError(f"grad_bits={self.grad_bits!r}: expected a whole number from {GRAD_BITS[0]} "
                             f"to {GRAD_BITS[-1]}")
        if self.weight_quant == "lqnet" and self.weight_grad == "metaquant":
            raise UsageError("weight_grad='metaquant' with weight_quant='lqnet': expected one of the two "
                             "(MetaQuant's quantizers are BWN's and DoReFa's, eqs. 2-32 .. 2-35)")

    def is_default(self) -> bool:
        return self == Methods()

    def to_dict(self) -> dict:
        return asdict(self)


def stage_epochs(epochs: int, fraction: float, where: str = "two_stage") -> tuple[int, int]:
    """(stage-1 epochs, stage-2 epochs): floor(F · epochs + 1/2) real-valued, the rest binary;
    each stage needs at least one epoch."""
    first = int(fraction * epochs + 0.5)
    if not 1 <= first <= epochs - 1:
        raise UsageError(f"{where} {fraction:g} of {epochs} epochs gives {first} real-valued and "
                         f"{epochs - first} binary epochs; expected at least one of each (more epochs, "
                         f"or F between {0.5 / epochs:.3g} and {1 - 0.5 / epochs:.3g})")
    return first, epochs - first


def train_with_methods(model: nn.Module, data, epochs: int, methods: Methods = Methods(),
                       **kwargs) -> tuple[TrainResult, dict]:
    """`train(model, data, epochs, **kwargs)` with `methods` applied; returns stage 2's (the
    only stage's) `TrainResult` and a record of the methods (stage 1's figures included)."""
    record = methods.to_dict()
    if methods.is_default():
        return train(model, data, epochs, **kwargs), record
    first = stage_epochs(epochs, methods.two_stage)[0] if methods.two_stage else 0
    record["binary_act_sites"] = set_sign_gradient(model, methods.sign_gradient)
    if methods.act_quant == "dorefa":
        record["fixed_clips"] = fix_activation_clips(model)
    hooks = quantize_gradients(model, methods.grad_bits) if methods.grad_bits is not None else []
    if methods.weight_quant == "lqnet":
        record["lqnet_layers"] = use_lqnet(model)
    meta = MetaQuant(model, seed=kwargs.get("seed", 0)) if methods.weight_grad == "metaquant" else None
    if meta is not None:
        record["metaquant_layers"] = len(meta.layers)
        record["metaquant_params"] = sum(p.numel() for p in meta.meta.parameters())
    try:
        if first:
            stage1 = {k: v for k, v in kwargs.items() if k not in STAGE2_ONLY}
            start = time.perf_counter()
            with real_valued_stage(model) as (sites, layers):
                result1 = train(model, data, first, measure_inference=False, **stage1)
            record.update(stage1_epochs=first, stage1_accuracy=result1.accuracy,
                          stage1_train_time_s=result1.train_time_s, stage1_relaxed_sites=sites,
                          stage1_relaxed_layers=layers)
            if kwargs.get("max_seconds") is not None:
                kwargs = {**kwargs, "max_seconds": max(1.0, kwargs["max_seconds"] - (time.perf_counter() - start))}
        result = train(model, data, epochs - first, **kwargs)
    finally:
        for h in hooks:
            h.remove()
        if meta is not None:
            meta.remove()
            record["metaquant_steps"] = meta.steps
    return result, record
