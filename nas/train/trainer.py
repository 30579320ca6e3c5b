"""The trainer for cheap fidelities on CPU or a GPU: subset and epoch budgets, AdamW/SGD with
a cosine schedule, label smoothing, optional distillation, and the seed's five metrics.

`train` is seeded (shuffling, dropout and any other torch randomness inside it come
from `seed`, and the global RNG state is restored afterwards) and, on CPU with a fixed
`torch.get_num_threads()`, gives bit-identical weights for the same inputs. Thread count
is the caller's business (`torch.set_num_threads`). On a GPU (`device`, `nas.measure.device`)
the model and the data live on the device during training, channels-last, optionally under
bf16 autocast (`amp`); the model is handed back on the CPU either way, where the packed
kernels evaluate it.
"""

import io
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from nas import fsio
from nas.errors import UsageError
from nas.train.batches import iterate, subset_of
from nas.measure.device import resolve_device
from nas.train.distill import distillation_loss
from nas.train.evaluate import evaluate, measure_inference_ms
from nas.progress import bar as progress_bar
from nas.train.memory import METHODS, PeakRSS
from nas.train.recipe import Augment, ema_model, recalibrate_batchnorm
from nas.train.sparsify import SearchedCompression

__all__ = ["TrainResult", "TrainingDiverged", "train", "evaluate", "measure_inference_ms", "wants_channels_last",
           "steps_in_epoch", "CHECKPOINT_FORMAT"]

