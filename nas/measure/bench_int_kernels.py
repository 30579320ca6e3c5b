"""The integer rows of `nas bench kernels --bits 2,4,8`: integer kernels against PyTorch fp32
and onnxruntime int8, per layer shape and weight width.

Each layer runs as a network holds it: uint8 activation codes in, fused epilogue (scale,
folded-BN bias, ReLU) and requantization to the next layer's uint8 codes out. Against it:
  - PyTorch fp32 conv2d on the same shape and threads (best of NCHW and channels_last);
  - onnxruntime int8: the same layer as a QDQ model (uint8 input -> DequantizeLinear,
    int8 weights per channel -> DequantizeLinear, Conv, QuantizeLinear -> uint8), which
    onnxruntime fuses into its own int8 QLinearConv kernels;
and the exactness check against the numpy int64 reference. The peak is this machine's
multiply-add throughput of the instruction the layers run on, measured by the level's own
microkernel on one core, times threads: vpdpbusd (u8 x s8, 64 MACs) where the level has the
byte path (AVX-512 VNNI), else the int16-pair vpdpwssd / vpmaddwd.
"""

from __future__ import annotations

import statistics
import time

# (name, H=W, Cin, Cout, k, stride, padding, groups)
INT_LAYERS = [
    ("resnet18 56x56x64", 56, 64, 64, 3, 1, 1, 1),
    ("resnet18 28x28x128", 28, 128, 128, 3, 1, 1, 1),
    ("resnet18 14x14x256", 14, 256, 256, 3, 1, 1, 1),
    ("resnet18 7x7x512", 7, 512, 512, 3, 1, 1, 1),
    ("mbv2 1x1 56x56 24->144", 56, 24, 144, 1, 1, 0, 1),
    ("mbv2 1x1 14x14 384->64", 14, 384, 64, 1, 1, 0, 1),
    ("mbv2 dw 56x56x144", 56, 144, 144, 3, 1, 1, 144),
    ("mbv2 dw 14x14x384", 14, 384, 384, 3, 1, 1, 384),
    ("space 28x28x32", 28, 32, 32, 3, 1, 1, 1),
    ("space 14x14x64", 14, 64, 64, 3, 1, 1, 1),
    ("space 7x7x128", 7, 128, 128, 3, 1, 1, 1),
    ("space 28->14 x32->64 s2", 28, 32, 64, 3, 2, 1, 1),
]
RESNET_ROWS = 4
GOAL_FP32, GOAL_ORT, GOAL_DW = 3.0, 1.0, 2.0


def dot_peak(ext, level: str) -> tuple[float, str]:
    """Single-core MACs/s of the level's multiply-add microkernel (best of 5) and its
    instruction: the byte path's (u8 x s8) where the level has one, else the int16 pairs'."""
    try:
        ext.peak(level, 1, True)
        bytes_ = True
        instruction = "u8 x s8 (vpdpbusd)" if level == "avx512" else "u8 x s8 (vpmaddubsw + vpmaddwd)"
    except ValueError:  # no byte path on this level
        bytes_, instruction = False, "int16 pairs"
    fn = lambda name, reps: ext.peak(name, reps, bytes_)  # noqa: E731
    reps = 1000
    while True:
        t0 = time.perf_counter()
        fn(level, reps)
        if time.perf_counter() - t0 > 0.05 or reps > 1 << 30:
            break
        reps *= 4
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        _, macs = fn(level, reps)
        best = max(best, macs / (time.perf_counter() - t0))
    return best, instruction


