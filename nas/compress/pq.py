"""Product quantization, Kill-the-bits style (Stock et al. 2020; survey 000 ch. 2 sec. 3).

A layer's weight is cut into sub-vectors of d consecutive input channels at one kernel
position: conv (C_out, C_in, k_h, k_w) -> (C_out, k_h, k_w, C_in) -> (C_out k_h k_w C_in / d, d);
linear (C_out, C_in) -> (C_out C_in / d, d). k-means gives k centroids of size d per layer;
the layer stores the codebook float32[k, d] and one ceil(log2 k)-bit index per sub-vector
(`nas.cost.layout.pq_bytes`). C_in must be divisible by d. The first layer is kept dense
float32 (it reads the image: C_in is 1 or 3 and it holds the fewest weights).

Fine-tuning: the weight is a parametrization of (codebook, index); the centroid gradient is
the sum of its members' (indexing backward), and the loss distils from the uncompressed
network (Hinton, T = 4), as Kill-the-bits does.
"""

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from nas.errors import UsageError


def parse_pq(text: str) -> tuple[int, int]:
    """'d=4,k=256' -> (4, 256)."""
    fields = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key not in ("d", "k") or not value.isdigit():
            raise UsageError(f"--pq {text!r}: expected d=SIZE,k=CENTROIDS, e.g. d=4,k=256")
        fields[key] = int(value)
    d, k = fields.get("d"), fields.get("k", 256)
    if d is None or d < 1 or not 2 <= k <= 65536:
        raise UsageError(f"--pq {text!r}: expected d >= 1 and 2 <= k <= 65536")
    return d, k


def _subvectors(w: torch.Tensor, d: int) -> torch.Tensor:
    if w.dim() == 4:
        w = w.permute(0, 2, 3, 1)  # (C_out, k_h, k_w, C_in)
    return w.reshape(-1, d)  # (S, d)


class PQWeight(nn.Module):
    """Parametrization: the weight is codebook[index] reshaped back to the layer's shape."""

    def __init__(self, codebook: torch.Tensor, index: torch.Tensor, shape: tuple[int, ...]):
        super().__init__()
        self.codebook = nn.Parameter(codebook)  # (k, d)
        self.register_buffer("index", index)  # (S,)
        self.shape = shape

    def forward(self, _original: torch.Tensor) -> torch.Tensor:
        v = self.codebook[self.index]  # (S, d)
        if len(self.shape) == 4:
            c_out, c_in, kh, kw = self.shape
            # contiguous: the conv then runs on the layout a decoded payload has, so the two agree bit for bit
            return v.reshape(c_out, kh, kw, c_in).permute(0, 3, 1, 2).contiguous()
        return v.reshape(self.shape)


def check_pq(model: nn.Module, d: int) -> None:
    from nas.compress.prune import layers_of

    for i, (name, m) in enumerate(layers_of(model)):
        c_in = m.weight.shape[1]
        if i > 0 and c_in % d:
            raise UsageError(f"--pq d={d}: layer {name} has {c_in} input channels per group, not divisible "
                             f"by {d}; expected a d that divides every layer's input channels")


def pq_weights_(model: nn.Module, d: int, k: int, seed: int = 0) -> None:
    from sklearn.cluster import KMeans

    from nas.compress.prune import layers_of

    check_pq(model, d)
    for name, m in layers_of(model)[1:]:
        w = m.weight.detach()
        sub = _subvectors(w, d).numpy().astype(np.float64)
        k_eff = min(k, len(np.unique(sub, axis=0)))
        km = KMeans(n_clusters=k_eff, n_init=1, max_iter=50, random_state=seed).fit(sub)
        book = np.zeros((k, d), dtype=np.float32)
        book[:k_eff] = km.cluster_centers_
        m.weight.requires_grad_(False)
        parametrize.register_parametrization(
            m, "weight", PQWeight(torch.from_numpy(book), torch.from_numpy(km.labels_.astype(np.int64)),
                                  tuple(w.shape)), unsafe=True)


def pq_of(m: nn.Module) -> PQWeight | None:
    if parametrize.is_parametrized(m, "weight"):
        for p in m.parametrizations.weight:
            if isinstance(p, PQWeight):
                return p
    return None
