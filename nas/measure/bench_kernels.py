"""`nas bench kernels [--bits 1,2,4,8] [--threads N] [--json]`: packed-binary kernels against
PyTorch fp32 (--bits 1, the default); with --bits 2,4,8 also the integer kernels against
PyTorch fp32 and onnxruntime int8 (rows described in nas/measure/bench_int_kernels.py).

Per layer shape (ResNet-18's 3x3 layers and small shapes of a 28x28 binary search space):
the binary layer's time (a prepared `BinaryConv2d`, as a model holds it; median of repeats
after warm-up) in two forms,
  packed: packed input -> packed output, threshold-form epilogue (a binary -> binary layer)
  fused:  packed input -> float output + residual add + packed output (a Bi-Real layer)
PyTorch's fp32 conv2d on the same shape and threads (best of NCHW and channels_last), the
speedup, binary MACs per second, the share of this machine's popcount peak (measured here
by a microkernel of xor + popcount + add on 512-bit vectors from L1, one core, times the
thread count) and bit-exactness against the reference. Then an end-to-end Bi-Real-18 shaped
network (224x224, batch 1) against fp32 torchvision ResNet-18.

Human table on stdout, or one JSON object with --json; progress on stderr. The table says
how much CPU other processes took during the run: timings on a busy machine are skewed
(at 2 threads badly: a parallel region waits for a core). NAS_KERNEL_ISA=avx2 (or portable)
benchmarks a lower kernel level; the peak stays the machine's best.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time

from nas.measure.load import CpuWatch

# (name, H=W, Cin, Cout, k, stride, padding); the first four are the goal shapes
LAYERS = [
    ("resnet18 56x56x64", 56, 64, 64, 3, 1, 1),
    ("resnet18 28x28x128", 28, 128, 128, 3, 1, 1),
    ("resnet18 14x14x256", 14, 256, 256, 3, 1, 1),
    ("resnet18 7x7x512", 7, 512, 512, 3, 1, 1),
    ("space 28x28x32", 28, 32, 32, 3, 1, 1),
    ("space 14x14x64", 14, 64, 64, 3, 1, 1),
    ("space 7x7x128", 7, 128, 128, 3, 1, 1),
    ("space 28->14 x32->64 s2", 28, 32, 64, 3, 2, 1),
]
RESNET_ROWS = 4
GOAL_SPEEDUP = 15.0
GOAL_PEAK_SHARE = 0.70


def add_arguments(parser):
    parser.add_argument("--threads", type=int, action="append", metavar="N",
                        help="thread count for both sides; repeat for several (default: 1 and torch's default)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--seconds", type=float, default=0.4,
                        help="time budget per measurement, in seconds (default: 0.4)")
    parser.add_argument("--no-network", action="store_true", help="skip the end-to-end Bi-Real-18 network")
    parser.add_argument("--bits", default="1", metavar="B[,B...]",
                        help="weight widths to bench: 1 (binary kernels) and/or 2, 4, 8 (integer kernels, "
                             "against PyTorch fp32 and onnxruntime int8); default 1")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _median_times(fns, seconds: float, min_reps: int = 7, block_s: float = 0.02) -> list[float]:
    """Median wall time per call of each function, each timed back to back (warm caches, as
    usual for a per-layer figure) in blocks of ~block_s that take turns between the functions,
    so that a change of load on the machine shifts all of them alike. The first call of each
    block is a warm-up and is not counted."""
    per_call = []
    for fn in fns:
        t0 = time.perf_counter()
        for _ in range(3):
            fn()
        per_call.append((time.perf_counter() - t0) / 3)
    reps = [max(2, min(2000, int(block_s / max(t, 1e-7)))) for t in per_call]
    times = [[] for _ in fns]
    end = time.perf_counter() + seconds * len(fns)
    while min(len(ts) for ts in times) < min_reps or time.perf_counter() < end:
        for fn, n, ts in zip(fns, reps, times):
            fn()
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def _popcount_peak(ext, level: str) -> float:
    """Single-core binary MACs/s of the xor + popcount + add microkernel (best of 5)."""
    reps = 1000
    while True:  # grow until one run takes ~50 ms
        bits, secs, _ = ext.peak(level, reps)
        if secs > 0.05 or reps > 1 << 30:
            break
        reps *= 4
    return max(b / s for b, s, _ in (ext.peak(level, reps) for _ in range(5)))


def _bench_layer(row, threads, seconds, torch, F, K, R):
    name, hw, cin, cout, k, s, p = row
    g = torch.Generator().manual_seed(hw * 1000 + cin)
    x = torch.randn(1, hw, hw, cin, generator=g)                       # NHWC
    w = torch.randn(cout, cin, k, k, generator=g)
    scale, bias = torch.randn(cout, generator=g), torch.randn(cout, generator=g)
    layer = K.BinaryConv2d(K.pack_weights(w), cin, k, s, p, scale, bias)
    Ho, Wo = layer.output_size(hw, hw)
    res = torch.randn(1, Ho, Wo, cout, generator=g)
    xp = K.pack_activations(x)

    ref = R.binary_conv2d(x, w, s, p, scale, bias)
    ref_res = R.binary_conv2d(x, w, s, p, scale, bias, res)
    _, yq = layer(xp, out_float=False, out_packed=True, threads=threads)
    yf, yp = layer(xp, res, out_float=True, out_packed=True, threads=threads)
    exact = bool(torch.equal(yq, R.pack(ref)) and torch.equal(yf, ref_res) and torch.equal(yp, R.pack(ref_res)))

    x_nchw = x.permute(0, 3, 1, 2).contiguous()
    x_cl = x_nchw.contiguous(memory_format=torch.channels_last)
    w_cl = w.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        t_packed, t_fused, t_nchw, t_cl = _median_times([
            lambda: layer(xp, out_float=False, out_packed=True, threads=threads),
            lambda: layer(xp, res, out_float=True, out_packed=True, threads=threads),
            lambda: F.conv2d(x_nchw, w, stride=s, padding=p),
            lambda: F.conv2d(x_cl, w_cl, stride=s, padding=p)], seconds)
    macs = Ho * Wo * cout * cin * k * k
    return {
        "layer": name, "threads": threads, "h": hw, "w": hw, "in_chs": cin, "out_chs": cout, "kernel": k,
        "stride": s, "padding": p, "macs": macs,
        "binary_packed_ms": t_packed * 1e3, "binary_fused_ms": t_fused * 1e3,
        "fp32_ms": min(t_nchw, t_cl) * 1e3, "fp32_layout": "nchw" if t_nchw <= t_cl else "channels_last",
        "speedup_packed": min(t_nchw, t_cl) / t_packed, "speedup_fused": min(t_nchw, t_cl) / t_fused,
        "binary_macs_per_s": macs / t_packed, "bit_exact": exact,
    }


class BiReal18:
    """Bi-Real-18 shaped network on the kernels: 16 binary 3x3 convs with a real-valued
    shortcut around each, BN after each binary conv folded into the kernel's per-channel scale
    and bias; the non-binary parts on the integer kernels at 8 bits, as a deployment runs
    them: the stem conv 7x7/2 (BN folded, ReLU fused) on int8 codes of the image, then a
    float max pool; each downsampling shortcut (avgpool 2x2, then a 1x1 conv with BN folded)
    on int8 codes of the pooled tensor; the average pool and fc in float. Random weights:
    this measures speed and exactness (`forward_reference` runs the binary and integer layers
    on their references: the int64 numpy reference for the integer convs)."""

    IMG_CLIP = 3.0  # the stem's input clip: codes rint(clamp(x, -3, 3) / (3 / 127))
    SHORT_CLIP = 4.0

    def __init__(self, torch, K, seed: int = 0):
        from nas.kernels import integer as I
        nn = torch.nn
        g = torch.Generator().manual_seed(seed)
        self.torch, self.K = torch, K

        def int_layer(cin, cout, k, stride, padding, clip, activation):
            w = (2 * torch.randint(0, 256, (cout, cin, k, k), generator=g) - 255).to(torch.int16)  # 8-bit DoReFa codes
            scale = ((torch.rand(cout, generator=g) + 0.5) * (clip / 127) / (255 * (k * k * cin) ** 0.5)).float()
            bias = (torch.randn(cout, generator=g) * 0.1).float()
            spec = (w, scale, bias, stride, padding, activation, clip)
            return spec, I.IntegerConv(w, 8, stride, padding, 1, scale, bias, activation)

        self.stem, self.stem_conv = int_layer(3, 64, 7, 2, 3, self.IMG_CLIP, "relu")
        self.pool = nn.MaxPool2d(3, 2, 1).eval()
        self.convs, self.downs = [], []
        cin = 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            for i in range(4):
                s = stride if i == 0 else 1
                w = torch.randn(cout, cin, 3, 3, generator=g)
                scale = torch.rand(cout, generator=g) * 0.02 + 0.005  # |W| mean x BN gamma / sigma
                bias = torch.randn(cout, generator=g) * 0.1
                down = None
                if s != 1 or cin != cout:
                    down = int_layer(cin, cout, 1, 1, 0, self.SHORT_CLIP, "none")
                self.convs.append((w, scale, bias, s, K.BinaryConv2d(K.pack_weights(w), cin, 3, s, 1, scale, bias)))
                self.downs.append(down)
                cin = cout
        self.fc = nn.Linear(512, 1000).eval()
        for prm in self.fc.parameters():
            prm.requires_grad_(False)

    def _codes(self, x_nhwc, clip):
        torch = self.torch
        return torch.clamp(x_nhwc, -clip, clip).div_(clip / 127).round_().to(torch.int8).contiguous()

    def _int(self, spec_layer, x_nhwc, threads, reference):
        (w, scale, bias, stride, padding, activation, clip), layer = spec_layer
        x = self._codes(x_nhwc, clip)
        if not reference:
            return layer(x, threads=threads)
        from nas.kernels import int_reference as R
        y = R.conv2d(x.numpy(), w.numpy(), (stride, stride), (padding, padding), 1, scale.numpy(), bias.numpy(),
                     None, activation)
        return self.torch.from_numpy(y)

    def _front(self, img, threads, reference):
        torch = self.torch
        h = self._int((self.stem, self.stem_conv), img.permute(0, 2, 3, 1), threads, reference)  # NHWC float
        return self.pool(h.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # NCHW view of NHWC memory and back

    def _short(self, h, down, threads, reference):
        if down is None:
            return h
        pooled = self.torch.nn.functional.avg_pool2d(h.permute(0, 3, 1, 2), 2, 2).permute(0, 2, 3, 1)
        return self._int(down, pooled, threads, reference)

    def _head(self, h_nhwc):
        return self.fc(h_nhwc.mean(dim=(1, 2)))

    def forward(self, img, threads):
        """Kernel path: packed activations between the binary layers, int8 codes into the
        integer layers, float for the shortcuts' adds."""
        K = self.K
        h = self._front(img, threads, reference=False)
        hp = K.pack_activations(h, threads=threads)
        for (_, _, _, _, layer), down in zip(self.convs, self.downs):
            short = self._short(h, down, threads, reference=False)
            h, hp = layer(hp, short, out_float=True, out_packed=True, threads=threads)
        return self._head(h)

    def forward_reference(self, img):
        """Same network with the references in place of the kernels."""
        from nas.kernels import reference as R
        h = self._front(img, 1, reference=True)
        for (w, scale, bias, s, _), down in zip(self.convs, self.downs):
            short = self._short(h, down, 1, reference=True)
            h = R.binary_conv2d(h, w, s, 1, scale, bias, short.contiguous())
        return self._head(h)


