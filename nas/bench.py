"""`nas bench kernels | infer | search | pruners | fidelity | proxies | train | startup | compress`: benchmarks that print their figures."""

import importlib

BENCHES = {  # name -> (module, what it measures)
    "kernels": ("nas.measure.bench_kernels", "packed-binary and 2/4/8-bit integer kernels vs PyTorch fp32 and onnxruntime int8"),
    "infer": ("nas.export.bench", "the packed model at int8 and mixed 2/4/8 bits vs the same arch at 32 bits (batch 1)"),
    "search": ("nas.search.bench", "the search against random search and hand-designed nets at equal budgets"),
    "pruners": ("nas.search.bench_pruners", "trial pruners replayed on recorded learning curves"),
    "fidelity": ("nas.search.bench_fidelity",
                 "how each fidelity's rungs rank architectures by the final recipe's test accuracy"),
    "proxies": ("nas.train.bench_proxies", "zero-cost proxies' rank correlation with trained accuracy"),
    "train": ("nas.train.bench_train", "training throughput of the trainer against a plain PyTorch loop"),
    "startup": ("nas.measure.bench_startup", "cold start-up time of light commands (nas cost, nas space)"),
    "compress": ("nas.compress.bench", "Deep Compression (prune, retrain, share, pack) of LeNet-5: bytes vs accuracy"),
}


def add_arguments(parser):
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", parser_class=type(parser))
    sub.required = True
    for name, (module, what) in BENCHES.items():
        p = sub.add_parser(name, help=what, description=what)
        p.set_defaults(_bench_module=module)
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            p.set_defaults(_bench_missing=True)


def run(args) -> int:
    return importlib.import_module(args._bench_module).run(args)
