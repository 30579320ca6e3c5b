"""Quantizer functions: forward values and straight-through gradients, one formula each.

Every quantizer is a small autograd Function whose backward is the stated estimator, so
the tests can check values and gradients against the formulas exactly.

- 1 bit, activations: ``sign`` with sign(0) = sign(-0.0) = +1 (``x >= 0``); gradient by
  Bi-Real's ApproxSign, d/dx = 2 + 2x on [-1, 0), 2 - 2x on [0, 1), 0 elsewhere
  (= max(0, 2 - 2|x|)). Bi-Real Net, Liu et al. 2018 (seed 003).
  Option (`HardTanhSign`, `ActQuant.sign_fn`): BNN's straight-through estimator, the
  derivative of hard tanh, d/dx = 1 where |x| <= 1, else 0 (Courbariaux et al. 2016;
  survey 000 ch. 2 sec. 2, item 2 "binarization").
- 1 bit, weights: ŵ = α_c · sign(W), α_c = mean |W| over (C_in, k_h, k_w) of output channel c,
  computed (not learned). The sign passes its gradient straight through and α_c is a
  constant, so dL/dW = α_c · dL/dŵ: Bi-Real's magnitude-aware gradient (without its
  |W| < 1 clip).
- 2/4/8 bit, weights: DoReFa (survey 000, eqs. 2-32 / 2-33), per output channel:
      t = tanh(W),  m_c = max |t| over channel c,  w~ = t / (2 m_c) + 1/2,
      ŵ = m_c · (2 · round((2^k - 1) w~) / (2^k - 1) - 1)
  The levels are symmetric around 0 in [-m_c, m_c]. Eq. 2-33 stops at the bracket, values
  in [-1, 1]; we multiply by m_c (a computed per-channel scale, stored with the weights)
  so the quantized weight keeps the float weight's magnitude (tanh W ~ W for small W),
  which matters where no BN follows (classifier, squeeze-excite). Round passes its gradient
  straight through and m_c is treated as a constant (as in eq. 2-39), so
  dŵ/dW = 1 - tanh(W)^2.
  Ternary (a 2-bit option): levels m_c · {-1, 0, +1}; with n = t / m_c, a weight is 0 when
  |n| <= Δ_c = 0.7 · mean |n| (TWN's threshold, Li & Liu 2016), else sign(n); same
  gradient 1 - tanh(W)^2.
- 2/4/8 bit, activations: PACT (Choi et al. 2018) with one learnable clip α per site:
  unsigned sites (inputs known to be >= 0, after ReLU) clip to [0, α] and use 2^k - 1
  steps; signed sites clip to [-α, α] and use 2^(k-1) - 1 steps per side (8 bit: -127..127).
      y = round(clip(x) / s) · s,   s = α / steps
  Gradients (STE through round): dy/dx = 1 inside the clip range (lo <= x < α unsigned,
  -α < x < α signed), else 0; dy/dα = 1 where x >= α, -1 where x <= -α (signed), else 0.
- Gradients (an option; DoReFa-Net, Zhou et al. 2016): `GradQuantize` is the identity
  forward; backward, the gradient dr of a layer's output is quantized to k bits with
  stochastic rounding, the max taken per sample (over every axis but the batch):
      m = max |dr|,  dr^ = 2m · (round_k(dr / (2m) + 1/2 + N) - 1/2),
      round_k(v) = round((2^k - 1) v) / (2^k - 1),  N ~ U(-1/2, 1/2) / (2^k - 1)
  (values clamped to [0, 1] before rounding; DoReFa states no clamp, the noise can push
  the ends just outside). E[dr^] = dr inside the range: the rounding is unbiased.
- 16 bit: rounded through IEEE half precision (values clamped to ±65504 first so nothing
  becomes inf); gradient straight through. 32 bit: identity.
"""

import torch

from nas.quant import _pact

HALF_MAX = 65504.0  # largest finite float16
TERNARY_THRESHOLD = 0.7  # TWN: Δ = 0.7 · mean |w|


def sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where x >= 0 (so 0 and -0.0 give +1), -1 elsewhere; the dtype of x."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


class _NoCtx:
    """Stands in for an autograd ctx while tracing: nothing is saved for a backward."""

    def save_for_backward(self, *tensors):
        pass


def quantizer(fn: type[torch.autograd.Function], *args):
    """`fn.apply(*args)`; while tracing (TorchScript, the ONNX exporter) `fn.forward` as plain
    tensor ops instead: a traced autograd.Function is a Python op TorchScript cannot save,
    and a trace is for inference only. Every quantizer of `nas.quant` is called through here,
    so the fake-quant model is traceable by design."""
    if torch.jit.is_tracing():
        return fn.forward(_NoCtx(), *args)
    return fn.apply(*args)


class ApproxSign(torch.autograd.Function):
    """Bi-Real activation binarizer: sign forward, piecewise-polynomial gradient backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (2.0 - 2.0 * x.abs()).clamp_min(0.0)


class HardTanhSign(ApproxSign):
    """BNN's activation binarizer: ApproxSign's sign forward, hard-tanh gradient 1_{|x| <= 1} backward."""

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1.0).to(grad.dtype)


class GradQuantize(torch.autograd.Function):
    """Identity forward; DoReFa's k-bit stochastic gradient quantization backward (see the
    module docstring). The noise comes from torch's global generator (seeded by the trainer)."""

    @staticmethod
    def forward(ctx, x, bits: int):
        ctx.bits = bits
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return quantize_gradient(grad, ctx.bits), None


def quantize_gradient(grad: torch.Tensor, bits: int, noise: torch.Tensor | None = None) -> torch.Tensor:
    """DoReFa's k-bit gradient: 2m · (round_k(g / 2m + 1/2 + N) - 1/2), m = max |g| per sample.
    `noise`: U(-1/2, 1/2) draws shaped like `grad` (drawn here when None)."""
    levels = 2**bits - 1
    dims = tuple(range(1, grad.dim()))
    m = grad.abs().amax(dim=dims, keepdim=True) if dims else grad.abs()
    m = m.clamp_min(torch.finfo(grad.dtype).tiny)  # an all-zero sample stays zero
    if noise is None:
        noise = torch.rand_like(grad) - 0.5
    v = (grad / (2 * m) + 0.5 + noise / levels).clamp(0.0, 1.0)
    return 2 * m * (torch.round(levels * v) / levels - 0.5)


