"""`nas bench kernels | infer | search | pruners | proxies | train | compress`: benchmarks that print their figures."""

import importlib

BENCHES = {
    "kernels": "nas.kernels.bench",
    "infer": "nas.export.bench",
    "search": "nas.search.bench",
    "pruners": "nas.search.bench_pruners",
    "proxies": "nas.train.bench_proxies",
    "train": "nas.train.bench_train",
    "compress": "nas.compress.bench",
}


def add_arguments(parser):
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", parser_class=type(parser))
    sub.required = True
    for name, module in BENCHES.items():
        p = sub.add_parser(name, help=f"benchmark: {name}")
        p.set_defaults(_bench_module=module)
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            p.set_defaults(_bench_missing=True)


def run(args) -> int:
    return importlib.import_module(args._bench_module).run(args)
