"""`nas space show FILE` and `nas space sample FILE --seed S [-n N]`."""

import json

from nas.errors import UsageError


def add_arguments(p):
    sub = p.add_subparsers(dest="space_command", metavar="show|sample", parser_class=type(p))
    sub.required = True
    show = sub.add_parser("show", help="size of the space, its cheapest and largest members")
    show.add_argument("file", help="search space YAML")
    show.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    sample = sub.add_parser("sample", help="arch strings sampled from the space, one per line")
    sample.add_argument("file", help="search space YAML")
    sample.add_argument("--seed", type=int, default=0, help="sampler seed (same seed, same strings)")
    sample.add_argument("-n", type=int, default=1, help="how many (default 1)")


def run(args) -> int:
    from nas.space import encode, load_space

    space = load_space(args.file)
    if args.space_command == "sample":
        import optuna  # here: `nas space show` never imports optuna (start-up, issue 20)

        from nas.space.sample import iter_random_archs

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if args.n < 1:
            raise UsageError(f"-n {args.n}: expected a whole number >= 1")
        for arch in iter_random_archs(space, args.n, args.seed):  # streams: -n may be huge
            print(encode(arch), flush=args.n > 1000)
        return 0
    return _show(space, args.json)


def _show(space, as_json: bool) -> int:
    from nas.cost.extremes import extreme
    from nas.space import encode, space_size
    from nas.units import format_bytes, format_count

    extremes, cache = {}, {}
    for field in ("weight_bytes", "macs", "peak_act_bytes"):
        for which in ("cheapest", "largest"):
            e = extreme(space, field, largest=(which == "largest"), cache=cache)
            extremes[f"{which}_{field}"] = {"value": e.value, "arch": encode(e.arch)}
    info = {"name": space.name, "path": space.path, "size": space_size(space), "resolution": space.resolution,
            "stages": len(space.stages), **extremes}
    if as_json:
        print(json.dumps(info))
        return 0
    print(f"space {space.name} ({space.path}): {info['size']:.3e} networks, {len(space.stages)} stages, "
          f"input {space.resolution}x{space.resolution}x{space.in_chs}")
    for i, st in enumerate(space.stages):
        bits = ",".join(f"w{w}a{a}" for w, a in st.bits)
        print(f"  s{i}: c{st.channels} s{st.stride} kinds={','.join(st.kinds)} r={list(st.repeats)} "
              f"k={list(st.kernel)} bits={bits}")
    for field, fmt in (("weight_bytes", format_bytes), ("macs", format_count), ("peak_act_bytes", format_bytes)):
        for which in ("cheapest", "largest"):
            e = extremes[f"{which}_{field}"]
            print(f"{which} by {field}: {fmt(e['value'])}\n    {e['arch']}")
    return 0
