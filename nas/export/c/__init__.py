"""`nas export --format c`: the model as a dependency-free C99 package in the bundle's `c/`.

Files: `model.h` / `model.c` (the payload as one const byte array, exactly payload.bin, the
conv descriptors and the step table that `nas_model_run` hands to `nas_model_exec`: the model
is data, so `nas.cost.mcu` prices its flash exactly before training), `nas_ops.h` / `nas_ops.c` (the
operations, reading weights in the payload layout of `nas.cost.layout`), `int_epilogue.h`
(the integer epilogue, shipped from `nas/kernels`: one definition for `nas infer` and C),
`main.c` (host driver), `Makefile`. One static arena, no malloc.

The operations follow `nas infer`'s packed model (`nas.export.packed`), module by module, as
`lower` walks it: integer layers (input codes, exact int32 sum, float32 epilogue of
`nas.quant.integer` with -ffp-contract=off), binary layers (sign-pack, XNOR-popcount with
one-padding, acc · scale + bias + residual), ReLU / h-swish, residual adds, the binary
shortcut's 2x2 average pool and the global pool (`FixedOrderAvgPool`). Float 16/32-bit
conv / linear layers, searched sparse / codebook ones included, have no C form: such a bundle
is a one-line UsageError naming the layer.

Arena: the tensors' lifetimes over the operation order (the cost model's rule: inputs and
output live together while an operation runs), 8-byte aligned, placed by
`nas.cost.mcu.plan_arena` (the planner `sram_bytes` is priced with).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from nas.errors import UsageError

HERE = Path(__file__).parent
KERNELS = HERE.parent.parent / "kernels"
SOURCES = {"nas_ops.h": HERE, "nas_ops.c": HERE, "int_epilogue.h": KERNELS}
CFLAGS = "-std=c99 -O2 -ffp-contract=off -Wall"
ALIGN = 8


def f32(v) -> str:
    """A float32 value as an exact C hex-float literal."""
    return float(np.float32(v)).hex() + "f"


@dataclass
class Tensor:
    shape: tuple  # (H, W, C)
    kind: str  # "f32" | "u8" | "s8" (activation codes) | "bits" (packed signs)
    code_bits: int = 8  # u8 / s8: the codes' width, packed per pixel (nas_ops.h)
    offset: int = -1

    @property
    def nbytes(self) -> int:
        from nas.cost.mcu import c_tensor_bytes

        return c_tensor_bytes(self.shape, self.kind, self.code_bits)  # "u8" / "s8": codes


@dataclass
class Op:
    """One row of model.c's step table (`nas_step` in nas_ops.h)."""

    op: str  # NAS_OP_* without the prefix: QUANTIZE, INT_CONV, PACK_SIGNS, BINARY_CONV, RELU, HSWISH, ADD, ...
    inputs: list  # main input, then the residual / second operand
    output: Tensor
    name: str
    conv: str | None = None  # the nas_conv initializer (int_conv / binary_conv)
    n: int = 0
    hwc: tuple = (0, 0, 0)
    q: tuple = (0.0, 0.0, 0.0)  # quantize: lo, alpha, s
    bits: int = 0  # quantize: the codes' width


# C step -> the step name nas.cost.mcu.c_program gives it (tests compare the two programs)
COST_OPS = {"QUANTIZE": "quantize", "INT_CONV": "int_conv", "PACK_SIGNS": "pack_signs",
            "BINARY_CONV": "binary_conv", "RELU": "relu", "HSWISH": "hswish", "ADD": "add",
            "AVGPOOL2": "avgpool2", "GLOBAL_AVGPOOL": "global_avgpool"}


@dataclass
class Program:
    ops: list = field(default_factory=list)
    records: dict = field(default_factory=dict)  # layer name -> (offsets of weight, scale, bias)

    def emit(self, name, op, inputs, shape, kind, code_bits=8, **kw):
        out = Tensor(tuple(shape), kind, code_bits)
        self.ops.append(Op(op, list(inputs), out, name, **kw))
        return out


