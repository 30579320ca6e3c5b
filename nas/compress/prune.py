"""Pruning (seed 002 sec. 1.1; Han et al. 2015): train -> prune below a threshold -> retrain.

- Unstructured: per layer, the `sparsity` share of weights with the smallest magnitude are
  masked (`torch.nn.utils.prune.l1_unstructured`; the mask keeps gradients of pruned weights
  at zero while retraining, so pruned connections stay pruned).
- Structured: whole output channels with the smallest L2 norm (`prune.ln_structured`, dim 0).
  torch.nn.utils.prune only masks, it never changes a shape, so `remove_channels_` does the
  removal itself: the zero channels leave the layer (weight rows, bias) and the input
  channels that read them leave the next layer. That needs a plain chain of layers (an
  `nn.Sequential` such as LeNet); a network with branches is refused.
- Iterative: prune -> retrain -> prune ... with the cubic schedule of Zhu & Gupta (2017),
  s_t = s (1 - (1 - t / N)^3), t = 1..N, each step's count rounded to a whole weight.
- Regularization while retraining: L1 (lambda sum |w|) or L2 (lambda sum w^2); seed 002
  recommends L2.
- Dropout on retraining (seed 002: "retraining dropout은 더 작아져야"): Han et al. 2015,
  eq. 2, D_r = D_o sqrt(C_ir / C_io), C_i the connections of the layer the dropout feeds.
- Neurons with no outputs (every weight of the next layer reading them is zero) are removed
  from chains (seed 002 "Pruning Neurons"): exact, they feed nothing.
"""

import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from nas.errors import UsageError

CHAIN_LEAVES = (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.Dropout)


def check_sparsity(sparsity: float, where: str = "--prune") -> float:
    if not (isinstance(sparsity, (int, float)) and 0 <= sparsity < 1):
        raise UsageError(f"{where} {sparsity!r}: expected a sparsity 0 <= s < 1 (share of weights removed)")
    return float(sparsity)


