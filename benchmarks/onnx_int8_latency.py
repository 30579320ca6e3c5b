"""How fast does onnxruntime run `model.int8.onnx` against the float `model.onnx`, and where
does the time go?

For each arch string (untrained weights: the same sizes and the same speed as trained ones),
builds both files as `nas export` does (`nas.export.onnx_int8.build`, `nas.export.bundle.write_onnx`),
times each with `onnx_int8.ort_latency_ms` (the timing protocol of `nas.measure.timing`:
warm-up, median of 30, batch 1, one onnxruntime thread), three repeats, then runs each 50
times under onnxruntime's profiler and prints the microseconds per run by op type.

    OMP_NUM_THREADS=1 python benchmarks/onnx_int8_latency.py ARCH [ARCH ...]

Run it pinned (`taskset -c N`) on a quiet machine; compare ratios measured in one run.
"""

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def op_times(path: Path, x, runs: int = 50) -> dict[str, float]:
    """Microseconds per run by op type, from onnxruntime's profiler (one thread)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.enable_profiling, so.profile_file_prefix = True, str(path.with_suffix(""))
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x.numpy()}
    for _ in range(runs):
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    return {op: us / runs for op, us in per_op.most_common()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("archs", nargs="+", metavar="ARCH")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    import onnx
    import torch

    from nas.blocks.model import build_model
    from nas.data import load_dataset
    from nas.export import onnx_int8 as oi
    from nas.export.bundle import payload_of, write_onnx
    from nas.space import decode

    torch.set_num_threads(1)
    for text in args.archs:
        arch = decode(text)
        torch.manual_seed(0)
        model = build_model(arch).eval()
        x, _ = load_dataset("fashion-mnist", subset=200, resolution=arch.resolution).test.batch(torch.arange(1))
        payload, _ = payload_of(model)
        with tempfile.TemporaryDirectory() as tmp:
            files = {"int8": Path(tmp) / oi.FILE, "float": Path(tmp) / "model.onnx"}
            write_onnx(model, x, str(files["float"]))
            onnx.save(oi.build(arch, payload, x).model, str(files["int8"]))
            ms = {k: [oi.ort_latency_ms(oi.session(f), x) for _ in range(args.repeats)] for k, f in files.items()}
            ops = {k: op_times(f, x) for k, f in files.items()}
        best = {k: min(v) for k, v in ms.items()}
        print(f"{text}\n  weight_bytes {len(payload):,}")
        for k in ("int8", "float"):
            top = ", ".join(f"{op} {us:.0f}" for op, us in list(ops[k].items())[:6])
            print(f"  {k:5s} ms {' / '.join(f'{v:.3f}' for v in ms[k])}   us per run by op: {top}")
        print(f"  int8 speed-up over float (best of {args.repeats}): {best['float'] / best['int8']:.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