def _bench_network(threads, seconds, torch, K):
    import torchvision
    g = torch.Generator().manual_seed(1)
    img = torch.randn(1, 3, 224, 224, generator=g)
    net = BiReal18(torch, K)
    resnet = torchvision.models.resnet18(weights=None).eval()
    resnet_cl = torchvision.models.resnet18(weights=None).eval().to(memory_format=torch.channels_last)
    img_cl = img.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        exact = bool(torch.equal(net.forward(img, threads), net.forward_reference(img)))
        t_bin, t_nchw, t_cl = _median_times([lambda: net.forward(img, threads), lambda: resnet(img),
                                             lambda: resnet_cl(img_cl)], seconds * 3, min_reps=5)
    return {"network": "Bi-Real-18 (224x224, batch 1) vs fp32 ResNet-18", "threads": threads,
            "binary_ms": t_bin * 1e3, "fp32_ms": min(t_nchw, t_cl) * 1e3,
            "fp32_layout": "nchw" if t_nchw <= t_cl else "channels_last",
            "speedup": min(t_nchw, t_cl) / t_bin, "bit_exact": exact}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _table(result) -> str:
    lines = []
    m = result["machine"]
    other = "unknown" if m["others_load"] is None else f"{m['others_load']:.0%}"
    lines.append(f"machine: {m['cpu']}, {m['cores']} cores, kernel level {m['isa']} (supported: "
                 f"{', '.join(m['supported_isas'])}); other processes used {other} of the CPUs meanwhile")
    lines.append(f"popcount peak (xor+popcount+add, 512-bit, L1, 1 core): {result['popcount_peak_bmacs_per_s'] / 1e12:.2f} "
                 "T binary MACs/s")
    lines.append("")
    hdr = (f"{'layer':<26}{'thr':>4}{'packed ms':>11}{'fused ms':>10}{'fp32 ms':>9}  {'fp32 layout':<14}"
           f"{'speedup':>8}{'fused x':>8}{'T bMAC/s':>10}{'peak':>7}  exact")
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for r in result["layers"]:
        lines.append(f"{r['layer']:<26}{r['threads']:>4}{r['binary_packed_ms']:>11.4f}{r['binary_fused_ms']:>10.4f}"
                     f"{r['fp32_ms']:>9.3f}  {r['fp32_layout']:<14}{r['speedup_packed']:>7.1f}x{r['speedup_fused']:>7.1f}x"
                     f"{r['binary_macs_per_s'] / 1e12:>10.3f}{r['peak_share']:>6.0%}  {'yes' if r['bit_exact'] else 'NO'}")
    for n in result["network"]:
        lines.append("")
        lines.append(f"{n['network']}, {n['threads']} thread(s): binary {n['binary_ms']:.2f} ms, fp32 {n['fp32_ms']:.2f} ms "
                     f"({n['fp32_layout']}), speedup {n['speedup']:.1f}x, bit-exact {'yes' if n['bit_exact'] else 'NO'}")
    lines.append("")
    for goal in result["goals"]:
        lines.append(f"goal: {goal['goal']}: {goal['value']} -> {'met' if goal['met'] else 'NOT met'}")
    lines.append("speedup = fp32 / packed; fused x = fp32 / fused; peak = (binary MACs/s of packed) / "
                 "(popcount peak x threads)")
    return "\n".join(lines)


