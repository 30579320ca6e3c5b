"""Searched sparsity and codebooks in training: what `nas.cost.layout.searched_layer_bytes` prices.

A stage whose arch segment carries ``p`` (sparsity) or ``cb`` (codebook bits) has its
bit-carrying convs marked by `nas.blocks.model.mark_compressed` (attributes `sparsity`,
`codebook`). `train` (`nas.train.trainer`) runs `SearchedCompression` over its optimizer
steps T, so a search trial, its final retraining and `nas train` all train what the export
writes:

- Magnitude pruning with `torch.nn.utils.prune` (`l1_unstructured`, then the same method's
  `compute_mask` on the masked weight, so a pruned weight stays pruned), ramped on Zhu &
  Gupta's cubic schedule (2017): s_t = s (1 - (1 - (t - t0) / (t1 - t0))^3) between
  t0 = T / 6 (a short dense start, so magnitudes mean something) and t1 = 2T / 3, then held.
  The pruned count is round(s_t * n), so at t1 it is exactly the round(s * n) the layout
  prices (`layout.searched_nnz`).
- The codebook for the last quarter of the steps (from tc = 3T / 4): the mask is made
  permanent (a layer without a codebook keeps its mask to the end), the weights are clustered by 1-D k-means with linear initialisation
  (`nas.quant.codebook`, as `nas compress` does; in a pruned layer index 0 is pinned to
  0.0 and takes exactly the pruned weights), and the centroids are fine-tuned (they join the
  optimizer's no-weight-decay group, so they follow its learning-rate schedule); the
  indices stay.
- `finish` (after the last step, also when `max_seconds` cut training short) brings every
  layer to its exact final state (target count pruned, codebook tied) and bakes it into a
  plain weight tensor: zeros where pruned, at most 2^b distinct values. The state dict is
  then an ordinary one; `nas.export.fold` recovers codebook and indices from the values.

The codebook is clustered on the trained (unfolded) weight; BatchNorm is folded at export
with a per-channel float32 scale kept beside the codebook (`nas.cost.layout`), so folding
changes no shared value.
"""

import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from nas.cost import layout
from nas.quant.codebook import share_layer_, shared_of

PRUNE_START = 1 / 6  # fraction of the steps before pruning begins
PRUNE_END = 2 / 3  # the target sparsity is reached here
CODEBOOK_START = 3 / 4  # the codebook is tied (and its centroids fine-tuned) from here


def cubic_sparsity(step: int, t0: int, t1: int, target: float) -> float:
    """Zhu & Gupta's schedule: 0 before t0, target from t1, s (1 - (1 - progress)^3) between."""
    if step <= t0:
        return 0.0
    if step >= t1:
        return target
    return target * (1.0 - (1.0 - (step - t0) / (t1 - t0)) ** 3)


def marked_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The convs a searched sparsity / codebook applies to, in execution order."""
    return [(name, m) for name, m in model.named_modules()  # vars: the attributes mark_compressed set
            if vars(m).get("sparsity", 0.0) or vars(m).get("codebook", 0)]


def final_pruned(m: nn.Module) -> int:
    """How many of the layer's weights the arch prunes: round(s * n) (`layout.searched_nnz`)."""
    n = m.weight.numel()
    return n - layout.searched_nnz(n, m.sparsity)