class SignSTE(torch.autograd.Function):
    """sign forward, identity backward (the weight binarizer's straight-through estimator)."""

    @staticmethod
    def forward(ctx, x):
        return sign(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class RoundSTE(torch.autograd.Function):
    """round-half-to-even forward, identity backward."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class TernarySTE(torch.autograd.Function):
    """{-1, 0, +1} by a per-channel threshold forward, identity backward (w.r.t. n)."""

    @staticmethod
    def forward(ctx, n, delta):
        return (n > delta).to(n.dtype) - (n < -delta).to(n.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class HalfSTE(torch.autograd.Function):
    """Round through float16 forward, identity backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp(-HALF_MAX, HALF_MAX).half().to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


class PACT(torch.autograd.Function):
    """Clipped uniform quantizer with a learnable clip (see the module docstring).

    Float32 CPU tensors go through `nas.quant._pact` (pact.c), one pass each way; anything
    else (float64 for synflow, GPU tensors) through the same formula in PyTorch ops. The
    tests hold the two equal (values and dy/dx at atol=0)."""

    @staticmethod
    def forward(ctx, x, alpha, steps: int, signed: bool):
        ctx.signed, ctx.fast = signed, _pact_c_takes(x)
        if not ctx.fast:
            ctx.save_for_backward(x, alpha)
            return pact_reference(x, alpha, steps, signed)
        if not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous()
        y = torch.empty_like(x)  # same layout as x
        ctx.alpha, ctx.alpha_shape = float(alpha), alpha.shape
        _pact.forward(x.data_ptr(), y.data_ptr(), x.numel(), ctx.alpha, steps, signed, torch.get_num_threads())
        ctx.save_for_backward(x)
        return y

    @staticmethod
    def backward(ctx, grad):
        if not ctx.fast:
            x, alpha = ctx.saved_tensors
            above = x >= alpha
            below = (x <= -alpha) if ctx.signed else (x < 0)
            grad_x = grad * ~(above | below)
            grad_alpha = (grad * above).sum() - ((grad * below).sum() if ctx.signed else 0.0)
            return grad_x, grad_alpha.reshape(alpha.shape), None, None
        (x,) = ctx.saved_tensors
        grad = grad.to(memory_format=torch.channels_last if not x.is_contiguous() else torch.contiguous_format)
        grad_x = torch.empty_like(x)
        clip_grad = _pact.backward(grad.data_ptr(), x.data_ptr(), grad_x.data_ptr(), x.numel(), ctx.alpha,
                                   ctx.signed, torch.get_num_threads())
        return grad_x, torch.tensor(clip_grad, dtype=torch.float32).reshape(ctx.alpha_shape), None, None


def pact_reference(x: torch.Tensor, alpha: torch.Tensor, steps: int, signed: bool):
    """PACT's forward in PyTorch ops: round(clip(x, lo, alpha) / s) * s, s = alpha / steps."""
    lo = -alpha if signed else torch.zeros_like(alpha)
    scale = alpha / steps
    return torch.round(torch.minimum(torch.maximum(x, lo), alpha) / scale) * scale


def _pact_c_takes(x: torch.Tensor) -> bool:
    return x.dtype == torch.float32 and x.device.type == "cpu"


def channel_dims(w: torch.Tensor) -> tuple[int, ...]:
    """All dims but the first (output channels): (1, 2, 3) for a conv, (1,) for a linear."""
    return tuple(range(1, w.dim()))


def binary_scale(w: torch.Tensor) -> torch.Tensor:
    """α_c = mean |W| per output channel, shape (C_out,); computed, never learned."""
    return w.detach().abs().mean(dim=channel_dims(w))


def dorefa_scale(w: torch.Tensor) -> torch.Tensor:
    """m_c = max |tanh W| per output channel, shape (C_out,) (at least 1e-8); computed, never learned."""
    return torch.tanh(w.detach()).abs().amax(dim=channel_dims(w)).clamp_min(1e-8)


def dorefa_weight(w: torch.Tensor, bits: int, ternary: bool = False) -> torch.Tensor:
    """DoReFa k-bit weights per output channel (eqs. 2-32 / 2-33, scaled by m_c), or ternary."""
    t = torch.tanh(w)
    m = dorefa_scale(w).reshape((-1,) + (1,) * (w.dim() - 1))  # (C_out, 1, ...)
    if ternary:
        n = t / m
        delta = TERNARY_THRESHOLD * n.detach().abs().mean(dim=channel_dims(w), keepdim=True)
        return m * quantizer(TernarySTE, n, delta)
    levels = 2**bits - 1
    w01 = t / (2 * m) + 0.5  # eq. 2-32, in [0, 1]
    return m * (2 * quantizer(RoundSTE, levels * w01) / levels - 1)  # eq. 2-33, times m_c


def quantize_weight(w: torch.Tensor, bits: int, ternary: bool = False) -> torch.Tensor:
    """The fake-quantized weight used by the forward pass (1 bit: α_c · sign(W))."""
    if bits == 32:
        return w
    if bits == 16:
        return quantizer(HalfSTE, w)
    if bits == 1:
        shape = (-1,) + (1,) * (w.dim() - 1)
        return quantizer(SignSTE, w) * binary_scale(w).reshape(shape)
    return dorefa_weight(w, bits, ternary)


def act_steps(bits: int, signed: bool) -> int:
    """Quantization steps between 0 and the clip: 2^k - 1 unsigned, 2^(k-1) - 1 signed."""
    return 2 ** (bits - 1) - 1 if signed else 2**bits - 1
