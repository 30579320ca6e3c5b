"""The compressed bundle `nas compress` writes, and the model `nas infer` rebuilds from its payload.

A compressed bundle is a directory::

    payload.bin          every layer's record (`nas.cost.layout`: dense / bitmap / relative / pq,
                         or the int8 PTQ record); exactly the predicted `weight_bytes`
    weights.safetensors  the compressed model's float weights (a reference; not read back)
    manifest.json        format `nas-compressed/1`: the source network (`source`: a built-in
                         model, an arch string or the `nas export` bundle it came from), the input
                         normalisation, test accuracy before / after, the per-layer table, the
                         payload index (name, kind, shape, encoding, codebook bits, pq (d, k),
                         offset, bytes), the PTQ mode, sha256 of every file

`load_compressed_bundle` checks every hash, rebuilds the network's skeleton from `source`
(every layer resized to the shape the index records: structured pruning and neuron removal
change them), and fills each layer's weight and bias by decoding payload.bin alone
(`nas.compress.payload.decode_layer` / `decode_ptq_layer`). A static PTQ site gets its
stored (scale, zero point) back; a dynamic one ranges its input per call, as in
`nas.compress.ptq`. The result is a plain PyTorch model: `nas infer` runs it.
"""

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from nas import fsio, limits
from nas.compress.prune import layers_of
from nas.cost import layout
from nas.errors import UsageError
from nas.manifest import MANIFEST, digest, file_entries, read_verified

FORMAT = "nas-compressed/1"
FILES = ("payload.bin", "weights.safetensors")


def read_format(bundle_dir) -> str | None:
    """The `format` field of a bundle's manifest.json; None when there is none to read
    (no directory, no manifest, not JSON): the caller's own checks then say what is wrong."""
    path = Path(bundle_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = limits.load_json(path, "bundle manifest")
    except (ValueError, UnicodeDecodeError, UsageError):
        return None
    return manifest.get("format") if isinstance(manifest, dict) else None


def is_compressed(bundle_dir) -> bool:
    return read_format(bundle_dir) == FORMAT


def payload_index(model: nn.Module, ptq: dict | None = None) -> list[dict]:
    """One entry per layer in payload order: what the reader needs to decode its record."""
    from nas.compress.payload import model_plan

    plans = None if ptq is not None else model_plan(model)
    entries, offset = [], 0
    for i, (name, m) in enumerate(layers_of(model)):
        shape = tuple(m.weight.shape)
        kind = "conv" if isinstance(m, nn.Conv2d) else "linear"
        if ptq is not None:
            nbytes = layout.layer_bytes(8, shape[0], *shape[1:]) + layout.affine_act_bytes(ptq["mode"] == "static")
            entry = {"encoding": "int8"}
        else:
            p = plans[i]
            nbytes = p.record_bytes
            entry = {"encoding": layout.ENCODING_NAMES[p.encoding], "share_bits": p.share_bits,
                     "pq": list(p.pq) if p.pq else None}
        entries.append({"layer": name, "kind": kind, "shape": list(shape), **entry, "offset": offset,
                        "bytes": nbytes})
        offset += nbytes
    return entries


def write_compressed_bundle(out, model: nn.Module, payload: bytes, manifest: dict) -> dict:
    """Write `out` atomically: payload.bin, weights.safetensors (parametrizations baked in) and
    manifest.json (`manifest` plus format, file hashes and its own digest). Returns the manifest."""
    from torch.nn.utils import parametrize

    state = {}
    for name, m in model.named_modules():  # the float weights as the model computes them, not its codebooks
        if parametrize.is_parametrized(m, "weight"):
            state[f"{name}.weight"] = m.weight.detach().contiguous().clone()
    for k, v in model.state_dict().items():
        if ".parametrizations." not in k:
            state.setdefault(k, v.detach().contiguous().clone())
    manifest = {"format": FORMAT, **manifest}
    with fsio.atomic_dir(out) as tmp:
        (tmp / "payload.bin").write_bytes(payload)
        save_file(state, str(tmp / "weights.safetensors"))
        manifest["files"] = file_entries(tmp, FILES)
        manifest["manifest_sha256"] = digest(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str) + "\n", encoding="utf-8")
    return manifest


