"""The Ray Serve side of ``kgops serve``: three pieces per service ``NAME``.

* ``LinkPredictionModel``, one Serve application per model version (``NAME--<version id>``,
  not routed over HTTP): replicas holding a :class:`~kg_ops.serve.index.LinkIndex`; top-k
  queries from concurrent requests are batched with ``@serve.batch`` into one matrix product
  per candidate type.
* ``LinkPredictionGateway``, the application ``NAME`` at the route prefix: validates HTTP input
  (pydantic models, bounded ``k``, bounded body size), forwards to the live version and maps
  query errors to 404/422 with the service's message.
* a registry actor (detached, ``kgops-serve`` namespace) recording the live and the previous
  version. The gateway reads it at most every ``REFRESH_S``, so switching versions is a
  registry write: the new version is fully up before any request reaches it, and the old one
  keeps answering until then (see :mod:`kg_ops.serve.deploy`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

log = logging.getLogger(__name__)

NAMESPACE = "kgops-serve"
MODEL_DEPLOYMENT = "LinkPredictionModel"
GATEWAY_DEPLOYMENT = "LinkPredictionGateway"
K_MAX = 1000              # answers per query
MAX_TRIPLES = 10_000      # triples per /score request
MAX_BODY_BYTES = 1 << 20  # request bodies above this are refused (413) before parsing
MAX_NAME = 512            # characters in a key or relation name
BATCH_SIZE = 32           # top-k queries per batch (one product per candidate type)
BATCH_WAIT_S = 0.002      # how long a batch waits to fill; bounds the added latency
REFRESH_S = 0.2           # how stale the gateway's view of the live version may be


def version_app_name(name: str, version_id: str) -> str:
    return f"{name}--{version_id}"


# --- the registry -----------------------------------------------------------------------------
@ray.remote(num_cpus=0, max_restarts=-1)
class ServiceRegistry:
    """``{"live": spec | None, "previous": spec | None, "history": [...]}`` of one service."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {"live": None, "previous": None, "history": []}

    def get(self) -> dict[str, Any]:
        return self.state

    def put(self, state: dict[str, Any]) -> None:
        self.state = state


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


# --- model replicas ---------------------------------------------------------------------------
def _error(exc) -> dict[str, Any]:
    return {"status": exc.status, "detail": str(exc)}


@serve.deployment(name=MODEL_DEPLOYMENT, max_ongoing_requests=256, health_check_period_s=10,
                  graceful_shutdown_timeout_s=30)
