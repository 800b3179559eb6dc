"""The retry policy: Ray's transient answers are retried with backoff under one deadline, real
faults are not.

The transient fault ("No available agent to submit job", which a real head gives while its job
agent is not up) cannot be produced on demand with a real cluster, so a small HTTP server on
127.0.0.1 stands in for the dashboard's Jobs API here; the wrong-token case runs against a real
head."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kg_ops.airflow.hooks.ray import RayApiError, RayAuthError, RayHook, RaySettings
from kg_ops.airflow.retry import RetryPolicy

pytestmark = pytest.mark.timeout(120)

TOKEN = "4f1c9e0b7a2d4c6e8f0a1b2c3d4e5f60"   # never in a job's metadata, as the hook checks
NO_AGENT = "No available agent to submit job, please try again later."
FAST = {"retry_initial_wait": 0.05, "retry_max_wait": 0.2, "retry_deadline": 30}


class FlakyDashboard:
    """Jobs API stand-in: answers ``fail[path]`` with the given (status, body) that many times,
    then like Ray. Records every request."""

    def __init__(self, fail: dict[tuple[str, str], tuple[int, str, int]]):
        self.fail = dict(fail)          # (method, path) -> (status, body, times)
        self.requests: list[tuple[str, str]] = []
        self.jobs: dict[str, dict] = {}
        self.lose_answers = 0
        dash = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status: int, body) -> None:
                data = (json.dumps(body) if not isinstance(body, str) else body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                dash.requests.append((method, self.path))
                status, answer = dash.route(method, self.path, body)
                self._answer(status, answer)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def route(self, method: str, path: str, body):
        status, answer, times = self.fail.get((method, path), (0, "", 0))
        if times > 0:
            self.fail[(method, path)] = (status, answer, times - 1)
            return status, answer
        if method == "POST" and path == "/api/jobs/":
            sid = body["submission_id"]
            if sid in self.jobs:      # as Ray answers a reused id
                return 500, f"Job with submission_id {sid} already exists."
            self.jobs[sid] = {"submission_id": sid, "status": "SUCCEEDED", "message": "done",
                              "error_type": None}
            if self.lose_answers > 0:     # accepted, but the answer never arrives intact
                self.lose_answers -= 1
                return 502, "Bad Gateway"
            return 200, {"submission_id": sid, "job_id": sid}
        m = re.fullmatch(r"/api/jobs/([^/]+)(/logs)?", path)
        if method == "GET" and m and m.group(1) in self.jobs:
            return 200, {"logs": "hello from the job\n"} if m.group(2) else self.jobs[m.group(1)]
        return 404, "Job does not exist"

    def count(self, method: str, path: str) -> int:
        return sum(1 for r in self.requests if r == (method, path))


@pytest.fixture
def dashboard():
    dashboards = []

    def make(fail):
        dashboards.append(FlakyDashboard(fail))
        return dashboards[-1]

    yield make
    for d in dashboards:
        d.server.shutdown()


def ti():
    return types.SimpleNamespace(xcom_push=lambda **kw: None, dag_id="retry_dag", run_id="r1",
                                 task_id="submit", map_index=-1, try_number=1)


def test_no_available_agent_is_retried_until_ray_accepts(dashboard, airflow_db, monkeypatch,
                                                          capfd):
    """The submit task meets Ray's 500 "No available agent" three times, then succeeds; its
    log says what happened."""
    from kg_ops.airflow.operators.ray import SubmitRayJobOperator

    dash = dashboard({("POST", "/api/jobs/"): (500, NO_AGENT, 3)})
    monkeypatch.setenv("AIRFLOW_CONN_RAY_FLAKY", json.dumps(
        {"conn_type": "ray", "host": dash.url, "password": TOKEN, "extra": FAST}))
    op = SubmitRayJobOperator(task_id="submit", entrypoint="echo hi", ray_conn_id="ray_flaky",
                              poll_interval=0.1, fetch_logs=False)
    result = op.execute({"ti": ti()})
    assert result["status"] == "SUCCEEDED"
    assert dash.count("POST", "/api/jobs/") == 4
    log = capfd.readouterr().out          # the task log (Airflow writes it to stdout here)
    retries = [line for line in log.splitlines() if "; retry " in line]
    assert len(retries) == 3, retries
    assert all("Ray connection 'ray_flaky'" in m and "submitting job" in m and "HTTP 500" in m
               and NO_AGENT in m for m in retries)
    assert "retry 1 in" in retries[0] and "retry 3 in" in retries[2]
    assert "submitted Ray job" in log and "SUCCEEDED" in log


def test_gateway_errors_are_retried_by_the_trigger(dashboard, airflow_db, monkeypatch, capfd):
    """The deferred wait (async calls) retries 502/503/504 the same way."""
    from kg_ops.airflow.triggers.ray import RayJobTrigger

    dash = dashboard({})
    dash.jobs["j1"] = {"submission_id": "j1", "status": "SUCCEEDED", "message": "ok"}
    dash.fail[("GET", "/api/jobs/j1")] = (503, "Service Unavailable", 2)
    dash.fail[("GET", "/api/jobs/j1/logs")] = (502, "Bad Gateway", 1)
    monkeypatch.setenv("AIRFLOW_CONN_RAY_FLAKY2", json.dumps(
        {"conn_type": "ray", "host": dash.url, "password": TOKEN, "extra": FAST}))

    async def first_event():
        async for event in RayJobTrigger("j1", ray_conn_id="ray_flaky2", poll_interval=0.1,
                                         fetch_logs=False).run():
            return event.payload

    event = asyncio.run(first_event())
    assert event["status"] == "done" and event["job_status"] == "SUCCEEDED"
    assert dash.count("GET", "/api/jobs/j1") == 3
    log = capfd.readouterr().out
    assert sum("HTTP 503" in line and "; retry " in line for line in log.splitlines()) == 2


def test_a_submission_whose_answer_was_lost_is_not_an_error(dashboard):
    """Ray created the job but the answer was lost (502): the retry meets Ray's 500 "already
    exists", which then means success; a plain duplicate submission still fails."""
    dash = dashboard({})
    dash.lose_answers = 1
    hook = RayHook(settings=RaySettings("ray_lossy", dash.url, TOKEN,
                                        retry=RetryPolicy(deadline_s=30, initial_wait_s=0.05)))
    assert hook.submit_job("echo", submission_id="lost-1") == "lost-1"
    assert dash.count("POST", "/api/jobs/") == 2
    with pytest.raises(RayApiError, match="already exists"):
        hook.submit_job("echo", submission_id="lost-1")
    assert dash.count("POST", "/api/jobs/") == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_real_faults_fail_at_once(dashboard, status):
    dash = dashboard({("POST", "/api/jobs/"): (status, "no", 99)})
    hook = RayHook(settings=RaySettings("ray_strict", dash.url, TOKEN,
                                        retry=RetryPolicy(deadline_s=30, initial_wait_s=0.05)))
    t = time.monotonic()
    with pytest.raises((RayApiError, RayAuthError)):
        hook.submit_job("echo", submission_id="x")
    assert time.monotonic() - t < 5
    assert dash.count("POST", "/api/jobs/") == 1