def _parse_bits(text: str) -> list[int]:
    from nas.errors import UsageError
    try:
        bits = sorted({int(b) for b in text.split(",")})
    except ValueError:
        bits = []
    if not bits or any(b not in (1, 2, 4, 8) for b in bits):
        raise UsageError(f"--bits {text!r}: expected a comma-separated list of 1, 2, 4, 8")
    return bits


def _run_integer(bits, threads_list, seconds) -> tuple[list, float, str, str, list]:
    """The integer kernels' rows (nas/measure/bench_int_kernels.py) for the widths in `bits`."""
    import torch

    from nas.measure import bench_int_kernels as IB
    from nas.kernels import integer as I
    if not I.available():
        raise RuntimeError("nas.kernels._int is not built; run `pip install -e .`")
    level = I.isa()
    peak, instruction = IB.dot_peak(I._ext, level)
    rows = []
    saved = torch.get_num_threads()
    try:
        for threads in threads_list:
            torch.set_num_threads(threads)
            for row in IB.INT_LAYERS:
                for b in bits:
                    _log(f"  int {b}-bit {row[0]} @ {threads} thread(s)")
                    r = IB.bench_int_layer(row, b, threads, seconds, _median_times)
                    r["peak_share"] = r["gmacs_per_s"] * 1e9 / (peak * threads)
                    rows.append(r)
    finally:
        torch.set_num_threads(saved)
    return rows, peak, level, instruction, IB.int_goals(rows, level)


