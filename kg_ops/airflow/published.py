"""Published embedding versions, read from Airflow's asset events.

The refresh DAG's publish step emits an event whose ``extra`` carries the metrics, the
embeddings' URI and the version's date (the run's logical date). Those events *are* the version
history. A version dated at or after the newest current one goes to ``kg_embeddings`` (what
downstream DAGs schedule on, and the quality gate's baseline); a backfill of an older date goes
to ``kg_embeddings_past``, listed in the history but never announced as new. The page orders
versions by date, and a re-run of a date replaces that date's version.
"""

from __future__ import annotations

import html
from typing import Any

EMBEDDINGS_ASSET_NAME = "kg_embeddings"
EMBEDDINGS_ASSET_URI = "kgops://embeddings/kg_embedding_refresh"
PAST_EMBEDDINGS_ASSET_NAME = "kg_embeddings_past"
PAST_EMBEDDINGS_ASSET_URI = "kgops://embeddings/kg_embedding_refresh/past"
PUBLISH_ALIAS_NAME = "kg_embeddings_publish"
GRAPH_SOURCE_ASSET_NAME = "kg_graph_source"
# The deploy task's events: each names the version that went live on the service.
SERVICE_ASSET_NAME = "kg_link_prediction_service"
SERVICE_ASSET_URI = "kgops://service/kg_embedding_refresh"

VERSION_COLUMNS = ("mrr", "hits@1", "hits@10", "auc", "model", "run_key", "warm_start")


def published_versions(limit: int = 50) -> list[dict[str, Any]]:
    """Newest date first, one per date (the latest publish of that date):
    {date, timestamp, dag_id, run_id, current, extra...}."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(AssetEvent, AssetModel.name)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.name.in_([EMBEDDINGS_ASSET_NAME, PAST_EMBEDDINGS_ASSET_NAME]))
            .order_by(AssetEvent.timestamp)
        ).all()
        by_date: dict[str, dict[str, Any]] = {}
        for ev, name in rows:
            when = ev.timestamp.isoformat(timespec="seconds")
            extra = dict(ev.extra or {})
            date = str(extra.get("logical_date") or when)
            by_date[date] = {"date": date, "timestamp": when, "dag_id": ev.source_dag_id,
                             "run_id": ev.source_run_id, **extra,
                             "current": name == EMBEDDINGS_ASSET_NAME}
    return mark_live(sorted(by_date.values(), key=lambda v: v["date"], reverse=True)[:limit])


def live_deployment() -> dict[str, Any] | None:
    """The newest event of the link-prediction service asset: the version the deploy task
    made live last ({timestamp, run_id, version, version_uri, url, previous_version...})."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        ev = session.execute(
            select(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.name == SERVICE_ASSET_NAME)
            .order_by(AssetEvent.timestamp.desc())
            .limit(1)
        ).scalars().first()
        if ev is None:
            return None
        return {"timestamp": ev.timestamp.isoformat(timespec="seconds"),
                "run_id": ev.source_run_id, **(ev.extra or {})}


def mark_live(versions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set ``live`` on each version: True for the one the service's newest deploy made live."""
    from kg_ops.store import normalize

    live_uri = (live_deployment() or {}).get("version_uri")
    for v in versions:
        v["live"] = bool(live_uri and v.get("evaluation_uri")) and \
            normalize(v["evaluation_uri"]) == normalize(live_uri)
    return versions


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape("" if value is None else str(value))


def render_versions_page(versions: list[dict[str, Any]]) -> str:
    """A plain, self-contained HTML table (no scripts): one row per published version."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in
                   ("live", "date", "published", "run", *VERSION_COLUMNS, "embeddings",
                    "report"))
    rows = []
    for v in versions:
        date = _fmt(v.get("date"))
        cells = ["<strong>live</strong>" if v.get("live") else "",
                 date if v.get("current", True) else f"{date} (past date)",
                 _fmt(v.get("timestamp")), _fmt(v.get("run_id"))]
        cells += [_fmt(v.get(c)) for c in VERSION_COLUMNS]
        cells.append(f"<code>{_fmt(v.get('embeddings_uri'))}</code>")
        cells.append(f"<code>{_fmt(v.get('report_uri'))}</code>")
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    body = "".join(rows) or f"<tr><td colspan='{len(VERSION_COLUMNS) + 6}'>No version published" \
                            " yet: run the kg_embedding_refresh DAG.</td></tr>"
    return ("<!doctype html><html><head><meta charset='utf-8'><title>KG embedding versions"
            "</title><style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:"
            "collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
            "th{background:#f3f3f3}</style></head><body><h1>Published KG embedding versions"
            f"</h1><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            "</body></html>")