def test_persistent_outage_gives_up_at_the_deadline(dashboard):
    dash = dashboard({("GET", "/api/jobs/x"): (503, "down", 10**6)})
    hook = RayHook(settings=RaySettings("ray_down", dash.url, TOKEN,
                                        retry=RetryPolicy(deadline_s=1.0, initial_wait_s=0.05,
                                                          max_wait_s=0.2)))
    t = time.monotonic()
    with pytest.raises(RayApiError, match="HTTP 503"):
        hook.get_job("x")
    took = time.monotonic() - t
    assert 0.9 < took < 5 and dash.count("GET", "/api/jobs/x") >= 4


def test_wrong_token_against_a_real_head_fails_at_once(ray_head, capfd):
    hook = RayHook(settings=RaySettings("ray_wrongtoken", ray_head.dashboard_url, "0" * 64))
    t = time.monotonic()
    with pytest.raises(RayAuthError, match="rejected the token"):
        hook.submit_job("echo hi", submission_id="never")
    assert time.monotonic() - t < 5
    out = capfd.readouterr()
    assert "; retry " not in out.out + out.err


def test_retry_policy_comes_from_the_connection_extras():
    from kg_ops.airflow.hooks.ray import RayConnectionConfigError, settings_from_connection

    conn = types.SimpleNamespace(conn_id="ray_x", host="http://h:8265", schema=None, port=None,
                                 password=TOKEN, extra=json.dumps({"retry_deadline": "0",
                                                                 "retry_max_wait": 3}))
    s = settings_from_connection(conn)
    assert s.retry == RetryPolicy(deadline_s=0.0, max_wait_s=3.0)
    conn.extra = json.dumps({"retry_initial_wait": -1})
    with pytest.raises(RayConnectionConfigError, match="retry_initial_wait"):
        settings_from_connection(conn)
