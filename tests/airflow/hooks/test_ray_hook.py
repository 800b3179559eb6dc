"""RayHook and the ``ray`` connection: ids, settings validation, and clear errors against a real
cluster (wrong token, no token, unreachable address, malformed extras)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time

import pytest

from kg_ops.airflow.hooks.ray import (
    RayAuthError,
    RayConnectionConfigError,
    RayHook,
    RayHookError,
    RaySettings,
    RayUnreachableError,
)
from kg_ops.airflow.job_ids import MAX_LEN, attempt_id, sanitize_submission_id, submission_id_for
from kg_ops.airflow.retry import RetryPolicy

pytestmark = pytest.mark.timeout(120)


# --- submission ids -------------------------------------------------------------------------
def test_submission_id_is_deterministic_sanitised_and_capped():
    run_id = "manual__2026-11-23T21:20:31.123456+00:00"
    a = submission_id_for("kg_refresh", run_id, "train", -1)
    assert a == submission_id_for("kg_refresh", run_id, "train", -1)
    assert "/" not in a and ":" not in a and "+" not in a
    assert a.startswith("af-kg_refresh-train-manual__2026-11-23T21_20_31.123456_00_00-")
    # map index, task and run are all part of the identity
    ids = {a, submission_id_for("kg_refresh", run_id, "train", 0),
           submission_id_for("kg_refresh", run_id, "train", 1),
           submission_id_for("kg_refresh", run_id, "evaluate", -1),
           submission_id_for("kg_refresh", run_id + "x", "train", -1)}
    assert len(ids) == 5
    # names that sanitise to the same text still get distinct ids (hash of the exact values)
    assert submission_id_for("d", "r/1", "t") != submission_id_for("d", "r_1", "t")
    long = submission_id_for("d" * 300, "scheduled__" + "9" * 300, "t" * 250, 12)
    assert len(long) <= MAX_LEN and len(attempt_id(long, 42)) <= MAX_LEN
    assert attempt_id(a, 1) == a and attempt_id(a, 3) == f"{a}-r3"


def test_user_submission_id_sanitised_only_when_needed():
    assert sanitize_submission_id("nightly-train_01") == "nightly-train_01"
    odd = sanitize_submission_id("team/a:b")
    assert "/" not in odd and odd != sanitize_submission_id("team_a_b")
    assert len(sanitize_submission_id("x" * 500)) <= MAX_LEN


# --- connection validation ------------------------------------------------------------------
class Conn:
    def __init__(self, conn_id="ray_x", host="http://127.0.0.1:8265", password="tok",
                 extra="", schema=None, port=None):
        self.conn_id, self.host, self.password, self.extra = conn_id, host, password, extra
        self.schema, self.port = schema, port


@pytest.mark.parametrize("extra, expected", [
    ("{not json", "extra is not valid JSON"),
    ('["a"]', "extra must be a JSON object"),
    ('{"verify_tls": true}', "unknown extra field(s) ['verify_tls']"),
    ('{"verify_ssl": "maybe"}', "'verify_ssl' must be true or false"),
    ('{"headers": "[1, 2]"}', "'headers' must be a JSON object"),
    ('{"headers": {"X-Team": {"a": 1}}}', "values must be strings"),
    ('{"headers": {"authorization": "Bearer x"}}', "must not carry Authorization"),
    ('{"timeout": -1}', "'timeout' must be a positive number"),
])
def test_malformed_extras_name_the_connection(extra, expected):
    from kg_ops.airflow.hooks.ray import settings_from_connection

    with pytest.raises(RayConnectionConfigError) as err:
        settings_from_connection(Conn(conn_id="ray_broken", extra=extra))
    assert "Airflow connection 'ray_broken'" in str(err.value)
    assert expected in str(err.value)


def test_settings_defaults_and_forms():
    from kg_ops.airflow.hooks.ray import settings_from_connection

    s = settings_from_connection(Conn(host="ray-head", port=8265))
    assert s.url == "http://ray-head:8265" and s.verify is True and s.timeout == 30.0
    s = settings_from_connection(Conn(host="https://ray.example/", extra=json.dumps(
        {"extra__ray__ca_bundle": "/etc/ca.pem", "headers": '{"X-Team": "kg"}',
         "metadata": {"team": "kg", "tier": 1}})))
    assert s.url == "https://ray.example" and s.verify == "/etc/ca.pem"
    assert s.headers == {"X-Team": "kg"} and s.metadata == {"team": "kg", "tier": "1"}
    assert s.request_headers()["Authorization"] == "Bearer tok"
    assert "tok" not in repr(s)
    with pytest.raises(RayConnectionConfigError, match="no host"):
        settings_from_connection(Conn(host=""))


def test_airflow_connection_from_environment_is_validated(monkeypatch, airflow_db):
    monkeypatch.setenv("AIRFLOW_CONN_RAY_BADEXTRA", json.dumps(
        {"conn_type": "ray", "host": "http://127.0.0.1:1", "extra": "{oops"}))
    with pytest.raises(RayConnectionConfigError, match="connection 'ray_badextra'"):
        RayHook("ray_badextra").get_job("anything")


# --- against the real cluster ---------------------------------------------------------------
def _hook(url: str, token: str, conn_id: str = "ray_test", timeout: float = 5.0) -> RayHook:
    return RayHook(settings=RaySettings(conn_id=conn_id, url=url, token=token, timeout=timeout))


def test_wrong_or_missing_token_is_a_clear_error(ray_head):
    with pytest.raises(RayAuthError) as err:
        _hook(ray_head.dashboard_url, "0" * 64, "ray_wrongtoken").get_job("x")
    msg = str(err.value)
    assert "Ray connection 'ray_wrongtoken'" in msg and "rejected the token" in msg
    assert "0" * 64 not in msg
    with pytest.raises(RayAuthError, match="requires a token"):
        _hook(ray_head.dashboard_url, "", "ray_notoken").list_jobs()
    with pytest.raises(RayAuthError, match="'ray_wrongtoken'.*rejected the token"):
        asyncio.run(_hook(ray_head.dashboard_url, "1" * 64, "ray_wrongtoken").aget_job("x"))
    ok, message = _hook(ray_head.dashboard_url, "2" * 64, "ray_wrongtoken").test_connection()
    assert not ok and "rejected the token" in message


def test_unreachable_address_is_a_clear_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hook = RayHook(settings=RaySettings("ray_nowhere", f"http://127.0.0.1:{port}", "t",
                                        retry=RetryPolicy(deadline_s=1, initial_wait_s=0.1)))
    t = time.monotonic()
    with pytest.raises(RayUnreachableError) as err:
        hook.get_job("x")
    assert 1 <= time.monotonic() - t < 10     # retried until the policy's deadline
    assert "Ray connection 'ray_nowhere' (http://127.0.0.1:" in str(err.value)
    assert "cannot reach the Ray dashboard" in str(err.value)
    with pytest.raises(RayUnreachableError, match="'ray_nowhere'"):
        asyncio.run(hook.aget_job("x"))


def test_test_connection_and_job_lifecycle(ray_hook, ray_head, caplog):
    caplog.set_level("DEBUG")
    ok, message = ray_hook.test_connection()
    assert ok and "Connected to Ray 2." in message
    assert ray_hook.get_job("no-such-job") is None
    sid = f"hook-lifecycle-{os.getpid()}"
    assert ray_hook.submit_job("echo hello-from-ray; sleep 60", submission_id=sid,
                               metadata={"team": "kg"}) == sid
    # Resubmitting an existing id is an HTTP 500 in Ray: the operator must look up first.
    with pytest.raises(RayHookError, match="HTTP 500"):
        ray_hook.submit_job("echo again", submission_id=sid)
    assert ray_hook.get_job(sid)["metadata"] == {"team": "kg"}
    from kg_ops.airflow.follow import astop_and_wait, run_sync

    info = run_sync(astop_and_wait(ray_hook, sid, 30, logging.getLogger("test")))
    assert info["status"] == "STOPPED"
    assert ray_head.token not in caplog.text


def test_token_never_sent_inside_a_job(ray_hook, ray_head):
    with pytest.raises(RayHookError, match="refusing to submit"):
        ray_hook.submit_job("echo hi", submission_id=f"leak-{os.getpid()}",
                            runtime_env={"env_vars": {"T": ray_head.token}})
    assert ray_hook.get_job(f"leak-{os.getpid()}") is None


def test_provider_declares_ray_connection_type(airflow_db):
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    pm = ProvidersManager()
    assert "kg-ops" in pm.providers
    hook = ProvidersManagerTaskRuntime().hooks["ray"]
    assert hook.hook_class_name == "kg_ops.airflow.hooks.ray.RayHook"
    behaviour = pm.field_behaviours["ray"]
    assert "login" in behaviour["hidden_fields"]
    assert behaviour["relabeling"]["password"] == "Auth token"
    widget = pm.connection_form_widgets["extra__ray__verify_ssl"]
    assert widget.field["value"] is True


@pytest.fixture
def https_dashboard(tmp_path):
    """A local HTTPS server with a self-signed certificate that answers 404 to every GET."""
    import shutil
    import ssl
    import subprocess
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    if not shutil.which("openssl"):
        pytest.skip("openssl not available to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{srv.server_address[1]}", str(cert)
    srv.shutdown()


def test_tls_verified_by_default_and_ca_bundle_accepted(https_dashboard):
    url, ca = https_dashboard
    default = RayHook(settings=RaySettings(conn_id="ray_tls", url=url, token="t"))
    with pytest.raises(RayHookError, match="'ray_tls'.*TLS verification failed"):
        default.get_job("x")
    with pytest.raises(RayHookError, match="TLS verification failed"):
        asyncio.run(default.aget_job("x"))
    trusted = RayHook(settings=RaySettings(conn_id="ray_tls", url=url, token="t", verify=ca))
    assert trusted.get_job("x") is None  # the 404 came through a verified TLS session
    assert asyncio.run(trusted.aget_job("x")) is None