def _qdq_model(w_int8, w_scale, bias, x_scale, y_scale, stride, padding, groups):
    """uint8 NCHW input -> DQ -> Conv (DQ int8 per-channel weights, float bias) -> Q uint8."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    cout = w_int8.shape[0]
    inits = [numpy_helper.from_array(w_int8, "w_q"), numpy_helper.from_array(w_scale.astype(np.float32), "w_s"),
             numpy_helper.from_array(np.zeros(cout, np.int8), "w_zp"),
             numpy_helper.from_array(bias.astype(np.float32), "b"),
             numpy_helper.from_array(np.array(x_scale, np.float32), "x_s"),
             numpy_helper.from_array(np.array(0, np.uint8), "x_zp"),
             numpy_helper.from_array(np.array(y_scale, np.float32), "y_s"),
             numpy_helper.from_array(np.array(0, np.uint8), "y_zp")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "x_s", "x_zp"], ["xf"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["wf"], axis=0),
             helper.make_node("Conv", ["xf", "wf", "b"], ["yf"], strides=[stride, stride], pads=[padding] * 4,
                              group=groups),
             helper.make_node("Relu", ["yf"], ["yr"]),
             helper.make_node("QuantizeLinear", ["yr", "y_s", "y_zp"], ["y"])]
    graph = helper.make_graph(nodes, "qdq_conv", [helper.make_tensor_value_info("x", TensorProto.UINT8, None)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what onnxruntime reads (onnx's helper writes its own newest)
    return model.SerializeToString()


def bench_int_layer(row, bits, threads, seconds, median_times):
    import numpy as np
    import onnxruntime as ort
    import torch
    import torch.nn.functional as F

    from nas.kernels import int_reference as R
    from nas.kernels import integer as I
    name, hw, cin, cout, k, s, p, groups = row
    g = np.random.default_rng(hw * 1000 + cin + bits)
    L = 2**bits - 1
    x = g.integers(0, 256, (1, hw, hw, cin)).astype(np.uint8)                        # NHWC codes
    w = (2 * g.integers(0, L + 1, (cout, cin // groups, k, k)) - L).astype(np.int16)  # DoReFa codes
    K = k * k * cin // groups
    scale = (g.random(cout) * 2 / (255 * L * np.sqrt(K))).astype(np.float32)
    bias = (g.standard_normal(cout) * 0.1).astype(np.float32)
    requant = (0.0, 4.0, float(np.float32(4.0) / np.float32(255)))
    layer = I.IntegerConv(torch.from_numpy(w), bits, s, p, groups, torch.from_numpy(scale), torch.from_numpy(bias),
                          "relu")
    xt = torch.from_numpy(x)
    y = layer(xt, requant=requant, threads=threads).numpy()
    ref = R.conv2d(x, w, (s, s), (p, p), groups, scale, bias, None, "relu", requant)
    exact = bool(np.array_equal(y.astype(np.int32), ref))

    xf = torch.from_numpy(x).permute(0, 3, 1, 2).float().contiguous()
    wf = torch.from_numpy(w).float()
    x_cl, w_cl = xf.contiguous(memory_format=torch.channels_last), wf.contiguous(memory_format=torch.channels_last)
    # onnxruntime: int8 weights. 8-bit DoReFa codes span -255..255 (not int8): use halved codes
    # (same shape and work; onnxruntime is timed, not checked).
    w8 = (w // 2 if bits == 8 else w).astype(np.int8)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(_qdq_model(w8, scale * 255, bias, 1 / 255, requant[2], s, p, groups), so,
                                providers=["CPUExecutionProvider"])
    x_nchw_u8 = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    feed = {"x": x_nchw_u8}
    with torch.inference_mode():
        t_ours, t_nchw, t_cl, t_ort = median_times([
            lambda: layer(xt, requant=requant, threads=threads),
            lambda: F.conv2d(xf, wf, stride=s, padding=p, groups=groups),
            lambda: F.conv2d(x_cl, w_cl, stride=s, padding=p, groups=groups),
            lambda: sess.run(None, feed)], seconds)
    Ho = (hw + 2 * p - k) // s + 1
    macs = Ho * Ho * cout * K
    fp32 = min(t_nchw, t_cl)
    return {"name": name, "bits": bits, "threads": threads, "ms": t_ours * 1e3, "fp32_ms": fp32 * 1e3,
            "fp32_layout": "nchw" if t_nchw <= t_cl else "channels_last", "onnxruntime_ms": t_ort * 1e3,
            "speedup_vs_fp32": fp32 / t_ours, "speedup_vs_onnxruntime": t_ort / t_ours, "macs": macs,
            "gmacs_per_s": macs / t_ours / 1e9, "exact": exact}


def int_goals(rows, level: str = "avx512") -> list[dict]:
    """The issue's speed goals, checked on these rows. The int8 and depthwise ratios were set
    for AVX-512 VNNI (vpdpbusd: 4x fp32 FMA's MACs per instruction); on another level the
    goal says so (AVX2's exact int8 path, int16 pairs, tops out at 2x)."""
    goals = []
    where = "" if level == "avx512" else f"; set for AVX-512 VNNI, this level is {level}"
    one = [r for r in rows if r["threads"] == 1]
    by_bits = {b: [r for r in one if r["bits"] == b] for b in sorted({r["bits"] for r in one})}
    if 8 in by_bits:
        res = [r for r in by_bits[8] if r["name"].startswith("resnet18")][:RESNET_ROWS]
        if res:
            m_fp = statistics.median(r["speedup_vs_fp32"] for r in res)
            m_ort = statistics.median(r["speedup_vs_onnxruntime"] for r in res)
            goals.append({"goal": f"int8 ResNet-18 3x3 median >= {GOAL_FP32:.0f}x PyTorch fp32 (1 thread{where})",
                          "value": f"{m_fp:.2f}x", "met": m_fp >= GOAL_FP32})
            goals.append({"goal": f"int8 ResNet-18 3x3 median >= {GOAL_ORT:.0f}x onnxruntime int8 (1 thread{where})",
                          "value": f"{m_ort:.2f}x", "met": m_ort >= GOAL_ORT})
        dw = [r for r in by_bits[8] if " dw " in r["name"]]
        if dw:
            m_dw = statistics.median(r["speedup_vs_fp32"] for r in dw)
            goals.append({"goal": f"int8 depthwise median >= {GOAL_DW:.0f}x PyTorch fp32 (1 thread{where})",
                          "value": f"{m_dw:.2f}x", "met": m_dw >= GOAL_DW})
        for b in (4, 2):
            if b in by_bits:
                t8 = {r["name"]: r["ms"] for r in by_bits[8]}
                slower = [r["name"] for r in by_bits[b] if r["ms"] > 1.05 * t8[r["name"]]]
                goals.append({"goal": f"{b}-bit no slower than int8 (within 5%, 1 thread)",
                              "value": f"slower on {len(slower)} of {len(by_bits[b])}", "met": not slower})
    return goals


def int_table(rows, peak: float, level: str, instruction: str) -> str:
    lines = [f"integer kernels, level {level}; {instruction} multiply-add peak (1 core): {peak / 1e9:.1f} GMAC/s", ""]
    hdr = (f"{'layer':<26}{'bits':>5}{'thr':>4}{'ms':>9}{'fp32 ms':>9}{'ort ms':>9}{'vs fp32':>9}{'vs ort':>8}"
           f"{'GMAC/s':>8}{'peak':>6}  exact")
    lines += [hdr, "-" * len(hdr)]
    for r in rows:
        lines.append(f"{r['name']:<26}{r['bits']:>5}{r['threads']:>4}{r['ms']:>9.3f}{r['fp32_ms']:>9.3f}"
                     f"{r['onnxruntime_ms']:>9.3f}{r['speedup_vs_fp32']:>8.2f}x{r['speedup_vs_onnxruntime']:>7.2f}x"
                     f"{r['gmacs_per_s']:>8.1f}{r['peak_share']:>6.0%}  {'yes' if r['exact'] else 'NO'}")
    return "\n".join(lines)
