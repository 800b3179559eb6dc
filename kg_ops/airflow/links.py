"""Operator extra link "Ray job": the job's page in the Ray dashboard.

The operator pushes the URL to XCom before it waits, so the link works while the job runs and
after the task resumed from deferral in another process.
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


class EvaluationReportLink(BaseOperatorLink):
    """The evaluation report of the run (``report.html`` written by ``kgops evaluate``).

    Local artifact paths become ``file://`` links; ``s3://`` URIs are shown as they are (open
    them with your S3 browser or a presigned URL)."""

    name = "Evaluation report"

    def get_link(self, operator, *, ti_key) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        result = XCom.get_value(ti_key=ti_key, key="return_value") or {}
        uri = ((result.get("outputs") or {}).get("report") if isinstance(result, dict) else None)
        if not uri:
            return ""
        return uri if "://" in uri else f"file://{uri}"
