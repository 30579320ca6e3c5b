"""`nas dashboard` is not reachable by web pages: real HTTP requests to the real optuna-dashboard
app. A DNS-rebinding request (Host: evil.example.com) or a foreign Origin is refused and the
study survives; the dashboard is read-only unless started with --allow-writes."""

import http.client
import json
import threading

import optuna
import pytest

from nas.report.dashboard import serve
from nas.search.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def dashboard(tmp_path):
    servers = []

    def start(allow_writes=False):
        storage = open_storage(str(tmp_path / "d.journal"))
        if not storage.get_all_studies():
            study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
            study.tell(study.ask(), 1.0)
        server = serve(storage, "127.0.0.1", 0, allow_writes)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1], storage

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _request(port, method, path, headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


def test_foreign_host_and_origin_are_refused_and_the_study_survives(dashboard):
    port, storage = dashboard(allow_writes=True)
    study_id = storage.get_study_id_from_name("s")
    status, body = _request(port, "DELETE", f"/api/studies/{study_id}", {"Host": "evil.example.com"})
    assert status == 403 and b"evil.example.com" in body
    status, _ = _request(port, "DELETE", f"/api/studies/{study_id}",
                         {"Host": f"127.0.0.1:{port}", "Origin": "http://evil.example.com"})
    assert status == 403
    status, _ = _request(port, "GET", "/api/studies", {"Host": "evil.example.com:80"})
    assert status == 403
    assert [s.study_name for s in open_storage(storage._backend._file_path).get_all_studies()] == ["s"]
    status, body = _request(port, "GET", "/api/studies", {"Host": f"localhost:{port}",
                                                           "Origin": f"http://127.0.0.1:{port}"})
    assert status == 200 and json.loads(body)["study_summaries"][0]["study_name"] == "s"
    # with --allow-writes a loopback request may change the study (the guard is not a blanket refusal)
    status, _ = _request(port, "DELETE", f"/api/studies/{study_id}", {"Host": f"127.0.0.1:{port}"})
    assert status in (200, 204)


def test_read_only_by_default(dashboard):
    port, storage = dashboard()
    study_id = storage.get_study_id_from_name("s")
    status, body = _request(port, "DELETE", f"/api/studies/{study_id}", {"Host": f"127.0.0.1:{port}"})
    assert status == 403 and b"--allow-writes" in body
    status, _ = _request(port, "GET", f"/api/studies/{study_id}", {"Host": f"[::1]:{port}"})
    assert status == 200
    assert [s.study_name for s in storage.get_all_studies()] == ["s"]
