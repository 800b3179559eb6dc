"""The kg_ops plugin's web app, mounted by the api-server at ``/kgops``; every route behind
Airflow's own authentication and authorisation (the api-server's auth manager).

- ``/kgops/versions`` (HTML) and ``/kgops/versions.json``: the published embedding versions.
  Readable by whoever may read the refresh DAG's runs.
- ``/kgops/reports/{dag_id}/{run_id}/{task_id}``: the evaluation report (``report.html``) of
  that task instance, read from the artifact store; ``.../manifest`` is the evaluation stage's
  manifest (metrics, protocol, embeddings URI). Readable by whoever may read that DAG's runs.
  Only URIs the task itself returned (XCom) are ever opened: no path comes from the request.

Plugin apps are mounted without authentication unless they add it (DESIGN.md, Airflow 3.3 UI
facts): each route depends on ``requires_access_dag``, which accepts the UI's session cookie or
an ``Authorization: Bearer`` token exactly as Airflow's REST API does. The auto-generated
``/docs`` and ``/openapi.json`` are switched off (they would be unauthenticated).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from kg_ops.airflow.published import published_versions, render_versions_page

URL_PREFIX = "/kgops"
REFRESH_DAG_ID = "kg_embedding_refresh"


def report_path(dag_id: str, run_id: str, task_id: str) -> str:
    """The report route of one task instance, relative to the api-server's base URL."""
    parts = (quote(str(p), safe="") for p in (dag_id, run_id, task_id))
    return f"{URL_PREFIX}/reports/" + "/".join(parts)


def task_result(dag_id: str, run_id: str, task_id: str) -> dict[str, Any] | None:
    """The task instance's return value (XCom ``return_value``) from the metadata DB."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.execute(
            select(XComModel).where(XComModel.dag_id == dag_id, XComModel.run_id == run_id,
                                    XComModel.task_id == task_id,
                                    XComModel.key == "return_value")
            .order_by(XComModel.map_index).limit(1)
        ).scalars().first()
        value = XComModel.deserialize_value(row) if row is not None else None
    return value if isinstance(value, dict) else None


def read_artifact(dag_id: str, run_id: str, task_id: str, which: str) -> bytes:
    """Bytes of the report (``which="report"``) or manifest of a task instance's result; a 404
    that says why when the task has not produced it."""
    from fastapi import HTTPException

    from kg_ops.store import get_store

    result = task_result(dag_id, run_id, task_id)
    if result is None:
        raise HTTPException(404, f"task {task_id!r} of run {run_id!r} of DAG {dag_id!r} has no "
                                 "result yet (not finished, or not an evaluation task)")
    uri = (result.get("manifest_uri") if which == "manifest"
           else (result.get("outputs") or {}).get("report"))
    if not uri:
        raise HTTPException(404, f"the result of task {task_id!r} (run {run_id!r}) names no "
                                 f"{which}")
    try:
        return get_store(uri).read_bytes(uri)
    except FileNotFoundError as exc:
        raise HTTPException(404, f"{which} {uri} no longer exists in the artifact store") from exc


def create_app():
    """The FastAPI app of the kg_ops plugin (see the module docstring)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from fastapi import Depends, FastAPI, Response
    from fastapi.responses import HTMLResponse

    app = FastAPI(title="kg_ops", docs_url=None, redoc_url=None, openapi_url=None)
    read_refresh_runs = [Depends(requires_access_dag("GET", DagAccessEntity.RUN,
                                                     param_dag_id=REFRESH_DAG_ID))]
    read_runs = [Depends(requires_access_dag("GET", DagAccessEntity.RUN))]

    @app.get("/versions", response_class=HTMLResponse, dependencies=read_refresh_runs)
    def versions_page(limit: int = 50) -> str:
        return render_versions_page(published_versions(limit))

    @app.get("/versions.json", dependencies=read_refresh_runs)
    def versions_json(limit: int = 50) -> list[dict[str, Any]]:
        return published_versions(limit)

    @app.get("/reports/{dag_id}/{run_id}/{task_id}", response_class=HTMLResponse,
             dependencies=read_runs)
    def report(dag_id: str, run_id: str, task_id: str) -> Response:
        body = read_artifact(dag_id, run_id, task_id, "report")
        return HTMLResponse(body, headers={"Content-Security-Policy": "script-src 'none'"})

    @app.get("/reports/{dag_id}/{run_id}/{task_id}/manifest", dependencies=read_runs)
    def manifest(dag_id: str, run_id: str, task_id: str) -> Response:
        body = read_artifact(dag_id, run_id, task_id, "manifest")
        return Response(json.dumps(json.loads(body), indent=2), media_type="application/json")

    return app
