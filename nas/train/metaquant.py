"""MetaQuant (survey 000 ch. 2 sec. 4 item 1, headed sec. 5 in the body; eqs. 2-32 .. 2-45;
Chen et al. 2019): a small meta network M_Φ, shared by every 1..8-bit weight layer, gives
the gradient of the preprocessed weight W̃ from the gradient of the quantized weight Ŵ, in
place of the straight-through estimator; it is trained jointly with the net.

Per layer (the forward is today's, untouched; only weight gradients change):

- 1 bit, BWN (eqs. 2-34, 2-35, 2-40): W̃ = W, Ŵ = α_c · sign(W̃), ∂W̃/∂W = 1; the STE's
  ∂Ŵ/∂W̃ is k = α_c (α_c = mean |W_c|, a constant).
- 2..8 bits, DoReFa (eqs. 2-32, 2-33, 2-39): t = tanh W, W̃ = t / (2 m_c) + 1/2,
  Ŵ = m_c (2 round((2^K - 1) W̃) / (2^K - 1) - 1) (eq. 2-33 times m_c, `nas.quant.functions`),
  ∂W̃/∂W = (1 - t^2) / (2 m_c) (eq. 2-39 with eq. 2-32's factor 1/2); the STE's k = 2 m_c.
  Ternary layers alike (W̃ = n / 2 + 1/2, n = t / m_c).

In both, the STE's weight gradient is g_W = D · g_Ŵ with D = k · ∂W̃/∂W (α_c, or 1 - t^2).
MetaQuant, at each step:

    g_Ŵ = g_W(STE) / D                                          eq. 2-36 (0 where D = 0)
    g_W̃ = M_Φ(g_Ŵ, W̃) = k · g_Ŵ · (1 + tanh f_Φ(g_Ŵ / σ, u))      eq. 2-37
    g_W = g_W̃ · ∂W̃/∂W = g_W(STE) · (1 + tanh f_Φ(g_Ŵ / σ, u))    eq. 2-38, handed to the optimizer

f_Φ is an elementwise MLP 2 -> 16 -> 16 -> 1 (ReLU), its last layer started at zero, so a
fresh M_Φ is exactly the STE. Its inputs are scaled per layer so one net serves every
layer: σ = RMS of the layer's g_Ŵ, u = W̃ mapped to the channel's scale (t / m_c = 2 W̃ - 1
for DoReFa, W / α_c for BWN). The meta network thus rescales each element's STE gradient
by a learned factor in (0, 2): it can neither reverse a gradient nor make one where the loss
gives none. (A first version added σ D f_Φ to the STE's gradient instead: f_Φ's constant part
then made gradients that did not depend on the loss, AdamW turned them into full-size steps,
and on docs/training.md's 4-bit net N2 the runs ended at 0.47 and 0.10 test accuracy.)

Training Φ (eqs. 2-44, 2-45): the weights a step sees came from the last step's update
W^t = W^{t-1} - α π(g_W^{t-1}), so the loss at t depends on Φ through g_W^{t-1}; with the
seed's ∂L/∂W̃^t = M_Φ(g_Ŵ^t, W̃^t), i.e. the meta gradient g_W^t,

    ∂L/∂Φ = Σ_layers Σ g_W^t · (-α ∂/∂Φ [g_W(STE)^{t-1} tanh f_Φ(ĝ^{t-1}, u^{t-1})]).

Two simplifications, both positive factors: π is taken as the identity (the seed's eq.
2-42; the net's optimizer is AdamW) and α is left out, each layer's g_W^t and g_W(STE)^{t-1}
divided by their RMS instead (layers count alike whatever their gradient scale; Φ's Adam
is invariant to a common factor). Φ steps with its own Adam (lr 1e-3) at the next forward
of the model, once every hooked layer's gradient of the step is in.

Mechanics: one tensor hook per hooked weight (it receives the STE gradient and returns the
meta one) and one forward pre-hook on the model (Φ's optimizer step); `MetaQuant.remove()`
takes them off. Φ is not a module of the model, so the model's parameters, state dict and
export are unchanged: only the gradients, so the trained weights, differ. In Bi-Real's
real-valued stage (`nas.quant.methods.real_valued_stage`) a 1-bit layer uses its float
weight, there is no quantizer to penetrate, and its gradient passes as it is.

The seed's caveat holds: the meta net runs over every weight element at every step (three
passes of f_Φ: the gradient, and forward and backward for Φ's gradient), so a step costs more.
"""

