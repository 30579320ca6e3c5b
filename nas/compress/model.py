"""The networks `nas compress` works on: plain float conv / linear layers.

- `lenet5`: Caffe's LeNet-5 as Deep Compression used it (conv 20 5x5, pool, conv 50 5x5,
  pool, fc 500, fc 10; 431 k parameters, 1 724 320 fp32 bytes at 28 x 28). A plain
  `nn.Sequential`: the arch grammar has no fully-connected hidden layers (every net ends
  in global pooling + one classifier), so LeNet-5 cannot be an arch string.
- `plain_from_arch`: a trained full-precision `QuantNet` with every BatchNorm folded into
  the conv before it and every 32-bit QuantConv2d / QuantLinear replaced by a plain layer;
  in eval mode it computes what the original does (folding reorders float products).
"""

import torch
from torch import nn

from nas.errors import UsageError


def lenet5(in_chs: int = 1, resolution: int = 28, num_classes: int = 10, dropout: float = 0.5) -> nn.Sequential:
    side = ((resolution - 4) // 2 - 4) // 2
    if side < 1:
        raise UsageError(f"lenet5: resolution {resolution} is too small; expected >= 16")
    return nn.Sequential(
        nn.Conv2d(in_chs, 20, 5), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5), nn.MaxPool2d(2), nn.Flatten(1),
        nn.Linear(50 * side * side, 500), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(500, num_classes))


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


@torch.no_grad()
def plain_from_arch(model) -> nn.Module:
    """Fold BatchNorm into the 32-bit layers of a QuantNet; replace them by nn.Conv2d / nn.Linear."""
    from nas.quant.bn_fold import bn_affine, bn_partners
    from nas.quant import QuantConv2d

    layers = model.quant_layers()
    bad = [layer.name for layer in layers if layer.w_bits != 32 or layer.a_bits != 32]
    if bad:
        raise UsageError(f"--arch: layer {bad[0]} is quantized; expected a full-precision arch (w32 a32 "
                         f"everywhere) to compress after training")
    partners = bn_partners(model)
    model.eval()
    for layer in layers:
        m = layer.module
        plain = m.to_conv() if isinstance(m, QuantConv2d) else m.to_linear()
        bn_name, bn = partners.get(layer.name, (None, None))
        g, t = bn_affine(bn, plain.weight.shape[0])
        shape = (-1,) + (1,) * (plain.weight.dim() - 1)
        bias = t + (plain.bias * g if plain.bias is not None else 0)
        plain.weight.mul_(g.reshape(shape))
        plain.bias = nn.Parameter(bias.clone())
        _set(model, layer.name, plain)
        if bn_name is not None:  # timm's BatchNormAct2d carries its activation: keep it
            rest = [getattr(bn, a) for a in ("drop", "act") if isinstance(getattr(bn, a, None), nn.Module)]
            _set(model, bn_name, nn.Sequential(*rest) if rest else nn.Identity())
    return model
