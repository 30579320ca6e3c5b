"""`nas dashboard`: optuna-dashboard on a study's storage, on 127.0.0.1 unless told otherwise.

optuna-dashboard takes the storage object itself (`optuna_dashboard.wsgi(storage)` accepts
any `BaseStorage`, the JournalStorage of our default journal files included), so journal
and RDB studies are served alike. We bind the socket ourselves (the same single-threaded
wsgiref server `optuna_dashboard.run_server` uses) so that a busy port is a one-line usage
error and the printed URL is the address really bound.

What the dashboard shows of ours: every trial's user attributes (`arch`, `costs`,
`constraints`, `feasible`, `trained`, `accuracy`, `train`, ...) in the trial's detail pane;
numbers and strings verbatim, dicts (`costs`, `train`) as JSON cut at 1024 characters.
Only numeric user attributes become sortable columns of its trials table, so `costs` is
readable per trial but not sortable there (`nas report` plots it). The study's user
attributes (`identity`, `config`, `final:<n>`) show on the study page.
"""

import ipaddress
import socket
import sys
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from nas.errors import UsageError

LOOPBACK = "127.0.0.1"


def add_arguments(p):
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", help="Optuna storage URL (default journal file studies/<study>.journal)")
    p.add_argument("--host", default=LOOPBACK, help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0: any free port, printed)")


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # the page polls the API every few seconds
        pass


class _Server6(WSGIServer):
    address_family = socket.AF_INET6


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(storage, host: str, port: int):
    """A bound (not yet serving) WSGI server for optuna-dashboard on `storage`."""
    import optuna_dashboard

    app = optuna_dashboard.wsgi(storage)
    server_class = _Server6 if ":" in host else WSGIServer
    try:
        return make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
    except OSError as e:
        raise UsageError(f"--host {host!r} --port {port}: cannot listen there ({e.strerror or e}); "
                         f"expected a free port on a local address, e.g. --port {port + 1}") from None


def run(args) -> int:
    from nas.report.study import open_study

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: expected a port number in 0..65535 (0: any free port)")
    study, storage, url = open_study(args.study, args.storage)
    server = serve(storage, args.host, args.port)
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    study_id = storage.get_study_id_from_name(study.study_name)
    print(f"nas: optuna-dashboard for study {study.study_name!r} ({url}) at "
          f"http://{shown}:{port}/dashboard/studies/{study_id} (Ctrl-C stops)", file=sys.stderr, flush=True)
    if not _is_loopback(args.host):
        print(f"nas: warning: listening on {args.host}: anyone who can reach this machine can read and change "
              f"the study", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
