"""The `nas` subcommands, one module each (`add_arguments(parser)`, `run(args) -> int`).

They sit at the top: a command may import any package below it; nothing imports a command.
`nas.cli` wires them up; `nas.report.dashboard`, `nas.export.infer`, `nas.measure.calibrate`
and `nas.bench` carry their own `add_arguments` / `run` beside the code they drive.
"""
