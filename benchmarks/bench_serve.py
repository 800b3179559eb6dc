"""Link-prediction service latency and throughput vs the same top-k computed in-process.

For each model version (a CoDEx-M model trained here; random embeddings in the export format
over the 2.8M-node synthetic graph), top-10 tail/head queries built from the graph's test
triples (filtered, type-constrained: the service's defaults) are answered

* in-process: :class:`kg_ops.serve.index.LinkIndex` called directly in batches of 1, 8 and
  32 queries (no HTTP, no Ray): the floor;
* over HTTP by ``kgops serve`` on a local Ray (one model replica, 1 CPU, the defaults), by a
  closed-loop client keeping 1, 8 and 32 requests in flight (POST and GET ``/predict``), and
  ``POST /predict/batch`` carrying 32 and 256 queries per request (2 in flight), once per
  ingress of ``--ingress``: ``proxy`` (Serve's HTTP proxy in front of the replica, Serve's
  default) and ``direct`` (the Ray processes started with
  ``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``: the replica answers HTTP on its own port).

Both run on the same 2-core machine in one run; the HTTP client shares the cores with the
proxy and the replicas. Reported: p50/p99 latency and queries/s per level, and the ratio of
the service's throughput to the floor's at the same batch size.

    flock /tmp/kgops-cpu.lock .venv/bin/python -m benchmarks.bench_serve \\
        --codex-m /tmp/kgops-bench-serve/codex-m/evaluation \\
        --synth-graph /tmp/kgops-bench-serve/synth-2.8m/graph [--ingress proxy,direct]

(``--merge`` keeps every section of the earlier results that this run does not measure.)

``--ceiling`` (with ``--codex-m``) measures what HTTP alone allows on this machine: the same
client against a bare ASGI app under uvicorn (the server Serve's replicas run; httptools,
uvloop) that parses each request's JSON body and returns a canned answer of the service's
size and shape, with no Serve, no Ray and no top-k: an upper bound for any per-query HTTP
service here, to read the throughput goal against. Then, per ``--ingress``, the same for Ray
Serve: a no-op deployment with the service's ``/predict`` (FastAPI ingress, the same request
validation and ``@serve.batch``) answering the canned body: the bound for any Serve service.

Per level, ``mean_batch_formed`` is the mean number of queries per ``@serve.batch`` call the
replica made: the queries answered over the calls counted by Serve's
``serve_actual_batch_size`` histogram.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import peak_rss_mib, read_results, write_results  # noqa: E402

LEVELS = (1, 8, 32)
BULK = (32, 256)      # queries per POST /predict/batch request
BULK_CONCURRENCY = 2  # batch requests in flight: one computing while the next one travels
K = 10
# The environment of the Ray processes per ingress (cluster-level settings, read by Serve's
# controller and replicas when they start). "optimized" is Ray's throughput-optimized bundle:
# direct ingress, user code on the replica's event loop, gRPC between processes, buffered
# request logs, GC frozen after start.
INGRESS_ENV = {
    "proxy": {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"},
    "direct": {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"},
    "optimized": {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
}


def make_queries(index, n: int, seed: int = 0) -> list[dict]:
    """``n`` request bodies: both directions of seeded random test triples, by key."""
    from kg_ops.graph.kg import load_edges

    test = load_edges(index.version.graph_uri, "test")
    pick = np.random.default_rng(seed).choice(len(test), size=min(n, len(test)), replace=False)
    names = [r.name for r in index.schema.relations]
    out = []
    for i, (h, r, t) in enumerate(test[pick]):
        side = {"head": index.keys[h]} if i % 2 == 0 else {"tail": index.keys[t]}
        out.append({**side, "relation": names[r], "k": K})
    return out


def pct(lat: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(lat) * 1000.0, q)), 2)


def floor(index, bodies: list[dict], duration: float) -> dict:
    """In-process top-k in batches of each level's size."""
    queries = [index.query(**b) for b in bodies]
    out = {}
    for b in LEVELS:
        index.topk(queries[:b])  # warm
        lat, done, i = [], 0, 0
        t_end = time.perf_counter() + duration
        t0 = time.perf_counter()
        while time.perf_counter() < t_end:
            batch = [queries[(i + j) % len(queries)] for j in range(b)]
            i += b
            t = time.perf_counter()
            index.topk(batch)
            lat.append(time.perf_counter() - t)
            done += b
        wall = time.perf_counter() - t0
        out[f"batch_{b}"] = {"batches": len(lat), "batch_p50_ms": pct(lat, 50),
                             "batch_p99_ms": pct(lat, 99), "queries_per_s": round(done / wall, 1)}
        print(f"  in-process batch {b:>2}: p50 {out[f'batch_{b}']['batch_p50_ms']} ms, "
              f"{out[f'batch_{b}']['queries_per_s']} q/s", flush=True)
    return out