def _refuse(name: str, m: nn.Module, why: str):
    raise UsageError(f"--format c: layer {name or 'model'} ({type(m).__name__}) {why}; the C package holds "
                     f"integer (2/4/8-bit) and binary layers only")


def _conv_struct(prog, name, m, x, Ho, Wo, cout, kh, kw, stride, pad, groups, bits):
    w, s, b = prog.records[name]
    return (f"{{{x.shape[0]}, {x.shape[1]}, {x.shape[2]}, {Ho}, {Wo}, {cout}, {kh}, {kw}, {stride}, {stride}, "
            f"{pad}, {pad}, {groups}, {bits}, nas_payload + {w}, nas_payload + {s}, nas_payload + {b}")


def lower(prog: Program, name: str, m: nn.Module, x: Tensor, residual: Tensor | None = None) -> Tensor:
    """Append the operations of module `m` (a part of the packed model) on input `x`."""
    from nas.blocks.layers import Block
    from nas.export.packed import (FixedOrderAvgPool, PackedBinaryConv2d, PackedBinaryUnit, PackedIntegerConv2d,
                                   ResidualBlock)
    from nas.quant import QuantConv2d, QuantLinear

    def child(n):
        return f"{name}.{n}" if name else n

    if isinstance(m, PackedIntegerConv2d):
        if x.kind == "f32":
            H, W, C = x.shape
            x = prog.emit(name + " (input codes)", "QUANTIZE", [x], x.shape, "s8" if m.signed else "u8",
                          code_bits=m.a_bits, n=H * W, hwc=(H, W, C), q=(m._lo, m._hi, m._step), bits=m.a_bits)
        elif x.code_bits != m.a_bits:
            _refuse(name, m, f"reads {x.code_bits}-bit codes at a_bits={m.a_bits}")
        k = m.kernel
        H, W = x.shape[:2]
        Ho, Wo = k.output_size(H, W)
        (kh, kw), (sh, _), (ph, _) = k.kernel, k.stride, k.padding
        kind = "f32" if m.requant is None else ("s8" if m.requant[0] < 0 else "u8")
        q = m.requant or (0.0, 0.0, 1.0)
        out_bits = 0 if m.requant is None else m.requant_bits
        act = {"none": "NAS_ACT_NONE", "relu": "NAS_ACT_RELU", "hswish": "NAS_ACT_HSWISH"}[m.activation]
        st = (_conv_struct(prog, name, m, x, Ho, Wo, k.out_chs, kh, kw, sh, ph, k.groups, k.w_bits)
              + f", {f32(m._step)}, {m.a_bits}, {int(m.signed)}, {act}, {out_bits}, {f32(q[0])}, {f32(q[1])}, "
              f"{f32(q[2])}}}")
        ins = [x] if residual is None else [x, residual]
        return prog.emit(name, "INT_CONV", ins, (Ho, Wo, k.out_chs), kind, code_bits=out_bits or 8, conv=st)
    if isinstance(m, PackedBinaryUnit):
        r = lower(prog, child("shortcut"), m.shortcut, x)
        return lower(prog, child("conv"), m.conv, x, residual=r)
    if isinstance(m, PackedBinaryConv2d):
        if m.a_bits != 1 or m.groups != 1:
            _refuse(name, m, f"reads its input at a_bits={m.a_bits}, groups={m.groups} (C: a_bits=1, groups=1)")
        if x.kind != "f32":
            _refuse(name, m, "reads codes")
        H, W, C = x.shape
        p = prog.emit(name + " (signs)", "PACK_SIGNS", [x], x.shape, "bits", n=H * W, hwc=(H, W, C))
        k, s, pad = m.kernel, m.stride, m.padding
        Ho, Wo = (H + 2 * pad - k) // s + 1, (W + 2 * pad - k) // s + 1
        st = _conv_struct(prog, name, m, x, Ho, Wo, m.out_chs, k, k, s, pad, 1, 1) + ", 0.0f, 0, 0, 0, 0, 0.0f, 0.0f, 0.0f}"
        ins = [p] if residual is None else [p, residual]
        return prog.emit(name, "BINARY_CONV", ins, (Ho, Wo, m.out_chs), "f32", conv=st)
    if isinstance(m, ResidualBlock):
        y = x
        for n, sub in m.named_children():
            y = lower(prog, child(n), sub, y, residual=x if n == m.last else None)
        return y
    if isinstance(m, (QuantConv2d, QuantLinear)):
        _refuse(name, m, f"runs in float (w_bits={m.w_bits}, a_bits={m.a_bits})")
    if isinstance(m, nn.Sequential) or type(m).__name__ == "QuantNet":
        y = x
        for n, sub in m.named_children():
            y = lower(prog, child(n), sub, y)
        if isinstance(m, Block) and m.has_skip:
            if y.kind != "f32" or x.kind != "f32":
                _refuse(name, m, "adds codes")
            y = prog.emit(name + " (add)", "ADD", [y, x], y.shape, "f32", n=int(np.prod(y.shape)))
        return y
    from nas.export.convert import _execution_order

    order = None if isinstance(m, (nn.Sequential, ResidualBlock)) else _execution_order(m)
    if order is not None:  # timm's ir / ds blocks: their forward written out (nas.export.convert)
        y = x
        for n in order:
            y = lower(prog, child(n), getattr(m, n), y)
        if getattr(m, "has_skip", False):
            y = prog.emit(name + " (add)", "ADD", [y, x], y.shape, "f32", n=int(np.prod(y.shape)))
        return y
    if isinstance(m, (nn.Identity, nn.Flatten, nn.Dropout)):
        return x
    if isinstance(m, (nn.ReLU, nn.Hardswish)):
        if x.kind != "f32":
            _refuse(name, m, "reads codes")
        return prog.emit(name, "RELU" if isinstance(m, nn.ReLU) else "HSWISH", [x], x.shape, "f32",
                         n=int(np.prod(x.shape)))
    if isinstance(m, nn.AvgPool2d) and m.kernel_size in (2, (2, 2)) and m.stride in (2, (2, 2)) and m.ceil_mode \
            and m.padding in (0, (0, 0)):
        H, W, C = x.shape
        return prog.emit(name, "AVGPOOL2", [x], ((H + 1) // 2, (W + 1) // 2, C), "f32", hwc=(H, W, C))
    if isinstance(m, FixedOrderAvgPool):
        H, W, C = x.shape
        return prog.emit(name, "GLOBAL_AVGPOOL", [x], (1, 1, C), "f32", hwc=(H, W, C))
    _refuse(name, m, "has no C form")


def record_offsets(geoms) -> dict:
    """layer name -> byte offsets of its weight, scale (or -1) and bias in the payload."""
    out, pos = {}, 0
    for g in geoms:
        parts = g.part_bytes()
        at = {}
        for part, n in parts.items():
            at[part] = pos
            pos += n
        out[g.name] = (at["weight"], at.get("scale", -1), at["bias"])
    return out


def plan_arena(ops: list, inp: Tensor) -> int:
    """Place every tensor in the static arena (`nas.cost.mcu.plan_arena`, the planner the cost
    model prices `sram_bytes` with); sets each tensor's offset, returns the arena bytes."""
    from nas.cost.mcu import plan_arena as plan

    tensors = [inp] + [op.output for op in ops]
    index = {id(t): i for i, t in enumerate(tensors)}
    steps = [(tuple(index[id(t)] for t in op.inputs), index[id(op.output)]) for op in ops]
    offsets, top = plan([t.nbytes for t in tensors], steps, 0, index[id(ops[-1].output)])
    for i, t in enumerate(tensors):
        t.offset = offsets[i]
    return top


def generate(packed, payload: bytes) -> dict:
    """{file name: text} of the C package for a packed model (`nas.export.deploy.packed_model`)."""
    from nas.blocks.model import build_model
    from nas.export.fold import geometries

    a = packed.arch
    prog = Program(records=record_offsets(geometries(build_model(a))))
    inp = Tensor((a.resolution, a.resolution, a.in_chs), "f32")
    out = lower(prog, "", packed, inp)
    if out.kind != "f32" or out.shape[:2] != (1, 1):
        raise UsageError(f"--format c: the model ends in {out.kind} {out.shape}; expected float32 logits")
    arena = plan_arena(prog.ops, inp)
    convs, steps = [], []
    for op in prog.ops:
        conv = "0"
        if op.conv is not None:
            conv = f"&nas_convs[{len(convs)}]"
            convs.append(f"    /* {len(convs)}: {op.name} */ {op.conv}")
        res = op.inputs[1].offset if len(op.inputs) > 1 else -1
        H, W, C = op.hwc
        steps.append(f"    /* {op.name} */ {{NAS_OP_{op.op}, {op.bits}, {op.inputs[0].offset}, {res}, {op.output.offset}, "
                     f"{op.n}, {H}, {W}, {C}, {conv}, {f32(op.q[0])}, {f32(op.q[1])}, {f32(op.q[2])}}}")
    n_in, n_out = int(np.prod(inp.shape)), out.shape[2]
    body = ",\n".join(",".join(str(b) for b in payload[i:i + 24]) for i in range(0, len(payload), 24))
    model_h = f"""/* Generated by `nas export --format c`: {a.encode() if hasattr(a, 'encode') else ''} */
#ifndef NAS_MODEL_H
#define NAS_MODEL_H

#define NAS_INPUT_H {a.resolution}
#define NAS_INPUT_W {a.resolution}
#define NAS_INPUT_C {a.in_chs}
#define NAS_INPUT_SIZE {n_in}   /* float32, NHWC, normalised as in training (manifest["input"]) */
#define NAS_NUM_CLASSES {n_out}
#define NAS_ARENA_BYTES {arena}
#define NAS_PAYLOAD_BYTES {len(payload)}

/* input: NAS_INPUT_SIZE floats (NHWC); logits: NAS_NUM_CLASSES floats. Returns 0. */
int nas_model_run(const float *input, float *logits);

#endif
"""
    model_c = f"""/* Generated by `nas export --format c`. Weights: payload.bin as it is (nas/cost/layout.py). */
#include <stdint.h>
#include <string.h>

#include "model.h"
#include "nas_ops.h"

const uint8_t nas_payload[NAS_PAYLOAD_BYTES] __attribute__((aligned(8))) = {{
{body}
}};
static uint8_t nas_arena[NAS_ARENA_BYTES] __attribute__((aligned(8)));

/* the conv / linear layers: shapes and where their weight, scale and bias records are in the payload */
static const nas_conv nas_convs[{max(1, len(convs))}] = {{
{(","+chr(10)).join(convs) or "    {0}"}
}};
/* the operations in order: {{op, bits, input, residual, output (arena offsets), n, H, W, C, conv, lo, alpha, s}} */
static const nas_step nas_steps[{len(steps)}] = {{
{(","+chr(10)).join(steps)}
}};
static const nas_model nas_model_desc __attribute__((aligned(8))) = {{
    nas_steps, {len(steps)}, nas_arena, {inp.offset}, sizeof(float) * NAS_INPUT_SIZE, {out.offset},
    sizeof(float) * NAS_NUM_CLASSES}};

int nas_model_run(const float *input, float *logits)
{{
    return nas_model_exec(&nas_model_desc, input, logits);
}}
"""
    files = {"model.h": model_h, "model.c": model_c, "main.c": MAIN_C, "Makefile": MAKEFILE}
    for f, d in SOURCES.items():
        files[f] = (d / f).read_text()
    return {"files": files, "arena_bytes": arena, "ops": len(prog.ops)}


MAIN_C = """/* Host driver: model IMAGES LOGITS. IMAGES: raw float32, N x NAS_INPUT_SIZE (NHWC, normalised);
 * LOGITS: raw float32, N x NAS_NUM_CLASSES, written. */
#include <stdio.h>

#include "model.h"

int main(int argc, char **argv)
{
    static float x[NAS_INPUT_SIZE], y[NAS_NUM_CLASSES];
    if (argc != 3) {
        fprintf(stderr, "usage: %s IMAGES.f32 LOGITS.f32\\n", argv[0]);
        return 2;
    }
    FILE *in = fopen(argv[1], "rb"), *out = fopen(argv[2], "wb");
    if (!in || !out) {
        fprintf(stderr, "%s: cannot open %s or %s\\n", argv[0], argv[1], argv[2]);
        return 2;
    }
    long n = 0;
    while (fread(x, sizeof(float), NAS_INPUT_SIZE, in) == NAS_INPUT_SIZE) {
        nas_model_run(x, y);
        fwrite(y, sizeof(float), NAS_NUM_CLASSES, out);
        n++;
    }
    fclose(in);
    fclose(out);
    fprintf(stderr, "%ld images\\n", n);
    return 0;
}
"""

MAKEFILE = f"""# Host build: make; run: ./model IMAGES.f32 LOGITS.f32
CC ?= gcc
CFLAGS ?= {CFLAGS}
model: main.c model.c nas_ops.c model.h nas_ops.h int_epilogue.h
\t$(CC) $(CFLAGS) -o $@ main.c model.c nas_ops.c -lm
clean:
\trm -f model
"""


def images_f32(test) -> np.ndarray:
    """The test split's normalised images as NHWC float32 (what `nas_model_run` reads)."""
    x = np.stack([test[i][0].numpy() for i in range(len(test))]).astype(np.float32)  # (N, C, H, W)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def host_logits(c_dir: Path, images: np.ndarray, n_classes: int) -> np.ndarray:
    """Build the package with the host's gcc in a temporary directory and run it on images."""
    if shutil.which("gcc") is None:
        raise UsageError("--format c: gcc not found on PATH; expected a host C compiler (Debian: gcc)")
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        for f in Path(c_dir).iterdir():
            shutil.copy(f, t / f.name)
        r = subprocess.run(["make", "-s", "-C", str(t)], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"C package build failed: {r.stderr.strip()[-2000:]}")
        images.tofile(t / "images.f32")
        r = subprocess.run([str(t / "model"), str(t / "images.f32"), str(t / "logits.f32")], capture_output=True,
                           text=True)
        if r.returncode:
            raise RuntimeError(f"C model failed: {r.stderr.strip()}")
        return np.fromfile(t / "logits.f32", np.float32).reshape(len(images), n_classes)


def write(tmp, arch, payload: bytes, manifest: dict, test, predictions, calibration=None) -> dict:
    """`nas.export.formats` hook: write `c/` and check it on the host against `nas infer`."""
    from nas.export.deploy import packed_model
    from nas.blocks.model import build_model
    from nas.export.fold import geometries

    searched = [g for g in geometries(build_model(arch)) if g.searched]
    if searched:
        g = searched[0]
        raise UsageError(f"--format c: layer {g.name} is a searched sparse / codebook record (sparsity {g.sparsity:g}, "
                         f"codebook {g.codebook} bits) that runs in float; the C package holds integer (2/4/8-bit) "
                         f"and binary layers only")

    packed = packed_model(arch, payload)
    gen = generate(packed, payload)
    c_dir = Path(tmp) / "c"
    c_dir.mkdir()
    for f, text in gen["files"].items():
        (c_dir / f).write_text(text)
    images = images_f32(test)
    logits = host_logits(c_dir, images, arch.fc.num_classes)
    preds = logits.argmax(1)
    labels = test.labels.numpy()
    agree = float((preds == np.asarray(predictions)).mean())
    return {"files": sorted(gen["files"]), "payload_bytes": len(payload), "arena_bytes": gen["arena_bytes"],
            "peak_act_bytes": manifest.get("peak_act_bytes"), "operations": gen["ops"],
            "host": {"images": len(test), "accuracy": float((preds == labels).mean()),
                     "prediction_agreement": agree, "compiler": "gcc " + CFLAGS}}


MCU_PACKAGES = "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"
MCU_CFLAGS = ["-std=c99", "-O2", "-ffp-contract=off", "-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16",
              "-mfloat-abi=hard", "-ffunction-sections", "-fdata-sections"]
MCU_FILES = ("mcu_main.c", "mcu.ld")
SYSTICK_HZ = 25_000_000  # mps2-an386's CPU clock (SysTick, processor clock source)


def mcu_tools() -> None:
    """UsageError (exit 2) naming the Debian packages when the cross tools are missing."""
    missing = [t for t in ("arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm") if shutil.which(t) is None]
    if missing:
        raise UsageError(f"--mcu: {', '.join(missing)} not found on PATH; expected the Debian packages "
                         f"{MCU_PACKAGES} (apt-get install -y --no-install-recommends {MCU_PACKAGES})")


def mcu_check(c_dir: Path, images: np.ndarray, n_classes: int, timeout_s: int = 300) -> dict:
    """Cross-compile for Cortex-M4 (hard float), run `images` under qemu-system-arm -M mps2-an386
    -semihosting -icount shift=0; returns logits, sizes (flash, SRAM) and instructions."""
    mcu_tools()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        for f in Path(c_dir).iterdir():
            shutil.copy(f, t / f.name)
        for f in MCU_FILES:
            shutil.copy(HERE / f, t / f)
        rows = ",\n".join("{" + ",".join(f32(v) for v in img.ravel()) + "}" for img in images)
        (t / "mcu_images.h").write_text(f"#define NAS_MCU_IMAGES {len(images)}\nstatic const float "
                                        f"nas_mcu_images[{len(images)}][NAS_INPUT_SIZE] = {{\n{rows}\n}};\n")
        cc = ["arm-none-eabi-gcc", *MCU_CFLAGS]
        subprocess.run([*cc, "-c", "nas_ops.c", "-o", "nas_ops.o"], cwd=t, check=True, capture_output=True)
        r = subprocess.run([*cc, "-nostartfiles", "-T", "mcu.ld", "-Wl,--gc-sections", "-Wl,-Map=model.map",
                            "mcu_main.c", "model.c", "nas_ops.o", "-lm", "-o", "model.elf"], cwd=t,
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"Cortex-M4 build failed: {r.stderr.strip()[-2000:]}")
        sections = _sizes(t / "model.elf")
        kernel_code = sum(v for k, v in _sizes(t / "nas_ops.o").items() if k.startswith(".text"))
        # a HardFault handler exits through semihosting; `timeout` bounds anything else
        r = subprocess.run(["timeout", str(timeout_s), "qemu-system-arm", "-M", "mps2-an386", "-nographic",
                            "-semihosting", "-icount", "shift=0", "-kernel", str(t / "model.elf")],
                           capture_output=True, text=True)
        logits, ticks, stack = [], [], None
        for line in (r.stdout + r.stderr).splitlines():
            if line.startswith("logits "):
                parts = line.split()
                logits.append([int(h, 16) for h in parts[1:1 + n_classes]])
                ticks.append(int(parts[-1]))
            elif line.startswith("stack "):
                stack = int(line.split()[1])
        if len(logits) != len(images):
            raise RuntimeError(f"qemu-system-arm (rc {r.returncode}) printed {len(logits)} of {len(images)} results: "
                               f"{(r.stdout + r.stderr).strip()[-500:]}")
    mcu_logits = np.array(logits, np.uint32).view(np.float32)
    ns_per_tick = 1e9 / SYSTICK_HZ  # -icount shift=0: one instruction per virtual ns
    images_bytes = int(images.size) * 4  # the embedded test images (not part of the model)
    flash = sections.get(".text", 0) + sections.get(".ARM.exidx", 0) + sections.get(".data", 0) - images_bytes
    return {"logits": mcu_logits, "images": len(images), "flash_bytes": flash, "images_bytes": images_bytes, "kernel_code_bytes": kernel_code,
            "sram_bytes": sections.get(".data", 0) + sections.get(".bss", 0) + (stack or 0),
            "data_bytes": sections.get(".data", 0), "bss_bytes": sections.get(".bss", 0), "stack_peak_bytes": stack,
            "instructions_per_inference": int(np.median(ticks) * ns_per_tick),
            "instruction_count_resolution": int(ns_per_tick)}


def _sizes(path: Path) -> dict:
    out = subprocess.run(["arm-none-eabi-size", "-A", str(path)], capture_output=True, text=True, check=True).stdout
    sizes = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            sizes[parts[0]] = int(parts[1])
    return sizes
