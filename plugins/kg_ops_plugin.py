"""Airflow 3 UI additions for kg_ops.

- A "KG embedding versions" page (nav bar) listing published embedding versions and their
  metrics, and each evaluation's report over http, served by a FastAPI app at ``/kgops``
  (``kg_ops.airflow.web``) behind Airflow's own login and DAG permissions.
- Task-instance links to the Ray dashboard and to the run's evaluation report (registered here so
  the API server can render them for serialized DAGs).

Operators and hooks live in the ``kg_ops`` package (Airflow 3 plugins can't carry them).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from kg_ops.airflow.links import EvaluationReportLink, RayJobLink
from kg_ops.airflow.web import URL_PREFIX, create_app


class KgOpsPlugin(AirflowPlugin):
    name = "kg_ops"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX,
                     "name": "kg_ops embedding versions and reports"}]
    external_views = [{"name": "KG embedding versions", "href": f"{URL_PREFIX}/versions",
                       "destination": "nav", "category": "browse", "url_route": "kgops-versions"}]
    operator_extra_links = [RayJobLink(), EvaluationReportLink()]
