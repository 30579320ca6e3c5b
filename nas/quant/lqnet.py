"""LQ-Net's learned weight quantizer (survey 000 ch. 2 sec. 2 item 3, eq. 2-26, fig. 2-18; Zhang et al. 2018).

A K-bit quantizer whose 2^K levels are the inner products of a learned basis v ∈ R^K with
the binary codes e ∈ {-1, +1}^K:

    Q(x, v) = v^T e_l  for x in (t_{l-1}, t_l],   t_l = (q_l + q_{l+1}) / 2

(q_1 <= ... <= q_{2^K} the levels sorted, t_0 = -inf, t_{2^K} = +inf: every x goes to its
nearest level, a tie to the lower one). The bit vectors e stay bit-operation compatible;
only v, the "basis vector" of the seed's fig. 2-18, is fitted. Here one v per output
channel of each 2..8-bit weight layer (the seed: layer-wise and channel-wise quantizers).

Fitting v (eq. 2-26, the quantization error min_v Σ (Q(x, v) - x)^2 over the channel's
weights), LQ-Net's alternating step, once per training forward:
  1. v fixed: B = the codes of the nearest levels (the forward pass's own assignment);
  2. B fixed: v* = argmin_v ||B v - x||^2 = (B^T B)^{-1} B^T x (least squares, B: N x K);
  3. v <- γ v + (1 - γ) v*, γ = 0.9 (a moving average, so one batch's step does not jump).
  Step 2 never raises the error for the codes of step 1, and re-assigning the nearest
  levels under v* lowers it again or keeps it. A channel whose B^T B is singular (some bit
  never flips, or two bits always agree: small depthwise channels) keeps its v.

Start: v = a_c · [1, 2, 4, ..., 2^{K-1}], a_c = max |W_c| / (2^K - 1). Then v^T e runs over
a_c · {-(2^K - 1), ..., -3, -1, 1, 3, ..., 2^K - 1}: 2^K uniform levels, step 2 a_c, exactly
DoReFa's level set m_c (2j / (2^K - 1) - 1), j = 0..2^K - 1, for m_c = (2^K - 1) a_c = max |W_c|
(DoReFa puts tanh W on them; LQ-Net the raw weight).

Gradient: the straight-through estimator, dQ/dx = 1 (`OnLevels`); v gets none (it is fitted,
not trained by the loss).

The quantizer replaces a layer's `quant_weight` for the run (an instance attribute, as
`nas.quant.methods` switches modules): the model's parameters and state dict are unchanged,
v lives in the quantizer, not the state dict. Activations keep their quantizer (PACT or
DoReFa's); LQ-Net's activation quantizer is not built. Ternary layers keep TWN.

Export: the payload stores DoReFa codes and m_c; LQ-Net's levels are not those, so a model
with these quantizers has no payload form. `nas.export.fold.dorefa_codes` refuses it (its
codes do not reproduce `quant_weight()`), and `nas train --weight-quant lqnet` refuses
`--save` before any work.
"""

from functools import lru_cache

import torch
from torch import nn

from nas.quant.functions import quantizer
from nas.quant.modules import _QuantMixin

LQ_BITS = tuple(range(2, 9))  # weight widths LQ-Net takes over (1 bit stays α_c · sign W, 16 / 32 float)
MOMENTUM = 0.9  # γ of step 3


@lru_cache(maxsize=None)
def codes(bits: int) -> torch.Tensor:
    """All 2^K binary codes as ±1 rows, (2^K, K): row j has +1 where bit i of j is set
    (cached: treat as read-only)."""
    with torch.inference_mode(False):  # a normal tensor, whichever mode first asks for it
        j = torch.arange(2**bits).unsqueeze(1)  # (2^K, 1)
        return ((j >> torch.arange(bits)) & 1).float() * 2 - 1  # (2^K, K)


def uniform_basis(x: torch.Tensor, bits: int) -> torch.Tensor:
    """v = a_c · [1, 2, ..., 2^{K-1}] per row of x (C, N), a_c = max |x_c| / (2^K - 1): (C, K)."""
    a = x.detach().abs().amax(dim=1, keepdim=True).clamp_min(1e-8) / (2**bits - 1)  # (C, 1)
    return a * 2.0 ** torch.arange(bits, dtype=x.dtype)  # (C, K)


def levels(v: torch.Tensor) -> torch.Tensor:
    """v^T e for every code e: (C, 2^K), column j the level of code j (`codes`)."""
    return v @ codes(v.shape[1]).to(v.device, v.dtype).T  # (C, K) @ (K, 2^K)


