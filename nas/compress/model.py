"""The networks `nas compress` works on: plain float conv / linear layers.

- `lenet5`: Caffe's LeNet-5 as Deep Compression used it (conv 20 5x5, pool, conv 50 5x5,
  pool, fc 500, fc 10; 431 k parameters, 1 724 320 fp32 bytes at 28 x 28). A plain
  `nn.Sequential`: the arch grammar has no fully-connected hidden layers (every net ends
  in global pooling + one classifier), so LeNet-5 cannot be an arch string.
- `plain_from_arch`: a trained full-precision `QuantNet` with every BatchNorm folded into
  the conv before it and every 32-bit QuantConv2d / QuantLinear replaced by a plain layer;
  in eval mode it computes what the original does (folding reorders float products).
- `resnet20_like`: He et al.'s CIFAR ResNet-20 (3 stages x 3 basic blocks, widths 16/32/64
  x `width`), the hand-designed baseline of `nas bench search` and of `nas bench compress
  --model resnet20`. `nas.compress.pipeline` prunes and retrains it with its BatchNorms,
  then `fold_batchnorm_` folds them into the convs (the payload has a bias per layer, no
  BatchNorm record).
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


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


def resnet20_like(width: float, in_chs: int, num_classes: int) -> nn.Module:
    """He et al.'s CIFAR ResNet-20: 3 stages x 3 basic blocks, widths 16/32/64 x `width`."""
    w = [max(4, int(round(c * width))) for c in (16, 32, 64)]
    layers = [nn.Conv2d(in_chs, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU()]
    cin = w[0]
    for i, c in enumerate(w):
        for j in range(3):
            layers.append(BasicBlock(cin, c, 2 if (j == 0 and i > 0) else 1))
            cin = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


@torch.no_grad()
def fold_batchnorm_(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d registered right after a Conv2d into it (`torch.nn.utils.fusion`,
    eval statistics); the BatchNorm becomes an Identity. The model is left in eval mode."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    modules = list(model.named_modules())
    for (c_name, conv), (b_name, bn) in zip(modules, modules[1:]):
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            _set(model, c_name, fuse_conv_bn_eval(conv, bn))
            _set(model, b_name, nn.Identity())
    left = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if left:
        raise UsageError(f"BatchNorm {left[0]} follows no conv; expected conv -> BatchNorm pairs to fold")
    return model


HAND_MODELS = ("lenet5", "resnet20")


def hand_model(name: str, in_chs: int, resolution: int, num_classes: int, width: float = 1.0) -> nn.Module:
    """A built-in plain network by name, unfolded (its BatchNorms, if any, still separate)."""
    if name == "lenet5":
        return lenet5(in_chs, resolution, num_classes)
    if name == "resnet20":
        return resnet20_like(width, in_chs, num_classes)
    raise UsageError(f"--model {name!r}: expected one of {HAND_MODELS}")


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
