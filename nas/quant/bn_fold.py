"""BatchNorm folding: which BatchNorm reads which quantized conv, and its affine form.

Below both `nas.export` (payload records, packed model) and `nas.compress` (folding a trained
float net before compression), so neither imports the other for it.
"""

import torch
from torch import nn

from nas.quant.binary import BinaryConv2d


def bn_partners(model) -> dict[str, tuple[str, nn.BatchNorm2d]]:
    """conv name -> (name, module) of the BatchNorm2d that reads that conv's output.

    Found by running the model once, fake-quant path, on one all-zero image (a probe of
    the graph, not data): a BatchNorm whose input *is* a quantized conv's output tensor
    folds into that conv. Every BatchNorm2d must be claimed exactly once.
    """
    layers = {id(layer.module): layer.name for layer in model.quant_layers()}
    bns = {id(m): (name, m) for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    produced, pairs, keep = {}, {}, []

    def after_conv(module, args, out):
        produced[id(out)] = layers[id(module)]
        keep.append(out)  # ids stay unique while the probe runs

    def before_bn(module, args):
        conv = produced.get(id(args[0]))
        if conv is not None:
            if conv in pairs:
                raise RuntimeError(f"{conv}: its output feeds two BatchNorms; cannot fold")
            pairs[conv] = bns[id(module)]

    hooks = [m.register_forward_hook(after_conv) for m in model.modules() if id(m) in layers]
    hooks += [m.register_forward_pre_hook(before_bn) for m in model.modules() if id(m) in bns]
    kernels = [(m, m.use_kernels) for m in model.modules() if isinstance(m, BinaryConv2d)]
    was_training = model.training
    try:
        for m, _ in kernels:
            m.use_kernels = False  # the kernel path calls no BatchNorm module
        model.eval()
        a = model.arch
        with torch.no_grad():
            model(torch.zeros(1, a.in_chs, a.resolution, a.resolution))
    finally:
        for h in hooks:
            h.remove()
        for m, flag in kernels:
            m.use_kernels = flag
        model.train(was_training)
    claimed = {id(bn) for _, bn in pairs.values()}
    orphans = [name for key, (name, _) in bns.items() if key not in claimed]
    if orphans:
        raise RuntimeError(f"BatchNorm {orphans[0]} does not read a quantized conv's output; cannot fold it")
    return pairs


def bn_affine(bn: nn.BatchNorm2d | None, c_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, t): eval-mode BatchNorm as y = x · g + t (the expressions `BiRealUnit` uses)."""
    if bn is None:
        return torch.ones(c_out), torch.zeros(c_out)
    if not bn.track_running_stats or bn.running_var is None or not bn.affine:
        raise ValueError(f"BatchNorm {bn} has no running statistics or no affine parameters; cannot fold")
    inv = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    return inv, bn.bias - bn.running_mean * inv
