"""The per-layer option parser and table that `nas compress` and `nas bench compress` share."""

import sys

from nas.errors import UsageError


def parse_layer_sparsity(text: str) -> dict[int, float]:
    """`0=0.4,7-13=0.85`: layer index (execution order) or an inclusive range -> sparsity."""
    out = {}
    bad = "expected INDEX=SPARSITY or FIRST-LAST=SPARSITY, e.g. 0=0.5,14-20=0.95"
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        first, dash, last = key.partition("-")
        try:
            lo, hi = int(first), int(last if dash else first)
            sparsity = float(value)
        except ValueError:
            raise UsageError(f"--layer-sparsity {part!r}: {bad}") from None
        if not sep or lo < 0 or hi < lo:
            raise UsageError(f"--layer-sparsity {part!r}: {bad}")
        out.update(dict.fromkeys(range(lo, hi + 1), sparsity))
    return out


def print_table(result: dict, file=None) -> None:
    file = sys.stdout if file is None else file
    rows = result["layers"]
    w = max([12] + [len(r["layer"]) + 2 for r in rows])
    if rows and "encoding" in rows[0]:
        print(f"{'layer':<{w}}{'shape':<20}{'sparsity':>9}{'codebook':>9}{'encoding':>10}{'bytes':>10}", file=file)
        for r in rows:
            print(f"{r['layer']:<{w}}{'x'.join(map(str, r['shape'])):<20}{r['sparsity']:>9.3f}"
                  f"{str(r['codebook'] or '-'):>9}{r['encoding']:>10}{r['bytes']:>10}", file=file)
    else:
        print(f"{'layer':<{w}}{'w MSE':>12}{'w SQNR dB':>11}{'act MSE':>12}{'act SQNR dB':>12}", file=file)
        for r in rows:
            print(f"{r['layer']:<{w}}{r['weight_mse']:>12.3e}{r['weight_sqnr_db']:>11.2f}{r['act_mse']:>12.3e}"
                  f"{r['act_sqnr_db']:>12.2f}", file=file)
    print(f"test accuracy {result['test_accuracy_before']:.4f} -> {result['test_accuracy_after']:.4f}; "
          f"weight_bytes {result['fp32_weight_bytes']} -> {result['weight_bytes']} ({result['ratio']:.1f}x)",
          file=file)
