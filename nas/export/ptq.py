"""Static 8-bit post-training quantization of a `nas export` bundle's full-precision layers.

`nas compress --bundle B --ptq static8` on a bundle that already has quantized layers (a
search's mixed-precision pick) keeps every quantized layer as it is and makes each 32-bit
weight or activation 8-bit, in the export's own integer semantics, so the result is an
ordinary `nas export` bundle: `payload.bin` of 8-bit records, run by the integer kernels
(`nas infer`), the int8 ONNX and the C export. No retraining; calibration only.

- Weights: the 8-bit record's levels are the odd integers -255..255 times a per-channel
  scale (`nas.quant.integer.weight_codes`: DoReFa's w = m (2q/255 - 1)), a symmetric
  mid-rise quantizer of step 2 max|W_c| / 255. A float weight W_c is written as the latent
  weight atanh(W_c / k_c) with k_c = 2 max|W_c| (so tanh gives it back, |.| <= 0.5) and
  k_c moves into the BatchNorm that reads the conv (gamma * k_c, running_mean / k_c): the
  same function, now through DoReFa's 8-bit rounding. A 32-bit layer with no BatchNorm
  after it is refused (nothing would carry k_c).
- Activations: each new 8-bit input site is a PACT clip (unsigned after a ReLU, signed
  otherwise, as the builder decides), set from the float model's inputs on
  `--calib-images` training images: `minmax` (the largest value, or |value| when signed),
  `percentile` (99.99 %) or `mse` (the clip of 0.30 .. 1.00 x minmax with the least
  squared error through the quantizer itself, `pact_reference`).
- The error is reported per converted layer: MSE and SQNR = 10 log10(sum x^2 / sum (x - x^)^2)
  of the weights and of the calibration activations.
"""

import math
from dataclasses import replace

import torch

from nas.errors import UsageError

PTQ_BITS = 8
SAMPLE_VALUES = 1 << 20  # per activation site: a uniform random sample kept for percentile / mse
PERCENTILE = 99.99
MSE_GRID = [0.30 + 0.01 * i for i in range(71)]  # fractions of the minmax clip


def int8_arch(arch):
    """`arch` with every 32-bit weight or activation width made 8-bit (other widths kept, and
    stages with searched sparsity / codebooks, whose compressed float records stay)."""
    def eight(b: int) -> int:
        return PTQ_BITS if b == 32 else b

    def conv(spec):
        return replace(spec, w_bits=eight(spec.w_bits), a_bits=eight(spec.a_bits))

    def block(b):
        if b.sparsity or b.codebook:  # a searched sparse / codebook stage keeps its float record
            return b
        return replace(b, w_bits=eight(b.w_bits), a_bits=eight(b.a_bits),
                       layer_w_bits=tuple(map(eight, b.layer_w_bits)), layer_a_bits=tuple(map(eight, b.layer_a_bits)))

    blocks = tuple(block(b) for b in arch.blocks)
    return replace(arch, stem=conv(arch.stem), blocks=blocks, head=conv(arch.head), fc=conv(arch.fc))


