"""The Ray Serve side of ``kgops serve``: two pieces per service ``NAME``.

* ``LinkPredictionService``, the Serve application ``NAME`` at the route prefix: a FastAPI
  ingress whose replicas hold the live model version's
  :class:`~kg_ops.serve.index.LinkIndex`, so a request is one Serve hop (proxy -> replica).
  It validates HTTP input (pydantic models, bounded ``k``, bounded body size), maps query
  errors to 404/422 with the service's message, and batches the top-k queries of concurrent
  requests with ``@serve.batch`` into one matrix product per candidate type.
* a registry actor (detached, ``kgops-serve`` namespace) recording the live, the staged and the
  previous version, and what each replica holds.

Version swaps happen inside the replicas, driven by the registry: each replica re-reads it
every ``REFRESH_S`` on a background thread; a *staged* version is loaded beside the live one
(requests keep being answered meanwhile) and checked with a probe query, then the replica
reports it ready (or the load error). Once every replica is ready the deployer records the
staged version as live, and each replica switches with one assignment; requests already
running finish on the index they started with. See :mod:`kg_ops.serve.deploy`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Annotated, Any

import ray
from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

log = logging.getLogger(__name__)

NAMESPACE = "kgops-serve"
SERVICE_DEPLOYMENT = "LinkPredictionService"
K_MAX = 1000              # answers per query
MAX_TRIPLES = 10_000      # triples per /score request
MAX_QUERIES = 1000        # top-k queries per /predict/batch request
MAX_BODY_BYTES = 1 << 20  # request bodies above this are refused (413) before parsing
MAX_NAME = 512            # characters in a key or relation name
BATCH_SIZE = 32           # top-k queries per batch (one product per candidate type)
BATCH_WAIT_S = 0.002      # how long a batch waits to fill; bounds the added latency
REFRESH_S = 0.25          # how often a replica re-reads the registry (version swaps)
REPORT_TTL_S = 5.0        # a replica report older than this is from a replica that is gone


# --- the registry -----------------------------------------------------------------------------
@ray.remote(num_cpus=0, max_restarts=-1)
class ServiceRegistry:
    """The record of one service: ``{"live", "staged", "previous": spec | None, "history":
    [...], "route_prefix", "config"}``, and per replica what it holds (its last report)."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {"live": None, "staged": None, "previous": None,
                                      "history": []}
        self.replicas: dict[str, dict[str, Any]] = {}

    def get(self) -> dict[str, Any]:
        return self.state

    def put(self, state: dict[str, Any]) -> None:
        self.state = state

    def report(self, replica: str, held: dict[str, Any]) -> None:
        self.replicas[replica] = {**held, "at": time.time()}

    def reports(self, max_age_s: float = REPORT_TTL_S) -> dict[str, dict[str, Any]]:
        """The reports of replicas heard from within ``max_age_s``."""
        now = time.time()
        self.replicas = {r: v for r, v in self.replicas.items() if now - v["at"] < 60}
        return {r: v for r, v in self.replicas.items() if now - v["at"] <= max_age_s}


def registry(name: str, create: bool = False):
    """The registry actor of service ``name`` (created detached if asked), or None."""
    actor = f"registry-{name}"
    try:
        return ray.get_actor(actor, namespace=NAMESPACE)
    except ValueError:
        if not create:
            return None
    return ServiceRegistry.options(name=actor, namespace=NAMESPACE, lifetime="detached",
                                   get_if_exists=True).remote()


# --- HTTP input -------------------------------------------------------------------------------
class PredictRequest(BaseModel):
    """``head`` (predict tails) or ``tail`` (predict heads), by entity key."""

    model_config = ConfigDict(extra="forbid")
    relation: str = Field(max_length=MAX_NAME)
    head: str | None = Field(None, max_length=MAX_NAME)
    tail: str | None = Field(None, max_length=MAX_NAME)
    k: int = Field(10, ge=1, le=K_MAX)
    filter_known: bool = True


class BatchPredictRequest(BaseModel):
    """Many top-k queries in one request, answered together (one product per candidate
    type)."""

    model_config = ConfigDict(extra="forbid")
    queries: list[PredictRequest] = Field(min_length=1, max_length=MAX_QUERIES)


class Triple(BaseModel):
    model_config = ConfigDict(extra="forbid")
    head: str = Field(max_length=MAX_NAME)
    relation: str = Field(max_length=MAX_NAME)
    tail: str = Field(max_length=MAX_NAME)


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    triples: list[Triple] = Field(min_length=1, max_length=MAX_TRIPLES)


