"""A per-layer weight codebook (Han et al. 2016, sec. 3), shared by `nas compress`
(`nas.compress.share`) and the search's codebook axis (`nas.train.sparsify`).

1-D k-means (centroids initialised linearly between min and max, the initialisation Deep
Compression found best) or a Gaussian mixture with the same initial means. The weight then
becomes a parametrization ``codebook[index]`` (`torch.nn.utils.parametrize`), so autograd's
indexing backward sums the gradients of each centroid's members, which is exactly Deep
Compression's centroid update. In a pruned layer index 0 is pinned to 0.0.
"""

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from nas.errors import UsageError


def linear_init(values: np.ndarray, k: int) -> np.ndarray:
    """k centroids evenly spaced over [min, max] (Deep Compression's linear initialisation)."""
    return np.linspace(values.min(), values.max(), k)


def cluster(values: np.ndarray, k: int, method: str = "kmeans", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(centroids (k,), index per value) of 1-D values."""
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    x = values.reshape(-1, 1).astype(np.float64)
    k_eff = min(k, len(np.unique(x)))
    init = linear_init(values, k_eff).reshape(-1, 1)
    if method == "kmeans":
        km = KMeans(n_clusters=k_eff, init=init, n_init=1, max_iter=100, random_state=seed).fit(x)
        centroids, index = km.cluster_centers_.ravel(), km.labels_
    elif method == "gmm":
        gm = GaussianMixture(n_components=k_eff, means_init=init, random_state=seed, max_iter=100).fit(x)
        centroids, index = gm.means_.ravel(), gm.predict(x)
    else:
        raise UsageError(f"--share-method {method!r}: expected kmeans or gmm")
    out = np.zeros(k)  # unused slots (fewer distinct values than k) stay 0.0
    out[:k_eff] = centroids
    return out.astype(np.float32), index.astype(np.int64)


class SharedWeight(nn.Module):
    """Parametrization: the weight is codebook[index] (index fixed, codebook trainable)."""

    def __init__(self, codebook: torch.Tensor, index: torch.Tensor, pinned_zero: bool):
        super().__init__()
        self.pinned_zero = pinned_zero
        # index 0 of a pruned layer is the constant 0.0: only the rest is a parameter
        self.learned = nn.Parameter(codebook[1:].clone() if pinned_zero else codebook.clone())
        self.register_buffer("index", index)

    def codebook(self) -> torch.Tensor:
        if self.pinned_zero:
            return torch.cat([torch.zeros(1, dtype=self.learned.dtype, device=self.learned.device), self.learned])
        return self.learned

    def forward(self, _original: torch.Tensor) -> torch.Tensor:
        return self.codebook()[self.index]


def layer_codebook(flat: np.ndarray, bits: int, pruned: bool, method: str = "kmeans",
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(codebook float32 (2^bits,), index int64 per value) of a layer's flat weights. Pruned:
    index 0 is 0.0 and takes exactly the zero weights; the survivors are clustered into the
    other 2^bits - 1 values (so a survivor never lands on index 0)."""
    k = 2 ** bits
    if not pruned:
        return cluster(flat, k, method, seed)
    nz = flat != 0
    index = np.zeros(flat.shape, dtype=np.int64)
    if nz.any():
        centroids, idx = cluster(flat[nz], k - 1, method, seed)
        index[nz] = idx + 1
    else:
        centroids = np.zeros(k - 1, dtype=np.float32)
    return np.concatenate([[0.0], centroids]).astype(np.float32), index


def share_layer_(m: nn.Module, bits: int, pruned: bool, method: str = "kmeans", seed: int = 0) -> "SharedWeight":
    """Cluster `m.weight` into a 2^bits codebook and tie it: the weight becomes codebook[index]
    (the original weight no longer trains; the codebook is the new parameter, on its device)."""
    w = m.weight.detach()
    codebook, index = layer_codebook(w.flatten().cpu().numpy(), bits, pruned, method, seed)
    m.weight.requires_grad_(False)
    shared = SharedWeight(torch.from_numpy(codebook), torch.from_numpy(index).reshape(w.shape), pruned).to(w.device)
    parametrize.register_parametrization(m, "weight", shared, unsafe=True)
    return shared


def shared_of(m: nn.Module) -> SharedWeight | None:
    if parametrize.is_parametrized(m, "weight"):
        for p in m.parametrizations.weight:
            if isinstance(p, SharedWeight):
                return p
    return None