async def _load(url: str, bodies: list[dict], concurrency: int, duration: float,
                warmup: float, method: str = "POST", per_request: int = 1) -> dict:
    """Closed loop: ``concurrency`` workers, each sending its next request as soon as the last
    one is answered; ``method`` GET sends the query as URL parameters; ``per_request`` > 1
    sends that many queries per ``/predict/batch`` request."""
    import aiohttp

    if method == "GET":
        bodies = [{k: str(v) for k, v in b.items()} for b in bodies]
    if per_request > 1:
        url += "/batch"
        bodies = [{"queries": [bodies[(i + j) % len(bodies)] for j in range(per_request)]}
                  for i in range(0, len(bodies), per_request)]

    lat: list[float] = []
    errors: list[str] = []
    answered = 0  # answers, warm-up included (refusals are never batched)
    start = time.perf_counter()
    measure_from, end = start + warmup, start + warmup + duration
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:
        async def worker(w: int) -> None:
            nonlocal answered
            j = w
            while (t := time.perf_counter()) < end:
                body = bodies[j % len(bodies)]
                j += concurrency
                send = session.post(url, json=body) if method == "POST" else \
                    session.get(url, params=body)
                async with send as resp:
                    await resp.read()
                    status = resp.status
                answered += status == 200
                if t >= measure_from:
                    if status == 200:
                        lat.append(time.perf_counter() - t)
                    else:
                        errors.append(str(status))
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    wall = time.perf_counter() - measure_from
    return {"requests": len(lat), "errors": len(errors), "p50_ms": pct(lat, 50),
            "p99_ms": pct(lat, 99), "queries_per_s": round(len(lat) * per_request / wall, 1),
            "answered_with_warmup": answered}


# --- the HTTP ceiling ------------------------------------------------------------------------
_CANNED: bytes | None = None


async def ceiling_app(scope, receive, send) -> None:
    """Bare ASGI app: read and parse the JSON body (as the service must), answer the canned
    body named by ``KGOPS_CEILING_BODY``. No routing framework, no Serve, no computation."""
    global _CANNED
    if scope["type"] != "http":
        return
    if _CANNED is None:
        _CANNED = Path(os.environ["KGOPS_CEILING_BODY"]).read_bytes()
    body, more = b"", True
    while more:
        msg = await receive()
        body += msg.get("body", b"")
        more = msg.get("more_body", False)
    json.loads(body or b"{}")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(_CANNED)).encode())]})
    await send({"type": "http.response.body", "body": _CANNED})


def _wait_answering(server, url: str, body: bytes, timeout_s: float = 30.0) -> None:
    """Until ``url`` answers a POST of ``body``; an error if ``server`` exits or the deadline
    passes first."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"),
                                   timeout=1)
            return
        except OSError as exc:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"the ceiling server on {url} did not start") from exc
            time.sleep(0.2)


def canned_answer(index, body: dict) -> bytes:
    """The service's answer to ``body``, as the ceilings send it back to every request."""
    q = index.query(**body)
    return json.dumps({"predict": "tail" if q.tail_side else "head", "query": body,
                       "answers": index.topk([q])[0], "version": index.version.id}).encode()