DEFAULT_LR = {"adamw": 5e-3, "sgd": 0.1}  # tuned for short runs: 1 epoch of 5000 FM images, batch 64
DEFAULT_WEIGHT_DECAY = {"adamw": 0.01, "sgd": 5e-4}
GPU_PEAK_METHOD = "torch.cuda.max_memory_allocated (tensors on the GPU)"
RUNG_EMA_HORIZON = 0.2  # `rung_ema`: the average's horizon, as a fraction of the first rung's steps
WARMUP_FRACTION = 0.03  # linear warm-up over the first 3% of steps (binary nets like a gentle start)
CHECKPOINT_FORMAT = "nas-train-checkpoint-1"  # `checkpoint` / `resume`: a run stopped mid-way, to continue


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the search records the trial as FAILED."""

    def __init__(self, epoch: int, step: int, loss: float):
        super().__init__(f"training diverged: loss {loss} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.loss = epoch, step, loss


@dataclass
class TrainResult:
    """One training run. The seed's five metrics: `weight_bytes` (memory footprint, filled
    by the caller from the cost model / export payload), `train_time_s`,
    `infer_ms_per_image`, `peak_train_mem_bytes`, `accuracy` (validation)."""

    accuracy: float  # validation top-1 in [0, 1] after the last step
    train_time_s: float  # wall time of the training loop, per-epoch validation included
    infer_ms_per_image: float | None  # median over repeats, batch 1, eval mode; None if not measured
    peak_train_mem_bytes: int  # see peak_mem_method
    images_per_s: float  # training throughput: images / time in training steps (batch making included)
    epochs: int  # requested
    epochs_completed: float  # fractional when max_seconds stopped mid-epoch
    steps: int
    train_images: int
    subset: int | None
    val_images: int
    seed: int
    batch_size: int
    lr: float
    optimizer: str
    channels_last: bool
    label_smoothing: float
    distilled: bool
    augment: dict | None  # the `Augment` used, or None
    ema_decay: float | None
    recalibrate_bn: int  # training images BatchNorm statistics were recomputed on (0: none)
    train_loss: float  # mean training loss over the last (possibly partial) epoch
    val_history: list = field(default_factory=list)  # (epoch, accuracy) whenever validation ran
    stopped_early: str | None = None  # "max_seconds" when the time budget ended training, or `stop`'s reason
    peak_mem_method: str = ""
    weight_bytes: int | None = None
    device: str = "cpu"  # where it trained
    amp: bool = False  # bf16 autocast was on

    def to_dict(self) -> dict:
        return asdict(self)


def wants_channels_last(model: nn.Module) -> bool:
    """NHWC when the model has grouped / depthwise convs.

    NHWC speeds up depthwise / grouped convs on CPU and slows dense-only nets (measured
    figures: docs/architecture.md, "Lab figures"). A fixed rule, not a timing race, so the
    choice (and so the numerics) is the same on every run.
    """
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules())


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and norm parameters (1-D tensors)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    groups = _param_groups(model, weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    raise ValueError(f"optimizer={name!r}: expected one of {sorted(DEFAULT_LR)}")


def _cosine(total_steps: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up, then cosine from 1 to 0 at `total_steps`."""
    warmup = max(1, int(WARMUP_FRACTION * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def train(model: nn.Module, data, epochs: int, subset: int | None = None, batch_size: int = 64,
          lr: float | None = None, optimizer: str = "adamw", weight_decay: float | None = None,
          label_smoothing: float = 0.1, teacher: nn.Module | None = None, kd_temperature: float = 4.0,
          kd_alpha: float = 0.9, seed: int = 0, channels_last: bool | str = "auto",
          max_seconds: float | None = None, progress: bool = True,
          on_epoch_end: Callable[[int, float], None] | None = None,
          measure_inference: bool = True, weight_bytes: int | None = None,
          val_subset: int | None = None, device="cpu", amp: bool = False,
          augment: Augment | None = None, ema_decay: float | str | None = None,
          recalibrate_bn: int = 0, rung_steps: Sequence[int] = (),
          on_rung: Callable[[int, float], None] | None = None, rung_ema: bool = False,
          stop: Callable[[int], str | None] | None = None, checkpoint: str | Path | None = None,
          resume: str | Path | None = None) -> TrainResult:
    """Train `model` in place on ``data.train`` and score it on ``data.val``.

    data: anything with `train` and `val` datasets (a `nas.data.DataBundle`).
    subset: train on a fixed stratified subset of this many training images.
    val_subset: score on a fixed stratified subset of this many validation images (cheaper
        per-epoch validation for low fidelities); None uses the whole validation split.
    lr / weight_decay: None picks the optimizer's default (`DEFAULT_LR`, `DEFAULT_WEIGHT_DECAY`).
    teacher: a trained model; when given, the loss is Hinton distillation
        ``kd_alpha * T^2 KL(teacher_T || student_T) + (1 - kd_alpha) * CE`` with T = `kd_temperature`.
    channels_last: True / False, or "auto" (`wants_channels_last` on the CPU, always on CUDA).
        The model is returned in the default (contiguous) memory format either way.
    max_seconds: stop after the step that crosses this wall-time budget (`stopped_early`).
    on_epoch_end(epoch, val_accuracy): runs after every *completed* epoch, once that
        epoch's validation accuracy is known; `epoch` counts completed epochs from 1.
        Validation runs every epoch only when this hook is given (otherwise only at the end).
        An exception it raises (e.g. `optuna.TrialPruned`) stops training and propagates.
        It does not run for an epoch cut short by `max_seconds`.
    measure_inference: also time inference (`measure_inference_ms`, batch 1, real image).
    weight_bytes: the caller's memory-footprint figure, copied into the result.
    device: "cpu" (default), "auto", "cuda", "cuda:N" or a `torch.device` (`resolve_device`).
        On CUDA the model (and teacher) and the uint8 images move to the device for the run,
        validation runs there too, and the model is moved back to the CPU before returning.
    amp: bf16 autocast of the forward pass and loss on CUDA; ignored on the CPU.
    augment: per-image random crop / flip / erasing of every training batch (`nas.train.recipe`),
        drawn from its own generator (seed + 1), so the batch order is the same with or without.
    ema_decay: keep an exponential moving average of the weights and end on it; "auto" sets
        the average's horizon to a tenth of the run (decay 1 - 10 / steps, at most 0.9998).
    recalibrate_bn: after training (and the EMA), recompute BatchNorm statistics over this
        many training images, unaugmented (0: keep the running statistics).
    rung_steps / on_rung(step, val_accuracy): score the validation split after each of these
        optimizer steps (counted from 1, mid-epoch allowed) and hand the score to `on_rung`;
        the search's rungs as fractions of one run (`nas.search.config.rung_images`). Like
        `on_epoch_end`, an exception it raises stops training and propagates. Scoring does not
        change the training: the weights are the same with or without rungs.
    rung_ema: score each rung on an exponential moving average of the weights (a horizon of a
        fifth of the first rung's steps, `RUNG_EMA_HORIZON`) instead of that step's weights: a
        shadow copy, the training and its result are unchanged.
    stop(step) -> reason or None: asked after every optimizer step; a reason ends training
        there (`stopped_early` = the reason), like `max_seconds` does with "max_seconds".
    checkpoint: where a run that `stop` or `max_seconds` ends early saves everything it needs to
        go on (weights, optimizer, schedule, averages, the random generators, the position in
        the epoch); nothing is written for a run that completes, or for a model with searched
        sparsity / codebooks (its masks and ties are not saved: such a run restarts).
    resume: a checkpoint written by a run with the same recipe (epochs, batch size, seed,
        training images, optimizer, its settings, EMA, augmentation); training continues from its step and ends with the same weights as
        a run that was never stopped (bit for bit on the CPU at the same thread count). Rungs
        at or before that step are not scored again.

    A model with searched sparsity / codebook layers (arch keys ``p`` / ``cb``) is pruned and
    shared over the run's steps (`nas.train.sparsify`) and handed back in exactly the state
    the payload prices; the EMA is then off (`ema_decay` None in the result).

    Raises `TrainingDiverged` when the loss is NaN or infinite.
    """
    if epochs < 1:
        raise ValueError(f"epochs={epochs!r}: expected >= 1")
    if optimizer not in DEFAULT_LR:
        raise ValueError(f"optimizer={optimizer!r}: expected one of {sorted(DEFAULT_LR)}")
    dev = resolve_device(device, "device")
    on_gpu = dev.type == "cuda"
    train_set = subset_of(data.train, subset)
    val_set = cpu_val_set = subset_of(data.val, val_subset)
    lr = DEFAULT_LR[optimizer] if lr is None else lr
    weight_decay = DEFAULT_WEIGHT_DECAY[optimizer] if weight_decay is None else weight_decay
    if channels_last == "auto":
        use_cl = on_gpu or wants_channels_last(model)
    else:
        use_cl = bool(channels_last)
    steps_per_epoch = steps_in_epoch(len(train_set), batch_size)
    total_steps = epochs * steps_per_epoch
    compression = SearchedCompression(model, total_steps)  # searched sparsity / codebooks (`nas.train.sparsify`)
    if compression:  # an average of masked / tied weights is neither: the schedule's own weights are kept
        ema_decay = None
    if ema_decay == "auto":
        ema_decay = min(0.9998, max(0.5, 1.0 - 10.0 / total_steps))
    if teacher is not None:
        teacher.eval()
    use_amp = bool(amp) and on_gpu

    with torch.random.fork_rng(devices=[dev.index or 0] if on_gpu else []):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        if on_gpu:  # model, teacher and the uint8 images on the device for the whole run
            model.to(dev)
            if teacher is not None:
                teacher.to(dev)
            train_set, val_set = _on_device(train_set, dev), _on_device(val_set, dev)
            torch.cuda.reset_peak_memory_stats(dev)
        augment_generator = torch.Generator().manual_seed(seed + 1)
        fill = _black_pixel(train_set) if augment is not None else None
        if use_cl:
            model.to(memory_format=torch.channels_last)
            if teacher is not None:
                teacher.to(memory_format=torch.channels_last)
        opt = _make_optimizer(model, optimizer, lr, weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, _cosine(total_steps))
        ema = ema_model(model, ema_decay) if ema_decay is not None else None
        rung_shadow = None
        if rung_ema and on_rung is not None and rung_steps:
            horizon = max(1.0, min(rung_steps) * RUNG_EMA_HORIZON)
            rung_shadow = ema_model(model, min(0.9998, max(0.5, 1.0 - 1.0 / horizon)))
        bar = progress_bar(total_steps, "train", "step", enabled=progress, line_every=steps_per_epoch, leave=False)
        step = 0
        rungs = set(rung_steps)
        step_time = 0.0
        images = 0
        val_history = []
        stopped = None
        first_epoch, skip = 1, 0  # where a resumed run picks up: its epoch, and the batches of it already done
        recipe = {"epochs": epochs, "batch_size": batch_size, "seed": seed, "train_images": len(train_set),
                  "optimizer": optimizer, "lr": lr, "weight_decay": weight_decay, "label_smoothing": label_smoothing,
                  "ema_decay": ema_decay, "augment": None if augment is None else asdict(augment),
                  "rung_ema": rung_shadow is not None}
        if resume is not None:
            saved = _load_checkpoint(resume, recipe)
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            for average, key in ((ema, "ema"), (rung_shadow, "rung_shadow")):
                if average is not None and saved[key] is not None:
                    average.load_state_dict(saved[key])
            torch.set_rng_state(saved["torch_rng"])
            if on_gpu and saved["cuda_rng"] is not None:
                torch.cuda.set_rng_state(saved["cuda_rng"], dev)
            augment_generator.set_state(saved["augment_rng"])
            generator.set_state(saved["epoch_rng"])
            step, images, val_history = saved["step"], saved["images"], list(saved["val_history"])
            first_epoch, skip = saved["epoch"], saved["batch"]
            bar.update(step)
        loss_sum, loss_n = 0.0, 0
        model.train()
        start = time.perf_counter()
        try:
            with PeakRSS() as mem:
                for epoch in range(first_epoch, epochs + 1):
                    loss_sum, loss_n = 0.0, 0
                    epoch_rng = generator.get_state()  # the epoch's order, for a checkpoint
                    batch = skip if epoch == first_epoch else 0  # batches of this epoch done
                    batches = iterate(train_set, batch_size, generator, channels_last=use_cl, skip=batch)
                    mark = time.perf_counter()  # step time includes making the batch
                    for x, y in batches:
                        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)  # no-op on the CPU
                        if augment is not None:
                            x = augment(x, fill, augment_generator)
                            if use_cl:
                                x = x.contiguous(memory_format=torch.channels_last)
                        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                            loss = _loss(model, teacher, x, y, label_smoothing, kd_temperature, kd_alpha)
                        value = loss.item()
                        if not math.isfinite(value):
                            raise TrainingDiverged(epoch, step, value)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        schedule.step()
                        if ema is not None:
                            ema.update_parameters(model)
                        if rung_shadow is not None:
                            rung_shadow.update_parameters(model)
                        now = time.perf_counter()
                        step_time, mark = step_time + now - mark, now
                        step += 1
                        batch += 1
                        compression.step(step, opt)
                        images += len(y)
                        loss_sum, loss_n = loss_sum + value * len(y), loss_n + len(y)
                        bar.update(1)
                        bar.set_postfix(epoch=epoch, loss=f"{value:.3f}", refresh=False)
                        if on_rung is not None and step in rungs:
                            scored = model if rung_shadow is None else rung_shadow.module
                            acc = evaluate(scored, val_set, channels_last=use_cl)
                            val_history.append((step / steps_per_epoch, acc))
                            on_rung(step, acc)
                        if max_seconds is not None and time.perf_counter() - start > max_seconds:
                            stopped = "max_seconds"
                            break
                        if stop is not None and (stopped := stop(step)) is not None:
                            break
                    if stopped is not None:
                        if checkpoint is not None and not compression:
                            _save_checkpoint(checkpoint, recipe, {
                                "step": step, "epoch": epoch, "batch": batch, "images": images,
                                "val_history": val_history, "model": model.state_dict(),
                                "optimizer": opt.state_dict(), "schedule": schedule.state_dict(),
                                "ema": None if ema is None else ema.state_dict(),
                                "rung_shadow": None if rung_shadow is None else rung_shadow.state_dict(),
                                "torch_rng": torch.get_rng_state(), "augment_rng": augment_generator.get_state(),
                                "cuda_rng": torch.cuda.get_rng_state(dev) if on_gpu else None,
                                "epoch_rng": epoch_rng})
                        break
                    if on_epoch_end is not None:
                        acc = evaluate(model, val_set, channels_last=use_cl)
                        val_history.append((epoch, acc))
                        bar.set_postfix(epoch=epoch, val_acc=f"{acc:.4f}")
                        on_epoch_end(epoch, acc)
            if compression:
                compression.finish()  # the exact pruned / shared weights the payload holds (the same values
                # as the last step's when the run completed; a run cut short is scored again below)
            if ema is not None:
                model.load_state_dict(ema.module.state_dict())
            if recalibrate_bn:
                recalibrate_batchnorm(model, iterate(subset_of(train_set, recalibrate_bn), batch_size,
                                                     channels_last=use_cl))
            train_time = time.perf_counter() - start
            if ema is None and not recalibrate_bn and val_history and val_history[-1][0] == step / steps_per_epoch:
                accuracy = val_history[-1][1]
            else:
                accuracy = evaluate(model, val_set, channels_last=use_cl)
                val_history.append((step / steps_per_epoch, accuracy))
            peak_mem, peak_method = mem.peak_bytes, METHODS[mem.method]
            if on_gpu:
                peak_mem, peak_method = torch.cuda.max_memory_allocated(dev), GPU_PEAK_METHOD
        finally:
            bar.close()
            if use_cl:
                model.to(memory_format=torch.contiguous_format)
                if teacher is not None:
                    teacher.to(memory_format=torch.contiguous_format)
            if on_gpu:  # handed back on the CPU, where export and the packed kernels take it
                model.to("cpu")
                if teacher is not None:
                    teacher.to("cpu")
        infer_ms = None
        if measure_inference:  # on the CPU (the deployment path), in the memory format it trained in
            example, _ = next(iterate(cpu_val_set, 1))
            if use_cl:
                model.to(memory_format=torch.channels_last)
            try:
                infer_ms = measure_inference_ms(model, example, channels_last=use_cl)
            finally:
                model.to(memory_format=torch.contiguous_format)

    return TrainResult(
        accuracy=accuracy, train_time_s=train_time, infer_ms_per_image=infer_ms,
        peak_train_mem_bytes=peak_mem, images_per_s=images / step_time if step_time else 0.0,
        epochs=epochs, epochs_completed=step / steps_per_epoch, steps=step, train_images=len(train_set),
        subset=subset, val_images=len(val_set), seed=seed, batch_size=batch_size, lr=lr, optimizer=optimizer,
        channels_last=use_cl, label_smoothing=label_smoothing, distilled=teacher is not None,
        augment=None if augment is None else asdict(augment), ema_decay=ema_decay, recalibrate_bn=recalibrate_bn,
        train_loss=loss_sum / loss_n if loss_n else float("nan"), val_history=val_history,
        stopped_early=stopped, peak_mem_method=peak_method, weight_bytes=weight_bytes, device=str(dev),
        amp=use_amp,
    )


def _on_device(dataset, device):
    """`dataset` held on `device` when it can be (`ImageDataset.to`); others are moved per batch."""
    return dataset.to(device) if hasattr(dataset, "to") and hasattr(dataset, "images") else dataset


def _black_pixel(dataset) -> torch.Tensor:
    """A black pixel after the dataset's normalisation ((0 - mean) / std per channel; 0 where
    the dataset states no normalisation)."""
    mean, std = getattr(dataset, "mean", None), getattr(dataset, "std", None)
    if mean is None or std is None:
        return torch.zeros(1)
    return -torch.as_tensor(mean, dtype=torch.float32) / torch.as_tensor(std, dtype=torch.float32)


def _loss(model, teacher, x, y, label_smoothing: float, temperature: float, alpha: float) -> torch.Tensor:
    """Cross-entropy with label smoothing, or Hinton distillation when a teacher is given."""
    logits = model(x)
    if teacher is None:
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    with torch.no_grad():
        teacher_logits = teacher(x)
    return distillation_loss(logits, teacher_logits, y, temperature, alpha, label_smoothing)


def _save_checkpoint(path, recipe: dict, state: dict) -> None:
    """`state` and the recipe it belongs to, written atomically (`nas.fsio`). A checkpoint is
    an optimisation (without one the run restarts and ends the same), so a disk that refuses it
    is a note on stderr, not an error."""
    buffer = io.BytesIO()  # serialised in memory: a full disk is then an OSError of our write, which
    torch.save({"format": CHECKPOINT_FORMAT, "recipe": recipe, **state}, buffer)  # torch reports otherwise
    try:
        fsio.write_bytes(path, buffer.getvalue())
    except fsio.WriteError as e:
        print(f"nas: note: no checkpoint: {e}; the run can only be restarted", file=sys.stderr)


def _load_checkpoint(path, recipe: dict) -> dict:
    """A checkpoint of this very recipe, or one line saying what does not match."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as e:  # torch raises RuntimeError / EOFError on torn files
        raise UsageError(f"resume={str(path)!r}: cannot read it ({type(e).__name__}: {str(e)[:80]}); expected a "
                         f"checkpoint that `train(checkpoint=...)` wrote") from None
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"resume={str(path)!r}: not a {CHECKPOINT_FORMAT} checkpoint")
    if saved["recipe"] != recipe:
        diff = {k: (saved["recipe"].get(k), v) for k, v in recipe.items() if saved["recipe"].get(k) != v}
        raise UsageError(f"resume={str(path)!r}: written by another recipe ({diff}: saved, asked); expected the "
                         f"recipe of the run that wrote it")
    return saved


def steps_in_epoch(n: int, batch_size: int) -> int:
    """Batches per epoch as `iterate` yields them when shuffling (a last batch of 1 is dropped)."""
    if n == 0:
        raise ValueError("train: the training set is empty; expected at least one image")
    full, rest = divmod(n, batch_size)
    return full + (1 if rest > 1 or (rest == 1 and n == 1) else 0)