import torch
from torch import nn

from nas.quant.functions import binary_scale, dorefa_scale
from nas.quant.modules import _QuantMixin

META_BITS = tuple(range(1, 9))  # weight widths MetaQuant takes over (16 / 32 bits: no quantizer to penetrate)
HIDDEN = 16
META_LR = 1e-3


class MetaNet(nn.Module):
    """f_Φ: (ĝ, u) -> f, elementwise over any shape (the gradient's factor is 1 + tanh f); a zero
    last layer, so f = 0 (the STE) until Φ has stepped."""

    def __init__(self, hidden: int = HIDDEN, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # its own draws: the caller's RNG stream is untouched
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, 1))
        with torch.no_grad():
            self.net[-1].weight.zero_()
            self.net[-1].bias.zero_()

    def forward(self, g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        x = torch.stack([g.reshape(-1), u.reshape(-1)], dim=1)  # (n, 2)
        return self.net(x).reshape(g.shape)  # (n, 1) -> g's shape


def layer_terms(m: nn.Module, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(D, u) of a layer's weight w (detached): D = k ∂W̃/∂W, u = W̃ at the channel's scale."""
    shape = (-1,) + (1,) * (w.dim() - 1)
    if m.w_bits == 1:
        a = binary_scale(w).clamp_min(1e-12).reshape(shape)
        return a.expand_as(w), w / a
    t = torch.tanh(w)
    return 1 - t * t, t / dorefa_scale(w).reshape(shape)


def _rms(t: torch.Tensor) -> torch.Tensor:
    return t.pow(2).mean().sqrt().clamp_min(torch.finfo(t.dtype).tiny)


def meta_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, _QuantMixin) and m.w_bits in META_BITS]


class MetaQuant:
    """MetaQuant on every 1..8-bit weight layer of `model` (see the module docstring)."""

    def __init__(self, model: nn.Module, seed: int = 0, lr: float = META_LR, hidden: int = HIDDEN):
        self.meta = MetaNet(hidden, seed)
        self.opt = torch.optim.Adam(self.meta.parameters(), lr=lr)
        self.layers = meta_layers(model)
        self.state: dict[int, tuple] = {}  # layer index -> (ĝ, u, g_W(STE)) of its last step, normalised
        self.steps = 0  # Φ's optimizer steps
        self.pending = False
        self.handles = [m.weight.register_hook(self._hook(i, m)) for i, m in enumerate(self.layers)]
        self.handles.append(model.register_forward_pre_hook(self._step))

    def meta_gradient(self, m: nn.Module, grad: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """g_W from the STE's gradient `grad` (eqs. 2-36 .. 2-38) and the inputs it used:
        (ĝ = g_Ŵ / σ, u, g_W(STE) / its RMS)."""
        w = m.weight.detach()
        d, u = layer_terms(m, w)
        g_hat = torch.where(d > 0, grad / torch.where(d > 0, d, 1.0), 0.0)  # g_Ŵ
        g_norm = g_hat / _rms(g_hat)
        with torch.no_grad():
            factor = torch.tanh(self.meta(g_norm, u))  # in (-1, 1); 0 for a fresh Φ
        return grad + grad * factor, (g_norm, u, grad / _rms(grad))

    def _hook(self, i: int, m: nn.Module):
        def hook(grad: torch.Tensor):
            if m.real_weights and m.w_bits == 1:  # Bi-Real's stage 1: the float weight, no quantizer
                self.state.pop(i, None)
                return None
            self.meta.to(grad.device)  # a no-op after the first step on a device
            g_w, terms = self.meta_gradient(m, grad)
            if i in self.state:
                self._accumulate(g_w, self.state[i])
            self.state[i] = terms
            return g_w

        return hook

    def _accumulate(self, g_w: torch.Tensor, previous: tuple) -> None:
        """Φ's gradient from this step's g_W through the last step's update (eq. 2-45)."""
        g_norm, u, g_ste = previous
        with torch.enable_grad():
            loss = -((g_w.detach() / _rms(g_w)) * g_ste * torch.tanh(self.meta(g_norm, u))).sum()
            grads = torch.autograd.grad(loss, list(self.meta.parameters()))
        for p, g in zip(self.meta.parameters(), grads):
            p.grad = g if p.grad is None else p.grad + g
        self.pending = True

    def _step(self, module, inputs):
        if self.pending:
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.steps += 1
            self.pending = False

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        self.state.clear()