def assign(x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest level of each element of x (C, N) under basis v (C, K): (values (C, N), code
    indices (C, N) into `codes`). x in (t_{l-1}, t_l] goes to q_l: a tie to the lower level."""
    q, order = levels(v).sort(dim=1)  # (C, 2^K) ascending, order: code index of each
    thresholds = (q[:, 1:] + q[:, :-1]) / 2  # (C, 2^K - 1)
    slot = torch.searchsorted(thresholds.contiguous(), x.detach().contiguous(), side="left")  # thresholds < x
    return q.gather(1, slot), order.gather(1, slot)


def least_squares_basis(x: torch.Tensor, idx: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 2: v* = (B^T B)^{-1} B^T x per row, B the ±1 codes of `idx` (C, N, K); returns
    (v* (C, K), which rows were solvable (C,) bool). Solved in float64; unsolvable rows are 0."""
    b = codes(bits).to(idx.device, torch.float64)[idx]  # (C, N, K)
    gram = b.transpose(1, 2) @ b  # (C, K, K), integer-valued
    rhs = (b.transpose(1, 2) @ x.detach().double().unsqueeze(2)).squeeze(2)  # (C, K)
    ok = torch.linalg.matrix_rank(gram, hermitian=True) == bits  # (C,)
    v = torch.zeros(x.shape[0], bits, dtype=torch.float64, device=x.device)
    if ok.any():
        v[ok] = torch.linalg.solve(gram[ok], rhs[ok])
    return v.to(x.dtype), ok


def quantization_error(x: torch.Tensor, v: torch.Tensor) -> float:
    """Σ (Q(x, v) - x)^2 over all rows: eq. 2-26 on the empirical distribution of x."""
    return float(((assign(x, v)[0] - x.detach()) ** 2).sum())


class OnLevels(torch.autograd.Function):
    """The assigned levels forward (exactly, no arithmetic on them); identity gradient backward."""

    @staticmethod
    def forward(ctx, x, q):
        return q.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class LQWeight:
    """A layer's LQ-Net weight quantizer: call it for the quantized weight (a training-mode
    forward with gradients on also takes one basis step, after quantizing with the old v)."""

    def __init__(self, module: nn.Module, momentum: float = MOMENTUM):
        self.module, self.bits, self.momentum = module, module.w_bits, momentum
        w = module.weight.detach()
        self.basis = uniform_basis(w.reshape(w.shape[0], -1), self.bits)  # (C_out, K)
        self.steps = self.singular = 0

    def __call__(self) -> torch.Tensor:
        w = self.module.weight
        x = w.reshape(w.shape[0], -1)  # (C_out, N): one quantizer per output channel
        if self.basis.device != w.device:  # the trainer moved the model (--device cuda)
            self.basis = self.basis.to(w.device)
        q, idx = assign(x, self.basis)
        out = quantizer(OnLevels, x, q).reshape(w.shape)
        if self.module.training and torch.is_grad_enabled():
            self.update(x, idx)
        return out

    @torch.no_grad()
    def update(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        """Steps 2 and 3 of the module docstring for the codes `idx` the forward used."""
        target, ok = least_squares_basis(x, idx, self.bits)
        mixed = self.momentum * self.basis + (1 - self.momentum) * target
        self.basis = torch.where(ok.unsqueeze(1), mixed, self.basis)
        self.steps += 1
        self.singular += int((~ok).sum())


def lqnet_layers(model: nn.Module) -> list[nn.Module]:
    """The layers LQ-Net takes over: 2..8-bit weights, not ternary."""
    return [m for m in model.modules()
            if isinstance(m, _QuantMixin) and m.w_bits in LQ_BITS and not m.ternary]


def use_lqnet(model: nn.Module) -> int:
    """Every 2..8-bit (non-ternary) weight layer quantizes with its own `LQWeight`, started
    from the uniform basis (a layer that has one keeps it, basis and all: training goes on
    from there); returns how many layers. `remove_lqnet` undoes it."""
    layers = lqnet_layers(model)
    for m in layers:
        if not isinstance(m.__dict__.get("quant_weight"), LQWeight):
            m.quant_weight = LQWeight(m)  # shadows the class's method on this instance (DoReFa)
    return len(layers)


def remove_lqnet(model: nn.Module) -> int:
    """DoReFa weights again on every layer `use_lqnet` switched; returns how many."""
    layers = [m for m in model.modules() if isinstance(m.__dict__.get("quant_weight"), LQWeight)]
    for m in layers:
        del m.__dict__["quant_weight"]
    return len(layers)


def has_lqnet(model: nn.Module) -> bool:
    return any(isinstance(m.__dict__.get("quant_weight"), LQWeight) for m in model.modules())