def ceiling(index, bodies: list[dict], duration: float, warmup: float,
            work: str) -> dict:
    """The client at each level against :func:`ceiling_app`, with 1 server process (as one
    replica) and with 2 (every core)."""
    import subprocess

    from kg_ops.devcluster import free_ports

    canned = canned_answer(index, bodies[0])
    path = Path(work) / "ceiling-body.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(canned)
    out: dict = {"response_bytes": len(canned)}
    for procs in (1, 2):
        port = free_ports(1)[0]
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "benchmarks.bench_serve:ceiling_app",
             "--host", "127.0.0.1", "--port", str(port), "--workers", str(procs),
             "--loop", "uvloop", "--http", "httptools", "--no-access-log",
             "--log-level", "warning"],
            cwd=str(Path(__file__).resolve().parents[1]),
            env={**os.environ, "KGOPS_CEILING_BODY": str(path)})
        url = f"http://127.0.0.1:{port}/predict"
        try:
            _wait_answering(server, url, json.dumps(bodies[0]).encode())
            into = out[f"server_processes_{procs}"] = {}
            for c in LEVELS:
                r = into[f"concurrency_{c}"] = asyncio.run(
                    _load(url, bodies, c, duration, warmup))
                _show(f"HTTP ceiling ({procs} server process{'es' if procs > 1 else ''}) "
                      f"POST concurrency {c:>2}", r)
        finally:
            server.terminate()
            server.wait(timeout=30)
    return out


# How often Ray's processes report metrics (Ray's default is 10 s): the batch sizes the replica
# formed at one level are read from Serve's own histogram before the next level starts.
METRICS_REPORT_MS = 1000


def batches_formed(metrics_port: int) -> float:
    """How many ``@serve.batch`` calls the replica has made: the count of Serve's
    ``serve_actual_batch_size`` histogram, from this node's metrics endpoint. (Not its sum:
    Ray exports a histogram's sum from bucket midpoints, so batches of 1 add 0.5.)"""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                  timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ray_serve_actual_batch_size_count{"))


def _measured(metrics_port: int, *load_args, **load_kwargs) -> dict:
    """:func:`_load`'s figures plus the mean size of the batches the replica formed meanwhile:
    the queries answered (warm-up included) over the batch calls counted."""
    before = batches_formed(metrics_port)
    r = asyncio.run(_load(*load_args, **load_kwargs))
    time.sleep(2.5 * METRICS_REPORT_MS / 1000)  # the last report of this level
    batches = batches_formed(metrics_port) - before
    r["mean_batch_formed"] = round(r["answered_with_warmup"] / batches, 1) if batches else None
    return r


def _levels(metrics_port: int, url: str, bodies: list[dict], duration: float, warmup: float,
            label: str) -> dict:
    """POST (``concurrency_C``) and GET (``get.concurrency_C``) ``url`` at every level."""
    out: dict = {}
    for method, into in (("POST", out), ("GET", out.setdefault("get", {}))):
        for c in LEVELS:
            r = into[f"concurrency_{c}"] = _measured(metrics_port, url, bodies, c, duration,
                                                     warmup, method)
            _show(f"{label} {method:<4} concurrency {c:>2}", r)
    return out


@contextlib.contextmanager
def local_serve(ingress: str):
    """A fresh local Ray whose processes run with ``ingress``; yields the port of its metrics
    endpoint, and shuts Serve and Ray down after."""
    import ray
    from ray import serve

    from kg_ops.devcluster import free_ports

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray starts its workers (Serve's proxy, the replica) at nice 15; on a machine shared with
    # other work that measures the neighbours, not the service. At 0 they run at the floor's
    # priority (this process's), so the two are compared on equal terms.
    os.environ.setdefault("RAY_worker_niceness", "0")
    os.environ.update(INGRESS_ENV[ingress])
    # No load balancer has to deregister a replica here: shut down without the 30 s drain.
    os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "1"
    # Ray's system settings are read from case-sensitive RAY_<name> variables.
    os.environ["RAY_metrics_report_interval_ms"] = str(METRICS_REPORT_MS)  # noqa: SIM112
    metrics_port = free_ports(1)[0]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _metrics_export_port=metrics_port)
    try:
        yield metrics_port
    finally:
        serve.shutdown()
        ray.shutdown()


def service(uri: str, bodies: list[dict], duration: float, warmup: float,
            ingress: str = "proxy") -> dict:
    """Deploy ``uri`` on a fresh local Ray + Serve whose processes run with ``ingress`` and
    load it at each level."""
    from kg_ops.devcluster import free_ports
    from kg_ops.serve.deploy import deploy

    with local_serve(ingress) as metrics_port:
        t = time.perf_counter()
        manifest = deploy(uri, name="bench", route_prefix="/kg", http_port=free_ports(1)[0],
                          out=os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                           f"kgops-bench-serve-deploy-{os.getpid()}"))
        deploy_s = time.perf_counter() - t
        want = "proxy" if ingress == "proxy" else "direct"
        if manifest["outputs"]["ingress"] != want:
            raise RuntimeError(f"asked for {ingress} ingress, the deploy reports "
                               f"{manifest['outputs']['ingress']}")
        url = manifest["outputs"]["url"] + "/predict"
        print(f"  {ingress} ingress: {url}", flush=True)
        out = {"deploy_s": round(deploy_s, 1), "url": url,
               **_levels(metrics_port, url, bodies, duration, warmup, ingress)}
        for b in BULK:
            r = out.setdefault("batch", {})[f"queries_{b}"] = asyncio.run(
                _load(url, bodies, BULK_CONCURRENCY, duration, warmup, per_request=b))
            _show(f"{ingress} POST /predict/batch of {b:>3}, {BULK_CONCURRENCY} in flight", r)
        return out


