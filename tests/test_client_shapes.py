"""The Python client without surprises (issue 21): `track` refuses a run before the training it
would be for, the answers have the HTTP shapes (old names kept, deprecated), and a client nobody
closed leaves no unclosed socket behind at exit.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import pytest
from fastapi.testclient import TestClient

from hpscale.client import HpscaleError
from tests.conftest import api_client, make_run

SCALE = {"n_params": 1e8, "tokens": 2e9, "learning_rate": 3e-3, "batch_size": 256, "width": 512, "depth": 8}


def test_track_refuses_at_the_start_not_after_training(client: TestClient) -> None:
    """Issue item 7: a missing study or a bad setting was reported after the whole training block."""
    trained = []
    with api_client(client) as hp:
        with pytest.raises(HpscaleError) as missing, hp.track("no-such-study", **SCALE):
            trained.append("no-such-study")
        assert missing.value.status_code == 404 and "nothing was trained" in missing.value.message
        client.post("/v1/studies", json={"name": "s"})
        with pytest.raises(HpscaleError) as invalid, hp.track("s", **{**SCALE, "learning_rate": -1}):
            trained.append("bad lr")
        assert invalid.value.status_code == 422
        assert any(d["field"] == "learning_rate" for d in invalid.value.details)
        assert trained == []
        assert client.get("/v1/studies/s").json()["run_count"] == 0  # the check stored nothing
        # a run the server accepts trains, and is stored once at the end
        with hp.track("s", run_key="ok", **SCALE) as run:
            trained.append("ok")
            run.log(1e9, 3.4)
            run.final_loss = 3.2
        assert trained == ["ok"] and run.result is not None and run.result["inserted"] == 1
        # check="warn": a refusal warns and the block runs (the run is then not stored)
        with pytest.warns(UserWarning, match="training goes on"), hp.track("nope", check="warn", **SCALE):
            trained.append("warned")
        assert trained == ["ok", "warned"]


def test_answers_have_the_http_shapes(client: TestClient) -> None:
    """Issue item 10: `submit` said `submission_ids` (HTTP: `submission_id`), `suggestions` a list."""
    client.post("/v1/studies", json={"name": "s"})
    runs = [make_run(i, width=256 * (1 + i % 4), n_params=2e7 * (1 + i % 4)) for i in range(60)]
    with api_client(client) as hp:
        answer = hp.submit("s", runs[:30])
        http = client.post("/v1/studies/s/runs", json={"runs": runs[30:]}).json()
        assert set(http) <= set(answer)
        assert answer["submission_id"] == answer["submission_ids"][0] and isinstance(answer["submission_id"], int)
        assert hp.delete_submission("s", answer["submission_id"]) == 30
        hp.submit("s", runs[:30])
        client.post("/v1/studies/s/fits", json={"bootstrap": 20})
        target = {"n_params": 1e9, "tokens": 2e10, "width": 2048, "depth": 8}
        suggestions = hp.suggestions("s", count=3, **target)
        http = client.get("/v1/studies/s/suggestions", params={"count": 3, **target}).json()
        assert dict(suggestions) == http and set(suggestions.keys()) == {"items", "fit_id", "data_version", "warnings"}
        # code written for the old list still works, and is told to move on
        with pytest.warns(DeprecationWarning, match='answer\\["items"\\]'):
            assert list(suggestions) == http["items"]
        with pytest.warns(DeprecationWarning):
            assert suggestions[0] == http["items"][0]
        run_id = http_run_id = client.get("/v1/studies/s/runs", params={"limit": 1}).json()["items"][0]["id"]
        assert hp.run("s", run_id) == client.get(f"/v1/studies/s/runs/{http_run_id}").json()


SCRIPT = """
import http.server, json, threading, warnings
warnings.simplefilter("default")

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps({"items": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
from hpscale.client import Client
import gc

def ask():  # a launcher's helper: the client goes when the function returns, unclosed
    return Client(f"http://127.0.0.1:{server.server_address[1]}").studies()

assert ask() == []
gc.collect()
hp = Client(f"http://127.0.0.1:{server.server_address[1]}")  # and one left open until exit
assert hp.studies() == []
print("done")
"""


def test_a_client_nobody_closed_leaves_no_open_socket_at_exit() -> None:
    """Issue item 10: an unclosed-socket ResourceWarning at exit."""
    result = subprocess.run(
        [sys.executable, "-X", "dev", "-c", textwrap.dedent(SCRIPT)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout.strip() == "done", result.stderr[-2000:]
    assert "ResourceWarning" not in result.stderr, result.stderr[-2000:]


def test_closing_twice_is_harmless() -> None:
    from hpscale.client import Client

    hp = Client("http://127.0.0.1:9")
    hp.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hp.close()