class LinkPredictionModel:
    """One model version. Methods answer ``{"status": 200, "body": ...}`` or a query error
    (``{"status": 404|422, "detail": message}``): bad input is an answer, not an exception."""

    def __init__(self, version: dict[str, Any], threads: int = 1, memory_mib: float = 256.0):
        import torch

        from kg_ops.serve.index import LinkIndex
        from kg_ops.serve.version import ModelVersion

        torch.set_num_threads(max(1, int(threads)))
        self.index = LinkIndex(ModelVersion.from_dict(version), memory_mib=memory_mib)
        self.version_id = self.index.version.id

    async def predict(self, body: dict[str, Any]) -> dict[str, Any]:
        from kg_ops.serve.index import QueryError

        try:
            query = self.index.query(**body)
        except QueryError as exc:
            return _error(exc)
        answers = await self._topk(query)
        side = "tail" if query.tail_side else "head"
        return {"status": 200, "body": {"predict": side, "query": body, "answers": answers,
                                        "version": self.version_id}}

    @serve.batch(max_batch_size=BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _topk(self, queries: list) -> list[list[dict[str, Any]]]:
        return self.index.topk(queries)

    def score(self, triples: list[list[str]]) -> dict[str, Any]:
        from kg_ops.serve.index import QueryError

        try:
            scored = self.index.score([tuple(t) for t in triples])
        except QueryError as exc:
            return _error(exc)
        return {"status": 200, "body": {"scores": scored, "version": self.version_id}}

    def health(self) -> dict[str, Any]:
        return {"status": 200, "body": {"status": "ok", "version": self.version_id}}

    def info(self) -> dict[str, Any]:
        return {"status": 200, "body": self.index.info()}


# --- the HTTP gateway -------------------------------------------------------------------------
class PredictRequest(BaseModel):
    """``head`` (predict tails) or ``tail`` (predict heads), by entity key."""

    model_config = ConfigDict(extra="forbid")
    relation: str = Field(max_length=MAX_NAME)
    head: str | None = Field(None, max_length=MAX_NAME)
    tail: str | None = Field(None, max_length=MAX_NAME)
    k: int = Field(10, ge=1, le=K_MAX)
    filter_known: bool = True


class Triple(BaseModel):
    model_config = ConfigDict(extra="forbid")
    head: str = Field(max_length=MAX_NAME)
    relation: str = Field(max_length=MAX_NAME)
    tail: str = Field(max_length=MAX_NAME)


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    triples: list[Triple] = Field(min_length=1, max_length=MAX_TRIPLES)


api = FastAPI(title="kg_ops link prediction",
              description="Top-k link prediction and triple scoring over a published KG "
                          "embedding version.")


@api.middleware("http")
async def bounded_body(request: Request, call_next):
    """Refuse bodies over MAX_BODY_BYTES before anything reads them."""
    if request.method in ("POST", "PUT", "PATCH"):
        length = request.headers.get("content-length")
        if length is None:
            return JSONResponse({"detail": "send a Content-Length header (chunked request "
                                           "bodies are not accepted)"}, status_code=411)
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            return JSONResponse({"detail": f"request body of {length} bytes is over the "
                                           f"{MAX_BODY_BYTES} byte limit"}, status_code=413)
    return await call_next(request)


@serve.deployment(name=GATEWAY_DEPLOYMENT, max_ongoing_requests=512,
                  ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class LinkPredictionGateway:
    def __init__(self, name: str):
        self.name = name
        self.live: dict[str, Any] | None = None
        self._handle = None
        self._registry = None
        self._checked = float("-inf")

    async def serving(self) -> dict[str, Any] | None:
        """The live version this gateway routes to, re-read from the registry now."""
        await self._refresh()
        return self.live

    async def _refresh(self) -> None:
        self._checked = time.monotonic()
        if self._registry is None:  # looked up once it exists (a GCS call; it never moves)
            self._registry = registry(self.name)
        reg = self._registry
        live = (await reg.get.remote())["live"] if reg is not None else None
        if live and (self.live is None or live["app"] != self.live["app"]):
            self._handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, live["app"])
            log.info("routing to model version %s (%s)", live["version"]["id"], live["app"])
        self.live = live

    async def _call(self, method: str, *args: Any):
        if time.monotonic() - self._checked > REFRESH_S:
            await self._refresh()
        if self._handle is None:
            return JSONResponse({"detail": f"service {self.name!r} has no live model version; "
                                           "deploy one with `kgops serve --model URI`"},
                                status_code=503)
        handle = self._handle
        try:
            result = await getattr(handle, method).remote(*args)
        except Exception:
            # The version this request went to was replaced and removed meanwhile: once more
            # on the live one (the deployer drains before removing, so this is rare).
            await self._refresh()
            if self._handle is handle:
                raise
            result = await getattr(self._handle, method).remote(*args)
        if result["status"] != 200:
            return JSONResponse({"detail": result["detail"]}, status_code=result["status"])
        return result["body"]

    @api.post("/predict")
    async def predict(self, req: PredictRequest):
        """Top-k tails of ``(head, relation, ?)`` or heads of ``(?, relation, tail)``."""
        return await self._call("predict", req.model_dump(exclude_none=True))

    @api.post("/score")
    async def score(self, req: ScoreRequest):
        """Score and probability of each triple."""
        return await self._call("score", [[t.head, t.relation, t.tail] for t in req.triples])

    @api.get("/health")
    async def health(self):
        return await self._call("health")

    @api.get("/version")
    async def version(self):
        return await self._call("info")


def model_app(version: dict[str, Any], *, replicas: int = 1, num_cpus: float = 1.0,
              memory_mib: float = 256.0):
    threads = max(1, int(num_cpus))
    return LinkPredictionModel.options(
        num_replicas=replicas, ray_actor_options={"num_cpus": num_cpus},
    ).bind(version, threads=threads, memory_mib=memory_mib)


def gateway_app(name: str, replicas: int = 1):
    return LinkPredictionGateway.options(num_replicas=replicas).bind(name)
