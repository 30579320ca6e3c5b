"""Zero-cost proxies: score an untrained network from one batch, as the search's lowest fidelity.

- `naswot`: Mellor et al., "Neural Architecture Search without Training" (ICML 2021).
  Every rectifier-like unit gives each image a binary code (1 where the unit's input is
  positive; for 1-bit sign activations, where it is >= 0, since sign(0) = +1). With c_i
  the concatenated code of image i over all such units, the kernel is
  K_H[i, j] = N_A - d_H(c_i, c_j)  (N_A units, d_H Hamming distance), which equals
  c_i . c_j + (1 - c_i) . (1 - c_j); the score is log|K_H|. Networks whose units split
  the images into more distinct patterns score higher.
- `synflow`: Tanaka et al., "Pruning neural networks without any data by iteratively
  conserving synaptic flow" (NeurIPS 2020), used as a NAS proxy by Abdelfattah et al.
  (ICLR 2021). All parameters and buffers are replaced by their absolute values, the input
  is all ones, R = sum(network output), and the score is sum over parameters of
  theta * dR/dtheta. Computed in float64 (the product over layers overflows float32) on a
  deep copy, with BatchNorm in eval mode at reset statistics (mean 0, variance 1), i.e. an
  identity up to eps, as in the paper; the caller's model is untouched.
"""

import copy
import re

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

RECTIFIERS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.Hardswish, nn.SiLU, nn.GELU, nn.Mish)
_RECTIFIER_NAME = re.compile(r"relu|swish|silu|gelu|mish|sign", re.IGNORECASE)  # timm's and nas.quant's own


def is_rectifier(module: nn.Module) -> bool:
    """Units NASWOT reads codes from: the torch activations above, any leaf module whose class
    name says ReLU / swish / SiLU / GELU / Mish / sign (timm's own activations), and 1-bit
    activation quantizers (a leaf with ``bits == 1``, e.g. `nas.quant.ActQuant`)."""
    if isinstance(module, RECTIFIERS):
        return True
    if list(module.children()):
        return False
    return _is_sign(module) or _RECTIFIER_NAME.search(type(module).__name__) is not None


def _is_sign(module: nn.Module) -> bool:
    return getattr(module, "bits", None) == 1


def naswot(model: nn.Module, x: torch.Tensor) -> float:
    """log|K_H| over the batch `x` (B, C, H, W) of real images; higher is better.

    The forward runs in train mode (BatchNorm on batch statistics, as in the paper's code)
    under no_grad; the model's buffers (BN running stats) and mode are restored afterwards.
    Returns -inf when K_H is singular (e.g. two identical images in the batch).
    """
    units = [m for m in model.modules() if is_rectifier(m)]
    if not units:
        raise ValueError(f"naswot: {type(model).__name__} has no rectifier-like modules "
                         f"({', '.join(t.__name__ for t in RECTIFIERS)}); nothing to read codes from")
    batch = x.shape[0]
    kernel = torch.zeros(batch, batch, dtype=torch.float64)

    def add_codes(module, inputs):
        pre = inputs[0].detach().reshape(batch, -1)
        c = ((pre >= 0) if _is_sign(module) else (pre > 0)).to(torch.float32)  # (B, units) binary codes
        # c c^T counts units where both are on, (1-c)(1-c)^T where both are off (exact in float32
        # below 2^24 units per layer)
        kernel.add_((c @ c.t() + (1.0 - c) @ (1.0 - c).t()).to(torch.float64))

    saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    was_training = model.training
    handles = [m.register_forward_pre_hook(add_codes) for m in units]
    try:
        model.train()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(saved[name])
    return float(torch.linalg.slogdet(kernel).logabsdet)


def synflow(model: nn.Module, x: torch.Tensor) -> float:
    """Synaptic flow of `model` for inputs shaped like `x` (only its shape is used: the
    input is ones of shape (1, C, H, W)); higher is better. The model is not modified."""
    net = copy.deepcopy(model).double()
    for m in net.modules():
        if isinstance(m, _BatchNorm):
            m.reset_running_stats()
    net.eval()
    with torch.no_grad():
        for tensor in net.state_dict().values():
            if tensor.is_floating_point():
                tensor.abs_()
    params = [p for p in net.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    ones = torch.ones((1,) + tuple(x.shape[1:]), dtype=torch.float64)
    net(ones).sum().backward()
    with torch.no_grad():
        return sum(float((p * p.grad).sum()) for p in params if p.grad is not None)


PROXIES = {"naswot": naswot, "synflow": synflow}