class BoundedBody:
    """ASGI middleware refusing bodies over MAX_BODY_BYTES before anything reads them (a plain
    ASGI wrapper: Starlette's ``@app.middleware("http")`` costs a task and a stream per
    request)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            length = dict(scope["headers"]).get(b"content-length")
            refusal = None
            if length is None:
                refusal = (411, "send a Content-Length header (chunked request bodies are not "
                                "accepted)")
            elif not length.isdigit() or int(length) > MAX_BODY_BYTES:
                refusal = (413, f"request body of {length.decode(errors='replace')} bytes is "
                                f"over the {MAX_BODY_BYTES} byte limit")
            if refusal:
                await JSONResponse({"detail": refusal[1]}, status_code=refusal[0])(
                    scope, receive, send)
                return
        await self.app(scope, receive, send)


api = FastAPI(title="kg_ops link prediction",
              description="Top-k link prediction and triple scoring over a published KG "
                          "embedding version.")
api.add_middleware(BoundedBody)


def _refusal(exc) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=exc.status)


def _indexed(i: int, resolve, **body):
    """``resolve(**body)``; a refusal names the query: ``queries[i]: ...``."""
    from kg_ops.serve.index import QueryError

    try:
        return resolve(**body)
    except QueryError as exc:
        raise QueryError(exc.status, f"queries[{i}]: {exc}") from exc


# --- the replicas -----------------------------------------------------------------------------
def load_index(version: dict[str, Any], memory_mib: float):
    """A :class:`LinkIndex` of ``version`` that has answered a probe top-1 query."""
    from kg_ops.serve.index import LinkIndex
    from kg_ops.serve.version import ModelVersion

    index = LinkIndex(ModelVersion.from_dict(version), memory_mib=memory_mib)
    index.probe()
    return index


@serve.deployment(name=SERVICE_DEPLOYMENT, max_ongoing_requests=256, health_check_period_s=10,
                  graceful_shutdown_timeout_s=30)
@serve.ingress(api)
class LinkPredictionService:
    """One replica: the live index, a staged one while a swap is under way, and the thread
    that follows the registry (see the module docstring)."""

    def __init__(self, name: str, boot: dict[str, Any], threads: int = 1,
                 memory_mib: float = 256.0):
        import torch

        torch.set_num_threads(max(1, int(threads)))
        self.name, self.memory_mib = name, float(memory_mib)
        self._registry = registry(name)
        state = ray.get(self._registry.get.remote()) if self._registry is not None else {}
        self.index = load_index((state.get("live") or {}).get("version") or boot, memory_mib)
        self.staged = None
        self._failed: dict[str, str] = {}  # version id -> why it could not be staged
        self._broken: dict[str, str] = {}  # the same for a live version loaded without staging
        self._replica = serve.get_replica_context().replica_id.unique_id
        self._stop = threading.Event()
        self._follower = threading.Thread(target=self._follow, name="kgops-version-follower",
                                          daemon=True)
        self._follower.start()

    # --- following the registry (background thread) -----------------------------------------
    def _follow(self) -> None:
        while not self._stop.wait(REFRESH_S):
            try:
                if self._registry is None:
                    self._registry = registry(self.name)
                    continue
                self._step(ray.get(self._registry.get.remote(), timeout=30))
                self._registry.report.remote(self._replica, self.held())
            except Exception:  # the registry restarting, say: try again next round
                log.exception("following the registry of service %s", self.name)

    def _step(self, state: dict[str, Any]) -> None:
        live = (state.get("live") or {}).get("version")
        staged = (state.get("staged") or {}).get("version")
        if live and live["id"] != self.index.version.id and live["id"] not in self._broken:
            self._switch(live)
        if not staged or staged["id"] == self.index.version.id:
            self.staged = None  # nothing to stage: the swap is done, or it was called off
            self._failed.clear()
        elif (self.staged is None or self.staged.version.id != staged["id"]) \
                and staged["id"] not in self._failed:
            self._stage(staged)

    def _stage(self, version: dict[str, Any]) -> None:
        self.staged = None  # at most one version beside the live one
        try:
            self.staged = load_index(version, self.memory_mib)
            log.info("staged version %s beside live %s", version["id"], self.index.version.id)
        except Exception as exc:
            self._failed[version["id"]] = f"{type(exc).__name__}: {exc}"[-2000:]
            log.exception("could not stage version %s", version["id"])

    def _switch(self, live: dict[str, Any]) -> None:
        """Serve ``live`` from now on (staged already, or loaded now: a replica that missed
        the staging); requests running on the old index finish on it."""
        new = self.staged
        if new is None or new.version.id != live["id"]:
            try:
                new = load_index(live, self.memory_mib)
            except Exception as exc:
                self._broken[live["id"]] = f"{type(exc).__name__}: {exc}"[-2000:]
                raise
        old, self.index, self.staged = self.index, new, None
        log.info("now serving version %s (was %s)", new.version.id, old.version.id)

    def held(self) -> dict[str, Any]:
        """What this replica holds: ``{"live": id, "staged": id | None, "failed": {id: why}}``."""
        return {"live": self.index.version.id,
                "staged": self.staged.version.id if self.staged is not None else None,
                "failed": {**self._broken, **self._failed}}

    def check_health(self) -> None:
        if not self._follower.is_alive():
            raise RuntimeError("the registry follower thread stopped")

    def __del__(self) -> None:
        self._stop.set()

    # --- HTTP ---------------------------------------------------------------------------------
    @api.post("/predict")
    async def predict(self, req: PredictRequest):
        """Top-k tails of ``(head, relation, ?)`` or heads of ``(?, relation, tail)``."""
        return await self._predict(req.model_dump(exclude_none=True))

    @api.get("/predict")
    async def predict_get(self, req: Annotated[PredictRequest, Query()]):
        """The same query as URL parameters (``?head=KEY&relation=NAME&k=10``): no request
        body, so Serve's replica need not fetch one back from the proxy."""
        return await self._predict(req.model_dump(exclude_none=True))

    async def _predict(self, body: dict[str, Any]):
        from kg_ops.serve.index import QueryError

        index = self.index  # one version per request, even across a swap
        try:
            query = index.query(**body)
        except QueryError as exc:
            return _refusal(exc)
        answers = await self._topk((index, query))
        return JSONResponse({"predict": "tail" if query.tail_side else "head", "query": body,
                       "answers": answers, "version": index.version.id})

    @api.post("/predict/batch")
    async def predict_batch(self, req: BatchPredictRequest):
        """The answers of many ``/predict`` queries, in order, computed as one batch (off the
        event loop, so single queries keep being answered meanwhile). One query the service
        cannot answer refuses the request, naming it (``queries[i]: ...``)."""
        from kg_ops.serve.index import QueryError

        index = self.index
        bodies = [q.model_dump(exclude_none=True) for q in req.queries]
        try:
            queries = [_indexed(i, index.query, **b) for i, b in enumerate(bodies)]
        except QueryError as exc:
            return _refusal(exc)
        answers = await asyncio.to_thread(index.topk, queries)
        return JSONResponse({"results": [
            {"predict": "tail" if q.tail_side else "head", "query": b, "answers": a}
            for q, b, a in zip(queries, bodies, answers, strict=True)],
            "version": index.version.id})

    @serve.batch(max_batch_size=BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _topk(self, items: list) -> list[list[dict[str, Any]]]:
        out: list = [None] * len(items)
        for index in {id(ix): ix for ix, _ in items}.values():  # one group per version
            rows = [i for i, (ix, _) in enumerate(items) if ix is index]
            for i, answers in zip(rows, index.topk([items[i][1] for i in rows]), strict=True):
                out[i] = answers
        return out

    @api.post("/score")
    async def score(self, req: ScoreRequest):
        """Score and probability of each triple."""
        from kg_ops.serve.index import QueryError

        index = self.index
        try:
            scored = index.score([(t.head, t.relation, t.tail) for t in req.triples])
        except QueryError as exc:
            return _refusal(exc)
        return JSONResponse({"scores": scored, "version": index.version.id})

    @api.get("/health")
    async def health(self):
        return JSONResponse({"status": "ok", "version": self.index.version.id})

    @api.get("/version")
    async def version(self):
        return JSONResponse(self.index.info())


def service_app(name: str, boot: dict[str, Any], *, replicas: int = 1, num_cpus: float = 1.0,
                memory_mib: float = 256.0):
    """The application of service ``name``; a replica starts with the registry's live version
    (``boot`` where the registry has none yet)."""
    threads = max(1, int(num_cpus))
    return LinkPredictionService.options(
        num_replicas=replicas, ray_actor_options={"num_cpus": num_cpus},
    ).bind(name, boot, threads=threads, memory_mib=memory_mib)
