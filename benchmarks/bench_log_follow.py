"""Bytes of job log fetched while Airflow follows a Ray job that prints ``--lines`` lines.

A real local Ray head (token auth) runs one job that prints ``--lines`` lines of ~70 bytes over
about ``--seconds`` seconds. Every follower reaches the dashboard through its own byte-counting
TCP proxy on 127.0.0.1, so what is counted is what crossed the wire (HTTP and websocket), whatever
the code does. Followers, each run for two code trees side by side in the same run (``--before``
REV, extracted with ``git archive``, and the working tree):

- ``sync``: ``SubmitRayJobOperator.execute`` re-attaching to the job and waiting in-process;
- ``deferred``: the same with ``deferrable=True``: ``execute`` defers, ``RayJobTrigger.run``
  follows the job, then ``execute_complete``;
- ``sensor``: ``RayJobSensor.poke`` every ``--poke-interval`` seconds until the job is done.

    python -m benchmarks.bench_log_follow [--lines 50000] [--seconds 60] [--before 0c1a57e]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import write_results

REPO = Path(__file__).resolve().parents[1]
MODES = ("sync", "deferred", "sensor")

# Runs in a child process with the code tree under test first on sys.path.
FOLLOW = r'''
import asyncio, json, logging, sys, time, types
tree, mode, sid, conn, poke = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("__editable__")]
sys.path.insert(0, tree)
logging.basicConfig(level=logging.WARNING)
import kg_ops
assert kg_ops.__file__.startswith(tree), kg_ops.__file__
ti = types.SimpleNamespace(xcom_push=lambda **k: None, dag_id="bench", run_id="r",
                           task_id="follow", map_index=-1, try_number=1)
ctx = {"ti": ti}
if mode == "sensor":
    from kg_ops.airflow.sensors.ray import RayJobSensor
    sensor = RayJobSensor(task_id="follow", submission_id=sid, ray_conn_id=conn)
    while not (r := sensor.poke(ctx)).is_done:
        time.sleep(poke)
    result = r.xcom_value
else:
    from airflow.sdk.exceptions import TaskDeferred
    from kg_ops.airflow.operators.ray import SubmitRayJobOperator
    op = SubmitRayJobOperator(task_id="follow", entrypoint="unused", ray_conn_id=conn,
                              submission_id=sid, deferrable=mode == "deferred")
    try:
        result = op.execute(ctx)
    except TaskDeferred as deferred:
        async def first_event():
            async for event in deferred.trigger.run():
                return event.payload
        result = op.execute_complete(ctx, asyncio.run(first_event()))
print(json.dumps({"status": result.get("status")}))
'''

JOB = ("python -c \"import sys, time\n"
       "n, s = {lines}, {seconds}\n"
       "for i in range(n):\n"
       "    print(f'step {{i:06d}} loss 0.123456 edges/s 12345.6 ' + 'x' * 24)\n"
       "    if i % 500 == 499: sys.stdout.flush(); time.sleep(s * 500 / n)\n\"")


class CountingProxy:
    """A TCP proxy on 127.0.0.1 that counts the bytes sent from the dashboard to the client."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.downstream = 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._serve, args=(ready,), daemon=True).start()
        ready.wait()

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _pipe(self, reader, writer, count: bool) -> None:
        try:
            while data := await reader.read(65536):
                if count:
                    self.downstream += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_r, client_w) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pipe(client_r, server_w, False),
                             self._pipe(server_r, client_w, True))


def old_tree(rev: str) -> str:
    out = tempfile.mkdtemp(prefix="kgops-bench-before-")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "kg_ops"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", out], input=archive, check=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=50_000)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--before", default="0c1a57e", help="git revision of the 'before' code")
    p.add_argument("--poke-interval", type=float, default=5.0,
                   help="sensor poke interval (the refresh DAG's)")
    args = p.parse_args(argv)

    from urllib.parse import urlsplit

    from kg_ops.airflow.hooks.ray import RayHook, RaySettings
    from kg_ops.devcluster import LocalRayHead

    trees = {"before": old_tree(args.before), "after": str(REPO)}
    airflow_home = tempfile.mkdtemp(prefix="kgops-bench-airflow-")
    results: dict = {"lines": args.lines, "job_seconds": args.seconds, "before": args.before}
    with LocalRayHead(num_cpus=2) as head:
        hook = RayHook(settings=RaySettings("bench", head.dashboard_url, head.token))
        sid = f"bench-log-follow-{int(time.time())}"
        hook.submit_job(JOB.format(lines=args.lines, seconds=args.seconds), submission_id=sid)
        port = urlsplit(head.dashboard_url).port
        procs = {}
        for name, tree in trees.items():
            for mode in MODES:
                proxy = CountingProxy(port)
                conn = f"bench_{name}_{mode}"
                env = {**os.environ, "AIRFLOW_HOME": airflow_home,
                       f"AIRFLOW_CONN_{conn.upper()}": json.dumps({
                           "conn_type": "ray", "host": f"http://127.0.0.1:{proxy.port}",
                           "password": head.token})}
                cmd = [sys.executable, "-c", FOLLOW, tree, mode, sid, conn,
                       str(args.poke_interval)]
                procs[(name, mode)] = (proxy, subprocess.Popen(
                    cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
                    time.perf_counter())
        for (name, mode), (proxy, proc, t0) in procs.items():
            out, err = proc.communicate(timeout=args.seconds * 10 + 120)
            if proc.returncode != 0:
                raise SystemExit(f"{name}/{mode} failed:\n{err[-3000:]}")
            row = {"bytes_received": proxy.downstream,
                   "status": json.loads(out.strip().splitlines()[-1])["status"],
                   "wall_s": round(time.perf_counter() - t0, 1)}
            results.setdefault(mode, {})[name] = row
        # The whole log, once the job is over (every follower waited for it to end).
        log_bytes = len(hook.get_job_logs(sid).encode())
    for mode in MODES:
        for row in results[mode].values():
            row["times_the_log"] = round(row["bytes_received"] / max(log_bytes, 1), 2)
    results["log_bytes"] = log_bytes
    for mode in MODES:
        b, a = results[mode]["before"], results[mode]["after"]
        results[mode]["ratio_before_over_after"] = round(b["bytes_received"]
                                                         / max(a["bytes_received"], 1), 2)
        print(f"{mode:9s} before {b['bytes_received']:>12,d} B ({b['times_the_log']}x the log)"
              f"   after {a['bytes_received']:>12,d} B ({a['times_the_log']}x)")
    print(f"job log: {log_bytes:,d} bytes, {args.lines:,d} lines")
    write_results("bench_log_follow", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
