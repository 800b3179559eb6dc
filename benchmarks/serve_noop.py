"""Serve's own per-request cost, for ``bench_serve --ceiling``: a deployment with the
service's ``/predict`` surface that computes nothing.

No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations as
objects, and the deployment class is built inside a function (pickled by value for the
replica), so its imports stay local and importing this module does not import Ray.
"""

from typing import Annotated


def noop_service(canned: bytes):
    """A Serve application with the service's ``/predict`` (FastAPI ingress, the same pydantic
    validation of the query, ``@serve.batch`` of the same size and wait) that answers
    ``canned`` to every query."""
    from fastapi import FastAPI, Query
    from fastapi.responses import JSONResponse, Response
    from ray import serve

    from kg_ops.serve.app import BATCH_SIZE, BATCH_WAIT_S, PredictRequest

    api = FastAPI()

    @serve.deployment(name="NoOp", max_ongoing_requests=256)
    @serve.ingress(api)
    class NoOp:
        @api.post("/predict")
        async def predict(self, req: PredictRequest):
            return await self._answer(req.model_dump(exclude_none=True))

        @api.get("/predict")
        async def predict_get(self, req: Annotated[PredictRequest, Query()]):
            return await self._answer(req.model_dump(exclude_none=True))

        @serve.batch(max_batch_size=BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
        async def _answer(self, bodies: list[dict]) -> list[Response]:
            return [Response(canned, media_type="application/json") for _ in bodies]

        @api.get("/health")
        async def health(self):
            return JSONResponse({"status": "ok", "version": "noop"})

    return NoOp.options(ray_actor_options={"num_cpus": 1}).bind()