def layers_of(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every conv / linear (QuantConv2d and QuantLinear are subclasses), in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def schedule(steps: int) -> list[float]:
    """Zhu & Gupta's cubic schedule: the share of the final sparsity reached after each step."""
    if not isinstance(steps, int) or steps < 1:
        raise UsageError(f"--iterative {steps!r}: expected a whole number of prune steps >= 1")
    return [1 - (1 - t / steps) ** 3 for t in range(1, steps + 1)]


def _pruned_count(m: nn.Module) -> int:
    mask = getattr(m, "weight_mask", None)
    return 0 if mask is None else int((mask == 0).sum())


def prune_unstructured_(model: nn.Module, sparsity: float, per_layer: dict[int, float] | None = None,
                        fraction: float = 1.0) -> None:
    """Mask each layer up to its sparsity (the smallest |w| first).

    per_layer: layer index (execution order) -> sparsity, overriding `sparsity`.
    fraction: this step's share of the final sparsity (the iterative schedule's s_t / s).
    """
    for i, (name, m) in enumerate(layers_of(model)):
        target = (per_layer or {}).get(i, sparsity) * fraction
        n = m.weight.numel()
        more = round(target * n) - _pruned_count(m)  # only the unpruned slots are ranked again
        if more > 0:
            prune.l1_unstructured(m, "weight", amount=more)


def prune_structured_(model: nn.Module, sparsity: float, per_layer: dict[int, float] | None = None,
                      fraction: float = 1.0) -> None:
    """Mask each layer's share of output channels (smallest L2 norm); the classifier is kept."""
    layers = layers_of(model)
    for i, (name, m) in enumerate(layers[:-1]):
        sparsity_i = (per_layer or {}).get(i, sparsity) * fraction
        c = m.weight.shape[0]
        already = 0 if getattr(m, "weight_mask", None) is None else \
            int((m.weight_mask.reshape(c, -1).sum(1) == 0).sum())
        more = min(round(sparsity_i * c), c - 1) - already  # never a layer of zero channels
        if more > 0:
            prune.ln_structured(m, "weight", amount=more, n=2, dim=0)


def make_permanent_(model: nn.Module) -> None:
    """Fold the masks into the weights (`prune.remove`), so the model is plain again."""
    for _, m in layers_of(model):
        if prune.is_pruned(m) and hasattr(m, "weight_mask"):
            prune.remove(m, "weight")


def retrain_dropout(p_original: float, connections_original: int, connections_now: int) -> float:
    """Han et al. 2015, eq. 2: D_r = D_o sqrt(C_ir / C_io)."""
    return p_original * math.sqrt(connections_now / connections_original)


def rescale_dropout_(model: nn.Module, connections_before: dict[str, int]) -> list[tuple[str, float, float]]:
    """Set every dropout in a chain by eq. 2 from the layer it feeds; return (name, old, new)."""
    changes, modules = [], list(model.named_modules())
    for i, (name, m) in enumerate(modules):
        if not isinstance(m, nn.Dropout):
            continue
        nxt = next(((n, l) for n, l in modules[i + 1:] if isinstance(l, (nn.Conv2d, nn.Linear))), None)
        if nxt is None:
            continue
        n_name, layer = nxt
        now = int((layer.weight != 0).sum())
        if not hasattr(m, "p_original"):  # D_o: the rate the dense net trained with, kept across steps
            m.p_original = m.p
        new = retrain_dropout(m.p_original, connections_before[n_name], now)
        changes.append((name, m.p, new))
        m.p = new
    return changes


def connections(model: nn.Module) -> dict[str, int]:
    return {n: int((m.weight != 0).sum()) for n, m in layers_of(model)}


def regularization(model: nn.Module, kind: str | None, strength: float) -> torch.Tensor:
    if kind is None or strength == 0:
        return torch.zeros(())
    terms = [(m.weight.abs().sum() if kind == "l1" else m.weight.pow(2).sum()) for _, m in layers_of(model)]
    return strength * torch.stack(terms).sum()


def is_chain(model: nn.Module) -> bool:
    return isinstance(model, nn.Sequential) and all(isinstance(m, CHAIN_LEAVES) for m in model)


def _chain_pairs(model: nn.Sequential):
    """(producer, consumer) pairs of consecutive conv / linear layers in a chain."""
    layers = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    return list(zip(layers, layers[1:]))


@torch.no_grad()
def remove_channels_(model: nn.Module, keep_fn) -> list[int]:
    """Remove from each producer the output channels `keep_fn(producer, consumer)` rejects,
    and the consumer's input channels that read them. Masks must be permanent. Returns the
    channels removed per producer."""
    if not is_chain(model):
        raise UsageError(f"channel removal: {type(model).__name__} is not a plain nn.Sequential chain of "
                         f"conv / linear / relu / pool / flatten / dropout; expected one (structured pruning "
                         f"and neuron removal need the consumer of every channel)")
    removed = []
    for prod, cons in _chain_pairs(model):
        keep = keep_fn(prod, cons)
        c = prod.weight.shape[0]
        removed.append(int(c - keep.sum()))
        if keep.all():
            continue
        idx = keep.nonzero().flatten()
        prod.weight = nn.Parameter(prod.weight[idx].clone())
        if prod.bias is not None:
            prod.bias = nn.Parameter(prod.bias[idx].clone())
        if isinstance(prod, nn.Conv2d):
            prod.out_channels = len(idx)
        else:
            prod.out_features = len(idx)
        if isinstance(cons, nn.Conv2d):
            cons.weight = nn.Parameter(cons.weight[:, idx].clone())
            cons.in_channels = len(idx)
        else:  # a linear after Flatten reads each channel's `spatial` features in a row
            spatial = cons.in_features // c
            feat = (idx[:, None] * spatial + torch.arange(spatial)).flatten()
            cons.weight = nn.Parameter(cons.weight[:, feat].clone())
            cons.in_features = len(feat)
    return removed


def _out_reads(prod: nn.Module, cons: nn.Module) -> torch.Tensor:
    """(C_prod,) non-zero weights of `cons` reading each output channel of `prod`."""
    c = prod.weight.shape[0]
    w = cons.weight
    if isinstance(cons, nn.Conv2d):
        return (w != 0).transpose(0, 1).reshape(c, -1).sum(1)
    return (w != 0).reshape(w.shape[0], c, -1).transpose(0, 1).reshape(c, -1).sum(1)


def remove_dead_neurons_(model: nn.Module) -> list[int]:
    """Drop channels nothing reads (exact) and, after structured pruning, channels with no inputs."""
    def keep(prod, cons):
        has_out = _out_reads(prod, cons) > 0
        has_in = (prod.weight != 0).reshape(prod.weight.shape[0], -1).sum(1) > 0
        # a no-input channel still outputs act(bias): it goes only when its bias is zero too
        bias_zero = torch.zeros_like(has_in) if prod.bias is None else prod.bias == 0
        return has_out & (has_in | ~bias_zero)
    return remove_channels_(model, keep)


def remove_pruned_channels_(model: nn.Module) -> list[int]:
    """After structured pruning: remove the masked (all-zero) output channels, bias and all."""
    def keep(prod, cons):
        return (prod.weight != 0).reshape(prod.weight.shape[0], -1).any(1)
    return remove_channels_(model, keep)


def retrain(model: nn.Module, data, epochs: int, *, lr: float = 1e-3, batch_size: int = 64,
            regularizer: str | None = "l2", strength: float = 1e-5, teacher: nn.Module | None = None,
            seed: int = 0, subset: int | None = None, log=None, label: str = "retrain",
            on_step=None) -> None:
    """Fine-tune `model` (masks or shared weights in place) on data.train; one line per epoch.

    on_step(model): runs after every optimizer step (weight sharing re-ties its centroids).
    teacher: distil from it (Hinton loss, T = 4) instead of the labels alone.
    """
    from nas.train.batches import iterate, subset_of
    from nas.train.distill import distillation_loss
    from nas.train.evaluate import evaluate

    log = sys.stderr if log is None else log
    train_set = subset_of(data.train, subset)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        model.train()
        start, total, n = time.perf_counter(), 0.0, 0
        for x, y in iterate(train_set, batch_size, gen):
            logits = model(x)
            if teacher is None:
                loss = F.cross_entropy(logits, y)
            else:
                with torch.no_grad():
                    t = teacher(x)
                loss = distillation_loss(logits, t, y, 4.0, 0.9, 0.0)
            loss = loss + regularization(model, regularizer, strength)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if on_step is not None:
                on_step(model)
            total, n = total + loss.item() * len(y), n + len(y)
        acc = evaluate(model, data.val)
        print(f"{label} epoch {epoch}/{epochs}: loss {total / max(n, 1):.4f}  val accuracy {acc:.4f}  "
              f"({time.perf_counter() - start:.1f} s)", file=log, flush=True)