def serve_ceiling(canned: bytes, bodies: list[dict], duration: float, warmup: float,
                  ingress: str) -> dict:
    """The client at each level (GET and POST) against
    :func:`benchmarks.serve_noop.noop_service` with ``ingress``."""
    from ray import serve

    from benchmarks.serve_noop import noop_service
    from kg_ops.devcluster import free_ports
    from kg_ops.serve.deploy import http_url, ingress_in_effect, start_serve

    with local_serve(ingress) as metrics_port:
        endpoint = start_serve("127.0.0.1", free_ports(1)[0])
        serve.run(noop_service(canned), name="noop", route_prefix="/kg")
        url = ingress_in_effect("noop", endpoint, http_url(endpoint, "/kg"), "noop", 120)["url"]
        return {"url": url, **_levels(metrics_port, url + "/predict", bodies, duration, warmup,
                                      f"Serve no-op ({ingress})")}


def _show(what: str, r: dict) -> None:
    formed = f", batches of {r['mean_batch_formed']}" if "mean_batch_formed" in r else ""
    print(f"  service {what}: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
          f"{r['queries_per_s']} q/s, {r['errors']} errors{formed}", flush=True)


def bench(label: str, uri: str, args, only_ceiling: bool = False) -> dict:
    import torch

    from kg_ops.serve.index import LinkIndex

    print(f"{label}: {uri}", flush=True)
    torch.set_num_threads(1)  # as the replica (1 CPU, 1 thread)
    t = time.perf_counter()
    index = LinkIndex.open(uri)
    load_s = time.perf_counter() - t
    bodies = make_queries(index, args.queries)
    ranges = [index.candidate_range(index.relations[b["relation"]], "head" in b)
              for b in bodies]
    info = {"uri": uri, "version": index.version.id, "graph": index.schema.name,
            "entities": index.schema.num_nodes, "relations": index.schema.num_relations,
            "embedding_dim": int(index.emb.shape[1]), "known_triples": index.filters.num_triples,
            "candidates_per_query_mean": round(float(np.mean([hi - lo for lo, hi in ranges])),
                                               1),
            "queries": len(bodies), "k": K, "index_load_s": round(load_s, 1)}
    fl = floor(index, bodies, args.duration)
    if only_ceiling:
        top = ceiling(index, bodies, args.duration, args.warmup, args.work)
        floor32 = fl["batch_32"]["queries_per_s"]
        top["over_floor_qps_at_32"] = {
            k: round(v["concurrency_32"]["queries_per_s"] / floor32, 3)
            for k, v in top.items() if k.startswith("server_processes")}
        print(f"  HTTP ceiling over the floor at concurrency 32: "
              f"{top['over_floor_qps_at_32']}", flush=True)
        canned = canned_answer(index, bodies[0])
        del index
        gc.collect()
        noop = {ingress: serve_ceiling(canned, bodies, args.duration, args.warmup, ingress)
                for ingress in args.ingress}
        for sv in noop.values():
            sv["over_floor_qps_at_32"] = {
                m: round(r["concurrency_32"]["queries_per_s"] / floor32, 3)
                for m, r in (("post", sv), ("get", sv["get"]))}
        print(f"  Serve no-op over the floor at concurrency 32: "
              f"{ {k: v['over_floor_qps_at_32'] for k, v in noop.items()} }", flush=True)
        return {**info, "in_process": fl, "http_ceiling": top, "serve_noop_ceiling": noop}
    del index
    gc.collect()
    by_ingress, goals = {}, {}
    best_floor = fl["batch_32"]["queries_per_s"]
    for ingress in args.ingress:
        sv = by_ingress[ingress] = service(uri, bodies, args.duration, args.warmup, ingress)
        sv["over_floor_qps"] = {"post": _ratios(sv, fl), "get": _ratios(sv["get"], fl),
                                "batch": {k: round(v["queries_per_s"] / best_floor, 3)
                                          for k, v in sv["batch"].items()}}
        goals[ingress] = {"post": _goals(sv, sv["over_floor_qps"]["post"]),
                          "get": _goals(sv["get"], sv["over_floor_qps"]["get"]),
                          "batch_over_floor_at_32": sv["over_floor_qps"]["batch"]}
        print(f"  goals ({ingress}): {goals[ingress]}", flush=True)
    return {**info, "in_process": fl, "service": by_ingress, "goals": goals}


