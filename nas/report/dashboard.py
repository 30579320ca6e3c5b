"""`nas dashboard`: optuna-dashboard on a study's storage, on 127.0.0.1 unless told otherwise.

optuna-dashboard takes the storage object itself (`optuna_dashboard.wsgi(storage)` accepts
any `BaseStorage`, the JournalStorage of our default journal files included), so journal
and RDB studies are served alike. We bind the socket ourselves (the same single-threaded
wsgiref server `optuna_dashboard.run_server` uses) so that a busy port is a one-line usage
error and the printed URL is the address really bound.

What the dashboard shows of ours: every trial's user attributes (`arch`, `costs`,
`constraints`, `feasible`, `trained`, `accuracy`, `train`, ...) in the trial's detail pane;
each cost also as a number of its own (`cost.weight_bytes`, `cost.macs`, ...), which the
trials table can sort and plot; the constraints in the system attribute Optuna's own tools
read, so infeasible trials show as infeasible; and notes (`nas.search.records.
note_final_models`) naming the final model, the one `nas export --best` ships, on the study's
Note page and on the retrained trials' pages: the dashboard's own "best trial" is the best
search score. The study's user attributes (`identity`, `config`, `final:<n>`) show on the
study page.

The WSGI app optuna-dashboard gives is wrapped (`guard`), because it answers any request that
reaches the socket: a web page the user visits could point a DNS-rebinding name at
127.0.0.1 and DELETE the study. The guard refuses (403) a Host header that is not a loopback
name or the address served, and an Origin header that is not one; and it serves read-only
(GET/HEAD only) unless `--allow-writes` is given.
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
    p.add_argument("--allow-writes", action="store_true",
                   help="let the dashboard change the study (notes, deleting trials or the study); default read-only")


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


READ_METHODS = ("GET", "HEAD")


def _host_name(value: str) -> str:
    """`host[:port]` or `[v6]:port` -> the host part, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def guard(app, served_host: str, allow_writes: bool = False):
    """`app`, answering only requests whose Host and Origin name this machine (see the module)."""
    allowed = {served_host.lower()}

    def ok_host(name: str) -> bool:
        return name in allowed or _is_loopback(name)

    def guarded(environ, start_response):
        host = _host_name(environ.get("HTTP_HOST", ""))
        origin = environ.get("HTTP_ORIGIN")
        origin_host = _host_name(origin.split("://", 1)[-1].split("/", 1)[0]) if origin else None
        if not ok_host(host) or (origin is not None and not ok_host(origin_host)):
            why = f"refused: Host {environ.get('HTTP_HOST')!r} / Origin {origin!r} is not this machine\n"
        elif environ.get("REQUEST_METHOD", "GET").upper() not in READ_METHODS and not allow_writes:
            why = "refused: the dashboard is read-only (start it with --allow-writes to change the study)\n"
        else:
            return app(environ, start_response)
        body = why.encode()
        start_response("403 Forbidden", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return guarded


def serve(storage, host: str, port: int, allow_writes: bool = False):
    """A bound (not yet serving) WSGI server for optuna-dashboard on `storage`."""
    import optuna_dashboard

    app = guard(optuna_dashboard.wsgi(storage), host, allow_writes)
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
    server = serve(storage, args.host, args.port, args.allow_writes)
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    study_id = storage.get_study_id_from_name(study.study_name)
    print(f"nas: optuna-dashboard for study {study.study_name!r} ({url}) at "
          f"http://{shown}:{port}/dashboard/studies/{study_id} (Ctrl-C stops)", file=sys.stderr, flush=True)
    if not _is_loopback(args.host):
        print(f"nas: warning: listening on {args.host}: anyone who can reach this machine can read and change "
              f"the study", file=sys.stderr, flush=True)
    import warnings

    import optuna

    # optuna-dashboard computes parameter importances with Optuna's experimental PED-ANOVA on
    # every page load, and each emits an ExperimentalWarning: 6-8 lines of noise per page.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