def sqnr_db(x: torch.Tensor, xq: torch.Tensor) -> float:
    noise = float(((x - xq) ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float((x ** 2).sum()) / noise)


def _input_samples(model, names: list[str], images: torch.Tensor, batch_size: int, seed: int) -> dict:
    """name -> a uniform sample (<= SAMPLE_VALUES) of the float inputs of that layer, plus its min / max."""
    modules = dict(model.named_modules())
    gen = torch.Generator().manual_seed(seed)
    seen = {n: {"parts": [], "count": 0, "min": math.inf, "max": -math.inf} for n in names}
    per_batch = max(1, SAMPLE_VALUES * batch_size // max(1, len(images)))

    def hook(name):
        def pre(module, args):
            x = args[0].detach().float().reshape(-1)
            s = seen[name]
            s["min"], s["max"] = min(s["min"], float(x.min())), max(s["max"], float(x.max()))
            take = x if x.numel() <= per_batch else x[torch.randint(x.numel(), (per_batch,), generator=gen)]
            s["parts"].append(take)
        return pre

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                model(images[start:start + batch_size])
    finally:
        for h in handles:
            h.remove()
    return {n: {"sample": torch.cat(s["parts"]), "min": s["min"], "max": s["max"]} for n, s in seen.items()}


def choose_clip(stats: dict, signed: bool, method: str) -> float:
    """The PACT clip of one 8-bit site from its float inputs (module docstring)."""
    from nas.quant.functions import act_steps, pact_reference

    x = stats["sample"]
    top = max(abs(stats["min"]), abs(stats["max"])) if signed else max(stats["max"], 0.0)
    top = max(top, 1e-8)
    if method == "minmax":
        return top
    if method == "percentile":
        v = x.abs() if signed else x.clamp_min(0)
        return max(float(torch.quantile(v[: 1 << 24].double(), PERCENTILE / 100)), 1e-8)
    if method == "mse":
        steps = act_steps(PTQ_BITS, signed)
        errors = [(float(((pact_reference(x, torch.tensor(f * top), steps, signed) - x) ** 2).mean()), f)
                  for f in MSE_GRID]
        return min(errors)[1] * top
    raise UsageError(f"--calibration {method!r}: expected minmax, percentile or mse")


@torch.no_grad()
def quantize_bundle_model(model, images: torch.Tensor, method: str = "minmax", batch_size: int = 64,
                          seed: int = 0):
    """(the 8-bit QuantNet, per-layer error rows) for the trained QuantNet `model` (module docstring)."""
    from nas.blocks.model import build_model
    from nas.quant.bn_fold import bn_partners
    from nas.quant.functions import act_steps, pact_reference, quantize_weight

    new = build_model(int8_arch(model.arch))
    old_layers = {layer.name: layer for layer in model.quant_layers()}
    new_layers = new.quant_layers()
    if [layer.name for layer in new_layers] != list(old_layers):
        raise AssertionError("the 8-bit arch built other layers than the bundle's")
    converted = [layer for layer in new_layers
                 if (layer.w_bits, layer.a_bits) != (old_layers[layer.name].w_bits, old_layers[layer.name].a_bits)]
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    clips = {f"{layer.name}.act_quant.clip" for layer in converted}
    if unexpected or set(missing) - clips:
        raise AssertionError(f"state dict mismatch: missing {sorted(set(missing) - clips)}, unexpected {unexpected}")
    if not converted:
        raise UsageError("--ptq static8: the bundle has no 32-bit layer; expected one to make 8-bit")

    partners = bn_partners(new)
    new_act = [layer.name for layer in converted if old_layers[layer.name].a_bits == 32]
    stats = _input_samples(model, new_act, images, batch_size, seed)
    rows = []
    for layer in converted:
        old, m = old_layers[layer.name], layer.module
        row = {"layer": layer.name, "bits_before": f"w{old.w_bits}a{old.a_bits}",
               "bits_after": f"w{layer.w_bits}a{layer.a_bits}"}
        if old.w_bits == 32:
            w = old.module.weight.detach().float()
            k = 2 * w.abs().amax(dim=tuple(range(1, w.dim()))).clamp_min(1e-12)  # (C_out,)
            shape = (-1,) + (1,) * (w.dim() - 1)
            bn_name, bn = partners.get(layer.name, (None, None))
            if bn is None or bn.weight is None:
                raise UsageError(f"--ptq static8: layer {layer.name} is 32-bit with no BatchNorm after it; expected "
                                 f"one to carry the 8-bit record's scale (this layer cannot be made 8-bit here)")
            m.weight.copy_(torch.atanh(w / k.reshape(shape)))
            bn.weight.mul_(k)
            bn.running_mean.div_(k)
            wq = quantize_weight(m.weight, PTQ_BITS) * k.reshape(shape)
            row.update(weight_mse=float(((w - wq) ** 2).mean()), weight_sqnr_db=sqnr_db(w, wq))
        if layer.name in stats:
            aq = m.act_quant
            clip = choose_clip(stats[layer.name], aq.signed, method)
            aq.clip.fill_(clip)
            x = stats[layer.name]["sample"]
            xq = pact_reference(x, torch.tensor(clip), act_steps(PTQ_BITS, aq.signed), aq.signed)
            row.update(act_signed=aq.signed, act_clip=clip, act_mse=float(((x - xq) ** 2).mean()),
                       act_sqnr_db=sqnr_db(x, xq))
        rows.append(row)
    return new.eval(), rows


def ptq_export(bundle_dir, out, data, *, method: str, calib_images: int, batch_size: int = 64, seed: int = 0,
               force: bool = False) -> dict:
    """Make the 32-bit layers of `nas export` bundle `bundle_dir` 8-bit and export the result
    to `out` (a `nas export` bundle; its manifest adds `ptq` and the source's accuracy)."""
    from pathlib import Path

    from nas.compress.pipeline import calibration_images
    from nas.export.bundle import check_output, export_model, verify_bundle
    from nas.export.trial import trained_model
    from nas.space import decode
    from nas.weights import read_weights

    check_output(out, force)
    manifest = verify_bundle(bundle_dir)
    path = Path(bundle_dir) / "weights.safetensors"
    state, _ = read_weights(str(path), "--bundle weights")
    model = trained_model(decode(manifest["arch"]), state, path, manifest["arch"]).eval()
    images = calibration_images(data, calib_images, batch_size)
    new, rows = quantize_bundle_model(model, images, method, batch_size, seed)
    info = {k: manifest.get(k) for k in ("study", "trial", "dataset", "seed")}
    info["ptq"] = {"mode": "static8", "calibration": method, "calib_images": calib_images,
                   "source_bundle": str(bundle_dir), "source_arch": manifest["arch"],
                   "source_accuracy": manifest["accuracy"], "source_weight_bytes": manifest["weight_bytes"],
                   "layers": rows}
    return export_model(new, out, data.test, info=info, force=force)
