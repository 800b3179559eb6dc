"""RayJobTrigger against the real cluster: events, bounded log relay, on_kill vs cleanup."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time

import pytest

from kg_ops.airflow.follow import LogBuffer
from kg_ops.airflow.triggers.ray import CLASSPATH, RayJobTrigger

pytestmark = pytest.mark.timeout(180)


def test_log_buffer_keeps_newest_lines_and_counts_the_rest():
    buf = LogBuffer(max_lines=10)
    buf.add("".join(f"line {i}\n" for i in range(1000)) + "partial")
    lines, dropped = buf.drain()
    assert lines == [f"line {i}" for i in range(990, 1000)] and dropped == 990
    buf.add(" end\r\n")
    assert buf.drain() == (["partial end"], 0)
    buf.add("no newline")
    assert buf.drain(final=True) == (["no newline"], 0)


def test_log_buffer_keeps_the_end_of_the_log_and_the_manifest_line():
    buf = LogBuffer(max_lines=2, keep=3)
    buf.add("a\nKGOPS_MANIFEST s3://b/m\n" + "".join(f"x{i}\n" for i in range(5)))
    assert buf.text() == "KGOPS_MANIFEST s3://b/m\nx2\nx3\nx4\n"


def test_serialize_round_trip():
    trig = RayJobTrigger("sid-1", ray_conn_id="c", poll_interval=2, deadline=123.0,
                         fetch_logs=False, max_log_lines=7, stop_deadline=9)
    path, kwargs = trig.serialize()
    assert path == CLASSPATH
    assert RayJobTrigger(**kwargs).serialize() == (path, kwargs)
    json.dumps(kwargs)  # stored in the metadata DB as JSON


async def _first_event(trigger, timeout=60):
    agen = trigger.run()
    try:
        return await asyncio.wait_for(agen.__anext__(), timeout)
    finally:
        await agen.aclose()


def _wait_running(ray_hook, sid, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        info = ray_hook.get_job(sid)
        if info and info["status"] == "RUNNING":
            return
        time.sleep(0.3)
    raise AssertionError(f"{sid} not RUNNING: {info}")


def test_trigger_fires_on_completion_with_bounded_log_relay(ray_head, ray_hook, capfd):
    sid = f"trig-logs-{os.getpid()}-{time.time_ns()}"
    # Coloured like Ray's worker prefixes: the task log must get plain text.
    # One printf writes all 500 lines at once, so they reach the trigger within a poll or two
    # even on a loaded machine (a shell loop can spread them over many polls).
    ray_hook.submit_job("printf '\\033[36mchatty-%s\\033[0m\\n' $(seq 1 500); sleep 2",
                        submission_id=sid)
    trig = RayJobTrigger(sid, poll_interval=0.5, max_log_lines=20)
    event = asyncio.run(_first_event(trig))
    assert event.payload["status"] == "done" and event.payload["job_status"] == "SUCCEEDED"
    out = capfd.readouterr()  # Airflow's structlog writes the task/trigger log to the stream
    relayed = [ln for ln in (out.out + out.err).splitlines() if "[ray] " in ln]
    shown = [ln for ln in relayed if "chatty-" in ln]
    assert any("[ray] chatty-500 " in ln for ln in shown)  # the newest lines get through
    offending = [ln for ln in relayed if "\x1b" in ln or sid in ln]
    assert not offending, offending[:3]  # short prefix, no ANSI codes
    assert len(shown) <= 20 * 4  # at most max_log_lines per poll, over a few polls
    assert any("lines not shown" in m for m in relayed)


def test_trigger_on_kill_stops_job_but_cleanup_does_not(ray_head, ray_hook):
    sid = f"trig-kill-{os.getpid()}-{time.time_ns()}"
    ray_hook.submit_job("sleep 120", submission_id=sid)
    _wait_running(ray_hook, sid)

    async def scenario():
        trig = RayJobTrigger(sid, poll_interval=0.5, stop_deadline=30)
        # Triggerer restart: the trigger is cancelled and cleaned up; the job must survive.
        task = asyncio.ensure_future(_first_event(trig))
        await asyncio.sleep(1.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await trig.cleanup()
        still = ray_hook.get_job(sid)["status"]
        # User kills the deferred task: the triggerer cancels the trigger, then calls on_kill.
        trig2 = RayJobTrigger(sid, poll_interval=0.5, stop_deadline=30)
        task = asyncio.ensure_future(_first_event(trig2))
        await asyncio.sleep(1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        t0 = time.monotonic()
        await trig2.on_kill()
        return still, time.monotonic() - t0

    still, took = asyncio.run(scenario())
    assert still == "RUNNING"
    assert ray_hook.get_job(sid)["status"] == "STOPPED"
    assert took < 30


def test_sensor_trigger_on_kill_leaves_the_job_to_its_owner(ray_head, ray_hook):
    """A sensor's trigger (owns_job=False) being killed by a user never stops the job."""
    sid = f"trig-notmine-{os.getpid()}-{time.time_ns()}"
    ray_hook.submit_job("sleep 120", submission_id=sid)
    _wait_running(ray_hook, sid)
    trig = RayJobTrigger(sid, poll_interval=0.5, owns_job=False)
    assert trig.serialize()[1]["owns_job"] is False
    asyncio.run(trig.on_kill())
    time.sleep(2)
    assert ray_hook.get_job(sid)["status"] == "RUNNING"
    ray_hook.stop_job(sid)


def test_trigger_reports_unreachable_dashboard_naming_connection(monkeypatch):
    listener = socket.socket()  # accepts connections, never answers
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    monkeypatch.setenv("AIRFLOW_CONN_RAY_BLACKHOLE", json.dumps(
        {"conn_type": "ray", "host": f"http://127.0.0.1:{port}", "password": "t",
         "extra": {"timeout": 0.5, "retry_deadline": 2}}))
    try:
        trig = RayJobTrigger("any", ray_conn_id="ray_blackhole", poll_interval=0.1,
                             fetch_logs=True)
        event = asyncio.run(_first_event(trig, timeout=30))
    finally:
        listener.close()
    assert event.payload["status"] == "error"
    assert "Ray connection 'ray_blackhole'" in event.payload["message"]


def test_trigger_timeout_stops_the_job(ray_head, ray_hook):
    sid = f"trig-timeout-{os.getpid()}-{time.time_ns()}"
    ray_hook.submit_job("sleep 120", submission_id=sid)
    _wait_running(ray_hook, sid)
    trig = RayJobTrigger(sid, poll_interval=0.5, deadline=time.time() + 1, stop_deadline=30)
    event = asyncio.run(_first_event(trig))
    assert event.payload["status"] == "timeout" and event.payload["job_status"] == "STOPPED"
