"""Post-training affine quantization (seed 001): q = clamp(round(x / s) + z, -2^{n-1}, 2^{n-1} - 1).

n bits hold the integers -2^{n-1} .. 2^{n-1} - 1 (seed 001, sec. 2: 3 bits -> -4..3); a real
x is represented by s * (q - z). Symmetric: z = 0, s = max|x| / (2^{n-1} - 1). Asymmetric:
the range [lo, hi] (always containing 0, so that 0 is exact) maps onto the full integer
range, s = (hi - lo) / (2^n - 1), z = round(-2^{n-1} - lo / s).

Calibration picks the range from data: min/max, a percentile of |x|, or the clip that
minimises the quantization MSE. Static PTQ fixes every activation site's (s, z) from a few
hundred training images; dynamic PTQ quantizes the weights only and computes each
activation's range from the tensor at run time (seed 002: "Dynamic ... inference 시점에
동적으로 activation을 양자화 / Static ... 모두 양자화").

The error (seed 001, sec. 4: the area between the line and the staircase) is reported per
layer as MSE and SQNR = 10 log10(sum x^2 / sum (x - x_hat)^2) dB.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from nas.compress.prune import layers_of
from nas.errors import UsageError

CALIBRATIONS = ("minmax", "percentile", "mse")


def int_range(bits: int) -> tuple[int, int]:
    """(-2^{n-1}, 2^{n-1} - 1): the integers n bits hold (seed 001)."""
    if not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits={bits!r}: expected an integer 2..16")
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def quantize(x: torch.Tensor, scale, zero_point, bits: int) -> torch.Tensor:
    """clamp(round(x / s) + z, -2^{n-1}, 2^{n-1} - 1) as integers (int32). round: half to even."""
    qmin, qmax = int_range(bits)
    return torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax).to(torch.int32)


def dequantize(q: torch.Tensor, scale, zero_point) -> torch.Tensor:
    return (q.to(torch.float32) - zero_point) * scale


def fake_quantize(x: torch.Tensor, scale, zero_point, bits: int) -> torch.Tensor:
    return dequantize(quantize(x, scale, zero_point, bits), scale, zero_point)


def affine_params(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point) mapping [lo, hi] onto the n-bit integers; elementwise (per channel)."""
    qmin, qmax = int_range(bits)
    lo = torch.minimum(torch.as_tensor(lo, dtype=torch.float32), torch.zeros(()))
    hi = torch.maximum(torch.as_tensor(hi, dtype=torch.float32), torch.zeros(()))
    tiny = torch.finfo(torch.float32).tiny
    if symmetric:
        scale = torch.clamp(torch.maximum(-lo, hi) / qmax, min=tiny)
        return scale, torch.zeros_like(scale)
    scale = torch.clamp((hi - lo) / (qmax - qmin), min=tiny)
    zero = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax)
    return scale, zero


def _reduce_dims(x: torch.Tensor, per_channel: bool) -> tuple[int, ...] | None:
    return tuple(range(1, x.dim())) if per_channel and x.dim() > 1 else None