class SearchedCompression:
    """The schedule above over `total_steps` optimizer steps; inert when no layer is marked."""

    def __init__(self, model: nn.Module, total_steps: int):
        self.layers = marked_layers(model)
        self.total = max(1, int(total_steps))
        self.t0 = int(round(self.total * PRUNE_START))
        self.t1 = max(self.t0 + 1, int(round(self.total * PRUNE_END)))
        self.tc = max(self.t1, int(round(self.total * CODEBOOK_START)))
        self.shared = False

    def __bool__(self) -> bool:
        return bool(self.layers)

    def _prune_to(self, m: nn.Module, count: int) -> None:
        """Prune `count` weights of `m` by magnitude (a superset of those already pruned)."""
        if count <= 0:
            return
        if not prune.is_pruned(m):
            # contiguous scores: the method flattens them with view(-1) (a channels-last weight cannot)
            prune.l1_unstructured(m, "weight", amount=count, importance_scores=m.weight.detach().contiguous())
            return
        with torch.no_grad():
            if int((m.weight_mask == 0).sum()) >= count:
                return
            masked = (m.weight_orig.detach() * m.weight_mask).contiguous()  # pruned weights are 0: pruned first
            m.weight_mask.copy_(prune.L1Unstructured(amount=count).compute_mask(masked, m.weight_mask))

    def _prune_all(self, step: int) -> None:
        for _, m in self.layers:
            if m.sparsity:
                n = m.weight.numel()
                self._prune_to(m, min(final_pruned(m), int(round(cubic_sparsity(step, self.t0, self.t1, m.sparsity)
                                                                    * n))))

    def _tie_codebooks(self, opt: torch.optim.Optimizer | None) -> None:
        """Final masks made permanent, then each codebook layer clustered and tied."""
        for _, m in self.layers:
            if m.sparsity:
                self._prune_to(m, final_pruned(m))
            if m.sparsity and m.codebook:  # the codebook's index 0 keeps the pruned weights at 0 from here
                prune.remove(m, "weight")  # weight = orig * mask, the same Parameter object
            if m.codebook:
                shared = share_layer_(m, m.codebook, pruned=bool(m.sparsity))
                if opt is not None:  # the centroids join the no-decay group (1-D parameters, the trainer's
                    # rule), so they follow its learning-rate schedule; the tied weight no longer trains
                    group = next((g for g in opt.param_groups if g.get("weight_decay", 0.0) == 0.0), opt.param_groups[-1])
                    group["params"].append(shared.learned)
        self.shared = True

    def step(self, step: int, opt: torch.optim.Optimizer) -> None:
        """After optimizer step number `step` (1-based): the masks / codebooks the next step uses."""
        if not self.layers:
            return
        if step < self.tc:
            self._prune_all(step)
        elif not self.shared:
            self._tie_codebooks(opt)

    def finish(self) -> None:
        """The exact final state, baked into plain weights (see the module docstring)."""
        if not self.layers:
            return
        if not self.shared:
            self._tie_codebooks(None)
        for name, m in self.layers:
            if shared_of(m) is not None:
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
            if prune.is_pruned(m):  # a sparse layer without a codebook kept its mask to the end
                prune.remove(m, "weight")
            with torch.no_grad():  # a masked negative weight is -0.0: store every pruned weight as 0.0
                m.weight.masked_fill_(m.weight == 0, 0.0)
            check_trained(name, m)


def check_trained(name: str, m: nn.Module) -> None:
    """AssertionError unless `m`'s weight is in the state the arch prices: exactly round(s * n)
    zeros when pruned, at most 2^b distinct values (2^b - 1 besides 0 when pruned)."""
    w = m.weight.detach()
    zeros = int((w == 0).sum())
    if m.sparsity and zeros != final_pruned(m):
        raise AssertionError(f"{name}: {zeros} zero weights after training; the arch prunes exactly {final_pruned(m)}")
    if m.codebook:
        values = torch.unique(w[w != 0] if m.sparsity else w).numel()
        room = 2 ** m.codebook - (1 if m.sparsity else 0)
        if values > room:
            raise AssertionError(f"{name}: {values} distinct weights; a {m.codebook}-bit codebook holds {room}")


def describe(model: nn.Module) -> list[dict]:
    """Per marked layer: name, weights, pruned count and distinct values (for reports / tests)."""
    out = []
    for name, m in marked_layers(model):
        w = m.weight.detach()
        out.append({"layer": name, "params": w.numel(), "zeros": int((w == 0).sum()),
                    "sparsity": m.sparsity, "codebook": m.codebook,
                    "values": int(torch.unique(w).numel()) if m.codebook else None,
                    "predicted_bytes": layout.searched_layer_bytes(
                        w.shape[0], w.shape[1], *(w.shape[2:] if w.dim() == 4 else (1, 1)), m.sparsity, m.codebook)})
    return out


__all__ = ["SearchedCompression", "cubic_sparsity", "marked_layers", "final_pruned", "check_trained", "describe"]