def verify_compressed_bundle(bundle_dir) -> dict:
    return read_verified(bundle_dir, FORMAT, FILES, writer="nas compress", redo="compress again")


def skeleton(manifest: dict) -> nn.Module:
    """The source network with every layer plain (BatchNorm folded), weights not yet set."""
    from nas.compress.model import fold_batchnorm_, hand_model, plain_from_arch

    source, inp = manifest["source"], manifest["input"]
    if source.get("arch"):
        from nas.blocks.model import build_model
        from nas.space import decode

        return plain_from_arch(build_model(decode(source["arch"])))
    model = hand_model(source["model"], inp["in_chs"], inp["resolution"], manifest["num_classes"],
                       source.get("width") or 1.0)
    return fold_batchnorm_(model)  # a no-op on a net without BatchNorm


def _resized(m: nn.Module, shape: list[int]) -> nn.Module:
    """`m` itself when its weight has `shape`, else a layer of the same kind and geometry at `shape`."""
    if list(m.weight.shape) == list(shape):
        return m
    if isinstance(m, nn.Conv2d):
        return nn.Conv2d(shape[1] * m.groups, shape[0], m.kernel_size, m.stride, m.padding, m.dilation, m.groups)
    return nn.Linear(shape[1], shape[0])


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


@torch.no_grad()
def model_from_payload(manifest: dict, payload: bytes) -> nn.Module:
    """The compressed network, every weight and bias decoded from `payload` (eval mode)."""
    from nas.compress.payload import decode_layer, decode_ptq_layer
    from nas.compress.ptq import ActQuantHook

    index = manifest["payload"]["layers"]
    model = skeleton(manifest)
    layers = layers_of(model)
    if [n for n, _ in layers] != [e["layer"] for e in index]:
        raise ValueError(f"the payload index names {len(index)} layers, the network has {len(layers)} "
                         f"({[n for n, _ in layers][:3]}... vs {[e['layer'] for e in index][:3]}...)")
    if len(payload) != sum(e["bytes"] for e in index):
        raise ValueError(f"payload of {len(payload)} bytes; the index lists {sum(e['bytes'] for e in index)}")
    ptq = manifest.get("ptq")
    for (name, m), e in zip(layers, index):
        layer = _resized(m, e["shape"])
        if layer is not m:
            _set(model, name, layer)
        rec = payload[e["offset"]:e["offset"] + e["bytes"]]
        if ptq is not None:
            w, b, used = decode_ptq_layer(rec, tuple(e["shape"]), ptq["mode"] == "static")
            if ptq["mode"] == "static":
                tail = rec[used - layout.AFFINE_ACT_BYTES:used]
                scale = torch.from_numpy(np.frombuffer(tail[:4], dtype="<f4").copy()).reshape(())
                zero = torch.tensor(float(np.frombuffer(tail[4:], dtype="<i4")[0]), dtype=torch.float32)
                layer.register_forward_pre_hook(ActQuantHook(ptq["bits"], ptq["act_symmetric"], scale, zero))
            else:
                layer.register_forward_pre_hook(ActQuantHook(ptq["bits"], ptq["act_symmetric"]))
        else:
            w, b, used = decode_layer(rec, e["kind"], tuple(e["shape"]), e["share_bits"],
                                      tuple(e["pq"]) if e["pq"] else None)
        if used != e["bytes"]:
            raise ValueError(f"{name}: record of {e['bytes']} bytes decoded from {used}")
        layer.weight = nn.Parameter(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)), requires_grad=False)
        layer.bias = nn.Parameter(torch.from_numpy(b.astype(np.float32)), requires_grad=False)
    model.eval()
    model.layer_paths = [{"name": e["layer"], "path": "float", "encoding": e["encoding"]} for e in index]
    return model


def load_compressed_bundle(bundle_dir) -> tuple[dict, nn.Module]:
    """(manifest, model) from manifest.json and payload.bin, after every hash is checked."""
    d = Path(bundle_dir)
    manifest = verify_compressed_bundle(d)
    try:
        model = model_from_payload(manifest, (d / "payload.bin").read_bytes())
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"bundle {d}: payload.bin does not fit {MANIFEST}'s network ({e})") from None
    return manifest, model
