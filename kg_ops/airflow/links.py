"""Operator extra links: "Ray job" (the job's page in the Ray dashboard) and "Evaluation
report" (the report served over http by the kg_ops plugin).

The Airflow 3 UI shows only http(s) and mailto links, so the report link points at the plugin's
authenticated route on the api-server (``kg_ops.airflow.web``), never at ``file://``/``s3://``.
Links are computed by the worker when the task ends and stored in XCom; the operator pushes the
dashboard URL before it waits, so the Ray link works while the job runs.
"""

from __future__ import annotations

from airflow.sdk import BaseOperatorLink

XCOM_SUBMISSION_ID = "submission_id"
XCOM_DASHBOARD_URL = "ray_dashboard_url"


class RayJobLink(BaseOperatorLink):
    name = "Ray job"

    def get_link(self, operator, *, ti_key) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(ti_key=ti_key, key=XCOM_DASHBOARD_URL) or ""


def api_base_url() -> str:
    """The api-server's external URL: ``[api] base_url``, else ``http://localhost:<port>``."""
    from airflow.sdk.configuration import conf

    base = conf.get("api", "base_url", fallback="") or ""
    if not base:
        base = f"http://localhost:{conf.get('api', 'port', fallback='8080')}"
    return base.rstrip("/")


class EvaluationReportLink(BaseOperatorLink):
    """The run's evaluation report (``report.html`` written by ``kgops evaluate``), served by
    the plugin at ``{[api] base_url}/kgops/reports/{dag_id}/{run_id}/{task_id}`` behind
    Airflow's login. Set ``[api] base_url`` to the address users reach the UI at."""

    name = "Evaluation report"

    def get_link(self, operator, *, ti_key) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        from kg_ops.airflow.web import report_path

        result = XCom.get_value(ti_key=ti_key, key="return_value") or {}
        if not (isinstance(result, dict) and (result.get("outputs") or {}).get("report")):
            return ""
        return api_base_url() + report_path(ti_key.dag_id, ti_key.run_id, ti_key.task_id)
