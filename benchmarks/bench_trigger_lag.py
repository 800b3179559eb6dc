"""Event-loop lag while RayJobTriggers poll: does the trigger ever block the triggerer's loop?

A ticker coroutine asks to wake every 10 ms and records how late it wakes. Scenarios, each with
``--triggers`` concurrent triggers for ``--seconds``:

- ``baseline``: no triggers;
- ``blackhole``: a dashboard on 127.0.0.1 that accepts connections and never answers
  (hook timeout 2 s; the trigger retries, as it does when a dashboard hangs);
- ``slow``: a dashboard that answers every request after 1.5 s;
- ``cluster_status_only`` / ``cluster``: a real local Ray head (token auth) with a running job
  printing 20 lines/s; status polling alone, then plus log following (every trigger relays up to
  100 lines per poll to the log, which is synchronous I/O);
- ``blocking_reference``: what a trigger that calls ``requests`` inside the loop does against
  the blackhole (the deprecated provider's pattern), to show the measurement can see blocking.

    python -m benchmarks.bench_trigger_lag [--triggers 20] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="kgops-bench-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

from benchmarks.common import write_results  # noqa: E402

TICK_S = 0.010


async def ticker(stop: asyncio.Event, lags: list[tuple[float, float]]) -> None:
    """Record (lag, CPU seconds this process used during the tick) for every tick: a long tick
    with little CPU means the process was descheduled or waiting, one with a full CPU means
    Python code ran in the loop."""
    while not stop.is_set():
        t, c = time.perf_counter(), time.process_time()
        await asyncio.sleep(TICK_S)
        lags.append((max(0.0, time.perf_counter() - t - TICK_S), time.process_time() - c))


def summarise(lags: list[tuple[float, float]]) -> dict:
    ms = sorted(x * 1000 for x, _ in lags)
    if not ms:
        return {"ticks": 0}
    worst_lag, worst_cpu = max(lags)
    return {"ticks": len(ms), "lag_p50_ms": round(statistics.median(ms), 2),
            "lag_p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 2),
            "lag_max_ms": round(ms[-1], 2),
            "worst_tick_cpu_ms": round(worst_cpu * 1000, 2),
            "worst_tick_wall_ms": round((worst_lag + TICK_S) * 1000, 2)}


async def run_triggers(conn_id: str, sid: str, n: int, seconds: float,
                       blocking_url: str | None = None, fetch_logs: bool = True) -> dict:
    from kg_ops.airflow.triggers.ray import RayJobTrigger

    stop = asyncio.Event()
    lags: list[tuple[float, float]] = []
    events: list[str] = []

    async def consume(trigger):
        async for ev in trigger.run():
            events.append(ev.payload["status"])
            return

    async def blocking_poller():
        import requests

        while not stop.is_set():
            with contextlib.suppress(requests.RequestException):
                requests.get(blocking_url, timeout=2)
            await asyncio.sleep(0.2)

    if n:  # a running triggerer has its secrets backends loaded already: do that first
        from kg_ops.airflow.hooks.ray import RayHook

        await RayHook(conn_id).asettings()
    tick = asyncio.create_task(ticker(stop, lags))
    if blocking_url:
        tasks = [asyncio.create_task(blocking_poller())]
    else:
        tasks = [asyncio.create_task(consume(RayJobTrigger(
            sid, ray_conn_id=conn_id, poll_interval=0.2, fetch_logs=fetch_logs)))
            for _ in range(n)]
    await asyncio.sleep(seconds)
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await tick
    out = summarise(lags)
    out["events"] = events
    return out


def blackhole() -> tuple[socket.socket, str]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1024)
    return s, f"http://127.0.0.1:{s.getsockname()[1]}"


def slow_server(delay_s: float) -> tuple[ThreadingHTTPServer, str]:
    class Slow(BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(delay_s)
            body = json.dumps({"submission_id": "x", "status": "RUNNING"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


def set_conn(conn_id: str, url: str, token: str = "t", timeout: float = 2.0) -> None:
    os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(
        {"conn_type": "ray", "host": url, "password": token,
         "extra": {"timeout": timeout, "retry_deadline": 3600}})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--triggers", type=int, default=20)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)  # the retry warnings are expected here
    results: dict = {"triggers": args.triggers, "seconds": args.seconds, "tick_ms": 10}

    results["baseline"] = asyncio.run(run_triggers("none", "x", 0, args.seconds))

    hole, hole_url = blackhole()
    set_conn("bench_blackhole", hole_url)
    results["blackhole"] = asyncio.run(run_triggers("bench_blackhole", "x", args.triggers,
                                                    args.seconds))
    results["blocking_reference"] = asyncio.run(run_triggers(
        "bench_blackhole", "x", 1, args.seconds, blocking_url=hole_url + "/api/jobs/x"))
    hole.close()

    srv, slow_url = slow_server(1.5)
    set_conn("bench_slow", slow_url, timeout=5.0)
    results["slow"] = asyncio.run(run_triggers("bench_slow", "x", args.triggers, args.seconds))
    srv.shutdown()

    from kg_ops.airflow.hooks.ray import RayHook, RaySettings
    from kg_ops.devcluster import LocalRayHead

    with LocalRayHead(num_cpus=1) as head:
        hook = RayHook(settings=RaySettings("bench", head.dashboard_url, head.token))
        sid = f"bench-lag-{os.getpid()}"
        hook.submit_job("while true; do echo tick; sleep 0.05; done", submission_id=sid)
        while hook.get_job(sid)["status"] != "RUNNING":  # measure steady state, not startup
            time.sleep(0.5)
        time.sleep(5)
        set_conn("bench_cluster", head.dashboard_url, head.token, timeout=10)
        results["cluster_status_only"] = asyncio.run(run_triggers(
            "bench_cluster", sid, args.triggers, args.seconds, fetch_logs=False))
        results["cluster"] = asyncio.run(run_triggers("bench_cluster", sid, args.triggers,
                                                      args.seconds))
        hook.stop_job(sid)
    for name in ("baseline", "blackhole", "slow", "cluster_status_only", "cluster",
                 "blocking_reference"):
        r = results[name]
        print(f"{name:<20}: p50 {r.get('lag_p50_ms')} ms  p99 {r.get('lag_p99_ms')} ms  "
              f"max {r.get('lag_max_ms')} ms (CPU in that tick {r.get('worst_tick_cpu_ms')} ms)"
              f"  ({r.get('ticks')} ticks)")
    write_results("trigger_lag", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
