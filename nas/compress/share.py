"""Weight sharing (seed 002 sec. 1.3; Han et al. 2016, sec. 3): a per-layer codebook.

Each layer's weights are clustered into 2^b shared values (1-D k-means, centroids
initialised linearly between min and max, the initialisation Deep Compression found best;
or a Gaussian mixture with the same initial means). The layer then stores the codebook
and one b-bit index per weight (`nas.cost.layout`). In a pruned layer index 0 is pinned to
0.0 (the pruned weights and the relative encoding's fillers) and the other 2^b - 1 values
are clustered from the surviving weights.

Fine-tuning: the weight is a parametrization ``codebook[index]``
(`torch.nn.utils.parametrize`), so autograd's indexing backward sums the gradients of each
centroid's members, which is exactly Deep Compression's centroid update. The codebook
itself lives in `nas.quant.codebook`, which the search's codebook axis shares.
"""

from torch import nn

from nas.errors import UsageError
from nas.quant.codebook import SharedWeight, cluster, layer_codebook, linear_init, share_layer_, shared_of  # noqa: F401 (their home)

MAX_SHARE_BITS = 8


def check_share_bits(bits, where: str = "--share") -> int:
    if not isinstance(bits, int) or not 1 <= bits <= MAX_SHARE_BITS:
        raise UsageError(f"{where} {bits!r}: expected codebook bits 1..{MAX_SHARE_BITS} (2^b shared values per layer)")
    return bits


def share_weights_(model: nn.Module, bits: int, method: str = "kmeans", pruned: bool = False,
                   seed: int = 0) -> None:
    """Cluster every conv / linear weight into 2^bits values and tie it to its codebook."""
    from nas.compress.prune import layers_of

    check_share_bits(bits)
    for _, m in layers_of(model):
        share_layer_(m, bits, pruned, method, seed)
