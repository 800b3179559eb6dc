"""Published embedding versions, read from Airflow's asset events.

The refresh DAG's publish step emits an event on the ``kg_embeddings`` asset whose ``extra``
carries the metrics and the embeddings' URI. Those events *are* the version history: the
evaluation gate compares against the newest one and the UI page lists them all.
"""

from __future__ import annotations

import html
from typing import Any

EMBEDDINGS_ASSET_NAME = "kg_embeddings"
EMBEDDINGS_ASSET_URI = "kgops://embeddings/kg_embedding_refresh"
GRAPH_SOURCE_ASSET_NAME = "kg_graph_source"

VERSION_COLUMNS = ("mrr", "hits@1", "hits@10", "auc", "model", "run_key")


def published_versions(limit: int = 50, asset_name: str = EMBEDDINGS_ASSET_NAME,
                       ) -> list[dict[str, Any]]:
    """Newest first: {timestamp, dag_id, run_id, extra...} for each publish event."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.name == asset_name)
            .order_by(AssetEvent.timestamp.desc())
            .limit(limit)
        ).scalars().all()
        return [{"timestamp": ev.timestamp.isoformat(timespec="seconds"),
                 "dag_id": ev.source_dag_id, "run_id": ev.source_run_id,
                 **(ev.extra or {})} for ev in rows]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape("" if value is None else str(value))


def render_versions_page(versions: list[dict[str, Any]]) -> str:
    """A plain, self-contained HTML table (no scripts): one row per published version."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in
                   ("published", "run", *VERSION_COLUMNS, "embeddings", "report"))
    rows = []
    for v in versions:
        cells = [_fmt(v.get("timestamp")), _fmt(v.get("run_id"))]
        cells += [_fmt(v.get(c)) for c in VERSION_COLUMNS]
        cells.append(f"<code>{_fmt(v.get('embeddings_uri'))}</code>")
        cells.append(f"<code>{_fmt(v.get('report_uri'))}</code>")
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    body = "".join(rows) or f"<tr><td colspan='{len(VERSION_COLUMNS) + 4}'>No version published" \
                            " yet: run the kg_embedding_refresh DAG.</td></tr>"
    return ("<!doctype html><html><head><meta charset='utf-8'><title>KG embedding versions"
            "</title><style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:"
            "collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
            "th{background:#f3f3f3}</style></head><body><h1>Published KG embedding versions"
            f"</h1><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            "</body></html>")


def create_versions_app():
    """FastAPI app mounted by the kg_ops Airflow plugin at ``/kgops``."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse

    app = FastAPI(title="kg_ops", description="Published KG embedding versions")

    @app.get("/versions", response_class=HTMLResponse)
    def versions_page(limit: int = 50) -> str:
        return render_versions_page(published_versions(limit))

    @app.get("/versions.json")
    def versions_json(limit: int = 50) -> list[dict[str, Any]]:
        return published_versions(limit)

    return app