def _ratios(sv: dict, fl: dict) -> dict:
    return {f"concurrency_{c}": round(sv[f"concurrency_{c}"]["queries_per_s"]
                                      / fl[f"batch_{c}"]["queries_per_s"], 3) for c in LEVELS}


def _goals(sv: dict, ratio: dict) -> dict:
    return {"p99_ms_at_8": sv["concurrency_8"]["p99_ms"],
            "p99_under_50ms_at_8": sv["concurrency_8"]["p99_ms"] < 50.0,
            "throughput_ratio_at_32": ratio["concurrency_32"],
            "throughput_at_32_at_least_half_of_floor": ratio["concurrency_32"] >= 0.5}


def synth_version(graph: str, work: str) -> str:
    from kg_ops.manifest import read_manifest
    from kg_ops.serve.synthetic import write_random_version

    out = os.path.join(work, "synth-random-version")
    if read_manifest(os.path.join(out, "evaluation")) is None:
        t = time.perf_counter()
        write_random_version(graph, out, dim=64, decoder="distmult")
        print(f"wrote random version in {time.perf_counter() - t:.0f} s", flush=True)
    return os.path.join(out, "evaluation")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--codex-m", help="evaluate output of a CoDEx-M model")
    p.add_argument("--synth-graph", help="the 2.8M-node synthetic graph (kgops synth)")
    p.add_argument("--work", default="/tmp/kgops-bench-serve")
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per level")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--ingress", default="proxy,direct",
                   type=lambda v: [x.strip() for x in v.split(",") if x.strip()],
                   help="Serve ingresses measured side by side: proxy (Serve's HTTP proxy), "
                        "direct (RAY_SERVE_ENABLE_DIRECT_INGRESS=1), optimized "
                        "(RAY_SERVE_THROUGHPUT_OPTIMIZED=1, direct ingress and more); "
                        "default proxy,direct")
    p.add_argument("--merge", action="store_true",
                   help="keep the sections of benchmarks/results/bench_serve.json this run does "
                        "not measure")
    p.add_argument("--ceiling", action="store_true",
                   help="with --codex-m: the HTTP ceiling of this machine (a bare ASGI app, "
                        "no Serve) and Serve's (a no-op deployment with the service's /predict, "
                        "per --ingress) next to the floor, stored as 'codex-m http ceiling'")
    p.add_argument("--prepare-only", action="store_true",
                   help="only write the synth random version (data preparation, no measurement)")
    args = p.parse_args(argv)
    if unknown := set(args.ingress) - set(INGRESS_ENV):
        p.error(f"--ingress: unknown {sorted(unknown)}; choose from {sorted(INGRESS_ENV)}")
    results = {"setup": {"levels": list(LEVELS), "k": K, "filter_known": True,
                         "replica": "1 replica, 1 CPU, torch 1 thread (kgops serve defaults)",
                         "floor": "LinkIndex.topk in this process, 1 torch thread, batches of "
                                  "the level's size", "duration_s": args.duration,
                         "client": "aiohttp closed loop on the same 2-core machine",
                         "priority": "Ray workers (Serve proxy, replica) at nice 0 "
                                     "(RAY_worker_niceness=0; Ray's default is 15), the "
                                     "floor's and the client's priority",
                         "requests": "service.INGRESS: POST /predict with a JSON body "
                                     "(the documented API); .get: GET /predict with the "
                                     "same query as URL parameters; .batch.queries_B: POST "
                                     f"/predict/batch with B queries per request, "
                                     f"{BULK_CONCURRENCY} requests in flight (queries_per_s "
                                     "counts queries)",
                         "ingress": "proxy: Serve's HTTP proxy -> replica (Serve's "
                                    "default); direct: Ray started with "
                                    "RAY_SERVE_ENABLE_DIRECT_INGRESS=1, the client calls the "
                                    "replica's own HTTP port; optimized: direct with "
                                    "RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (user code on the "
                                    "replica's event loop, buffered logs, GC frozen)",
                         "ratios": "over_floor_qps: service q/s over the in-process floor's "
                                   "at the same batch size (batch: over the floor at batch "
                                   "32)",
                         "mean_batch_formed": "queries per @serve.batch call of the replica "
                                              "during the level: the queries answered "
                                              "(warm-up included) over the calls counted by "
                                              "Serve's serve_actual_batch_size histogram"}}
    if args.prepare_only:
        print(synth_version(args.synth_graph, args.work))
        return 0
    if args.codex_m and args.ceiling:
        results["codex-m http ceiling"] = bench("codex-m", args.codex_m, args,
                                                only_ceiling=True)
    elif args.codex_m:
        results["codex-m"] = bench("codex-m", args.codex_m, args)
    if args.synth_graph:
        uri = synth_version(args.synth_graph, args.work)
        results["synth-2.8m"] = bench("synth-2.8m (random embeddings)", uri, args)
        results["synth-2.8m"]["embeddings"] = "random (write_random_version), not trained"
    results["peak_rss_mib"] = round(peak_rss_mib(), 1)
    if args.merge:  # keep the sections of an earlier run not measured now
        old = read_results("bench_serve")
        kept = {k: ({"measured_at": old.get("created_at"), **v} if "measured_at" not in v else v)
                for k, v in old["results"].items()
                if k not in results and k not in ("setup", "peak_rss_mib")}
        results = {**kept, **results}
    write_results("bench_serve", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