def run(args) -> int:
    bits = _parse_bits(args.bits)
    int_bits = [b for b in bits if b != 1]
    if 1 in bits:
        return _run_binary(args, int_bits)
    return _run_binary(args, int_bits, binary=False)


def _run_binary(args, int_bits, binary: bool = True) -> int:
    import torch
    import torch.nn.functional as F

    import nas.kernels as K
    from nas.errors import UsageError
    from nas.kernels import reference as R

    if not K.available():
        print("nas bench kernels: the compiled kernels are not built; run `pip install -e .`", file=sys.stderr)
        return 1
    threads_list = args.threads or sorted({1, torch.get_num_threads()})
    for t in threads_list:
        if t < 1:
            raise UsageError(f"--threads {t}: expected a positive number of threads")
    if not args.seconds > 0:
        raise UsageError(f"--seconds {args.seconds}: expected a positive number of seconds")
    ext = K._ext
    isa = K.isa()
    best = K.supported_isas()[0]
    saved_threads = torch.get_num_threads()
    _log(f"nas bench kernels: level {isa}, threads {threads_list}; measuring the popcount peak ...")
    with CpuWatch() as watch:  # spans the whole bench: popcount peak, binary and integer rows
        peak = _popcount_peak(ext, best)
        layers, networks = [], []
        try:
            for threads in (threads_list if binary else []):
                torch.set_num_threads(threads)
                for row in LAYERS:
                    _log(f"  {row[0]} @ {threads} thread(s)")
                    r = _bench_layer(row, threads, args.seconds, torch, F, K, R)
                    r["peak_share"] = r["binary_macs_per_s"] / (peak * threads)
                    layers.append(r)
                if not args.no_network:
                    _log(f"  Bi-Real-18 network @ {threads} thread(s)")
                    networks.append(_bench_network(threads, args.seconds, torch, K))
        finally:
            torch.set_num_threads(saved_threads)

        int_rows, int_peak, int_level, int_instruction, int_goals = (
            _run_integer(int_bits, threads_list, args.seconds) if int_bits else ([], None, None, None, []))
    others = watch.others_share
    goals = []
    for threads in (threads_list if binary else []):
        rows = [r for r in layers if r["threads"] == threads][:RESNET_ROWS]
        med = statistics.median(r["speedup_packed"] for r in rows)
        goals.append({"goal": f"median speedup on ResNet-18 3x3 shapes >= {GOAL_SPEEDUP:.0f}x at {threads} thread(s)",
                      "value": f"{med:.1f}x", "met": med >= GOAL_SPEEDUP})
    first = [r for r in layers if r["threads"] == 1 and r["layer"] == LAYERS[0][0]]
    if first:
        share = first[0]["peak_share"]
        goals.append({"goal": f">= {GOAL_PEAK_SHARE:.0%} of the single-core popcount peak on 56x56x64",
                      "value": f"{share:.0%}", "met": share >= GOAL_PEAK_SHARE})
    result = {
        "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(), "isa": isa, "supported_isas": K.supported_isas(),
                    "others_load": others, "torch": torch.__version__},
        "popcount_peak_bmacs_per_s": peak,
        "layers": layers, "network": networks, "goals": goals + int_goals,
        "int_peak_macs_per_s": int_peak, "int_peak_instruction": int_instruction, "int_level": int_level,
        # one row per layer and width, binary (bits 1) and integer alike
        "rows": [{"name": r["layer"], "bits": 1, "threads": r["threads"], "ms": r["binary_packed_ms"],
                  "fp32_ms": r["fp32_ms"], "onnxruntime_ms": None, "speedup_vs_fp32": r["speedup_packed"],
                  "speedup_vs_onnxruntime": None, "exact": r["bit_exact"]} for r in layers] + int_rows,
        "all_bit_exact": all(r["bit_exact"] for r in layers + networks) and all(r["exact"] for r in int_rows),
    }
    if others is not None and others > 0.1:
        _log(f"warning: other processes used {others:.0%} of the CPUs during the run; these timings are skewed")
    if args.json:
        import json
        print(json.dumps(result))
    else:
        print(_table(result))
        if int_rows:
            from nas.measure.bench_int_kernels import int_table
            print()
            print(int_table(int_rows, int_peak, int_level, int_instruction))
    return 0 if result["all_bit_exact"] else 1