def _amin_amax(x: torch.Tensor, per_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    dims = _reduce_dims(x, per_channel)
    if dims is None:
        return x.min(), x.max()
    return x.amin(dim=dims), x.amax(dim=dims)


def _shape(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-channel vector broadcast against x's leading (channel) dimension."""
    return v.reshape(-1, *([1] * (x.dim() - 1))) if v.dim() == 1 else v


def calibrate_range(x: torch.Tensor, method: str = "minmax", bits: int = 8, symmetric: bool = False,
                    per_channel: bool = False, percentile: float = 99.99) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) for `x` by min/max, a percentile of the values, or the MSE-optimal clip.

    mse: the clip c * (lo, hi) for c in 0.30, 0.31, ..., 1.00 with the least quantization MSE
    (a grid search; per channel when `per_channel`).
    """
    if method not in CALIBRATIONS:
        raise ValueError(f"calibration {method!r}: expected one of {CALIBRATIONS}")
    x = x.detach().float()
    if method == "minmax":
        return _amin_amax(x, per_channel)
    if method == "percentile":
        flat = x.reshape(x.shape[0], -1) if per_channel and x.dim() > 1 else x.reshape(1, -1)
        q = torch.tensor([(100 - percentile) / 100, percentile / 100])
        # torch.quantile caps its input size; sort-based quantile avoids that limit
        lo_hi = torch.stack([_quantile(row, q) for row in flat])  # (C, 2)
        lo, hi = lo_hi[:, 0], lo_hi[:, 1]
        return (lo, hi) if per_channel and x.dim() > 1 else (lo[0], hi[0])
    lo0, hi0 = _amin_amax(x, per_channel)
    best_err, best = None, (lo0, hi0)
    dims = _reduce_dims(x, per_channel)
    for c in torch.arange(30, 101) / 100:
        lo, hi = lo0 * c, hi0 * c
        s, z = affine_params(lo, hi, bits, symmetric)
        err = (fake_quantize(x, _shape(s, x), _shape(z, x), bits) - x).pow(2)
        err = err.mean() if dims is None else err.mean(dim=dims)
        if best_err is None:
            best_err, best = err, (lo, hi)
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = (torch.where(better, lo, best[0]), torch.where(better, hi, best[1]))
    return best


def _quantile(row: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    s = row.sort().values
    pos = q * (len(s) - 1)
    i0 = pos.floor().long()
    i1 = torch.clamp(i0 + 1, max=len(s) - 1)
    frac = pos - i0
    return s[i0] * (1 - frac) + s[i1] * frac


def quant_error(x: torch.Tensor, x_hat: torch.Tensor) -> dict:
    """MSE and SQNR (dB) of a reconstruction; SQNR is inf when exact."""
    x, x_hat = x.detach().double(), x_hat.detach().double()
    noise = (x - x_hat).pow(2).sum().item()
    signal = x.pow(2).sum().item()
    mse = noise / max(x.numel(), 1)
    sqnr = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)
    return {"mse": mse, "sqnr_db": sqnr}


@dataclass(frozen=True)
class PTQConfig:
    """How to quantize a model after training."""

    mode: str = "static"  # static: fixed activation (s, z); dynamic: activations ranged at run time
    bits: int = 8
    calibration: str = "minmax"  # activation range: minmax | percentile | mse
    weight_symmetric: bool = True  # weights: symmetric per output channel (fits the 8-bit payload record)
    act_symmetric: bool = False  # activations: asymmetric per tensor (uses the whole range after ReLU)

    def __post_init__(self):
        if self.mode not in ("static", "dynamic"):
            raise UsageError(f"--ptq mode {self.mode!r}: expected static or dynamic")
        if self.bits not in (8,):
            raise UsageError(f"--ptq bits {self.bits!r}: expected 8 (the int8 payload record)")
        if self.calibration not in CALIBRATIONS:
            raise UsageError(f"--calibration {self.calibration!r}: expected one of {CALIBRATIONS}")


def parse_ptq(text: str) -> PTQConfig:
    """'static8' / 'dynamic8' -> PTQConfig."""
    for mode in ("static", "dynamic"):
        if text.startswith(mode) and text[len(mode):].isdigit():
            return PTQConfig(mode=mode, bits=int(text[len(mode):]))
    raise UsageError(f"--ptq {text!r}: expected static8 or dynamic8")


class ActQuantHook:
    """forward_pre_hook fake-quantizing a layer's input: fixed (s, z) or ranged per call."""

    def __init__(self, bits: int, symmetric: bool, scale=None, zero=None):
        self.bits, self.symmetric, self.scale, self.zero = bits, symmetric, scale, zero

    def __call__(self, module, inputs):
        (x,) = inputs
        if self.scale is None:  # dynamic
            s, z = affine_params(x.min(), x.max(), self.bits, self.symmetric)
        else:
            s, z = self.scale, self.zero
        return (fake_quantize(x, s, z, self.bits),)


def quantize_weights_(layers, bits: int, symmetric: bool) -> list[dict]:
    """Replace each layer's weight by its per-channel fake-quantized value; return the errors."""
    rows = []
    for name, m in layers:
        w = m.weight.detach()
        lo, hi = calibrate_range(w, "minmax", bits, symmetric, per_channel=True)
        s, z = affine_params(lo, hi, bits, symmetric)
        w_hat = fake_quantize(w, _shape(s, w), _shape(z, w), bits)
        rows.append({"layer": name, **{f"weight_{k}": v for k, v in quant_error(w, w_hat).items()}})
        with torch.no_grad():
            m.weight.copy_(w_hat)
        m.ptq_weight_scale = s  # (C_out,) read by the payload writer
    return rows


@torch.no_grad()
def apply_ptq(model: nn.Module, calib_images: torch.Tensor, config: PTQConfig) -> list[dict]:
    """Quantize `model` in place (weights per channel, activations per config); return the error table.

    calib_images: (N, C, H, W) training images; static PTQ ranges every site on them, and both
    modes report each site's activation error on them.
    """
    model.eval()
    layers = layers_of(model)
    seen: dict[str, list[torch.Tensor]] = {n: [] for n, _ in layers}
    handles = [m.register_forward_pre_hook(lambda mod, inp, n=n: seen[n].append(inp[0].detach()))
               for n, m in layers]
    model(calib_images)
    for h in handles:
        h.remove()
    rows = quantize_weights_(layers, config.bits, config.weight_symmetric)
    for row, (name, m) in zip(rows, layers):
        x = torch.cat([t.reshape(t.shape[0], -1) for t in seen[name]])
        if config.mode == "static":
            lo, hi = calibrate_range(x, config.calibration, config.bits, config.act_symmetric)
            s, z = affine_params(lo, hi, config.bits, config.act_symmetric)
            hook = ActQuantHook(config.bits, config.act_symmetric, s, z)
        else:
            s, z = affine_params(x.min(), x.max(), config.bits, config.act_symmetric)
            hook = ActQuantHook(config.bits, config.act_symmetric)
        row.update({f"act_{k}": v for k, v in quant_error(x, fake_quantize(x, s, z, config.bits)).items()})
        row["act_scale"], row["act_zero_point"] = float(s), int(z)
        m.register_forward_pre_hook(hook)
        m.ptq_act = (s, z) if config.mode == "static" else None  # the static site's stored (scale, zero point)
    return rows
