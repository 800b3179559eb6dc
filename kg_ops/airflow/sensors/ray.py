"""RayJobSensor: wait for a Ray job submitted elsewhere (e.g. ``wait_for_completion=False``).

``mode="reschedule"`` frees the worker slot between pokes (each poke reads the job's status
only; the log is downloaded once, at the end); ``deferrable=True`` waits in the triggerer and
follows the job's log into the task log as it is written. FAILED/STOPPED fails the task with
Ray's error type and the log tail; SUCCEEDED
returns the same result as the submit operator (manifest URI and headline metrics, or status).
The sensor does not own the job: neither its timeout nor a user marking, clearing or killing
it ever stops the job (the task that submitted it does; see ``RayJobTrigger``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from kg_ops.airflow.hooks.ray import TERMINAL_STATES, RayHook
from kg_ops.airflow.job_result import RayJobFailed, failure, job_result
from kg_ops.airflow.links import XCOM_DASHBOARD_URL, RayJobLink
from kg_ops.airflow.triggers.ray import RayJobTrigger


class RayJobSensor(BaseSensorOperator):
    """Succeed when Ray job ``submission_id`` (templated) succeeds."""

    template_fields: Sequence[str] = ("submission_id",)
    operator_extra_links = (RayJobLink(),)

    def __init__(self, *, submission_id: str, ray_conn_id: str = "ray_default",
                 deferrable: bool = False, log_tail_lines: int = 40, fetch_logs: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        self.submission_id = submission_id
        self.ray_conn_id = ray_conn_id
        self.deferrable = deferrable
        self.log_tail_lines = int(log_tail_lines)
        # Users watch a long training job from this task: deferred, the trigger streams its log.
        self.fetch_logs = fetch_logs

    def _sid(self) -> str:
        sid = str(self.submission_id or "").strip()
        if not sid or sid == "None":
            raise RayJobFailed(f"{self.task_id}: no submission_id to wait for (did the upstream "
                               f"task push one?)")
        return sid

    def _check(self, hook: RayHook, context, log_tail: str | None = None) -> PokeReturnValue:
        sid = self._sid()
        info = hook.get_job(sid)
        if info is None:
            raise RayJobFailed(f"Ray job {sid} does not exist on Ray connection "
                               f"'{self.ray_conn_id}' ({hook.settings.url})")
        status = info["status"]
        if status not in TERMINAL_STATES:
            self.log.info("Ray job %s is %s (%s)", sid, status, hook.job_url(sid))
            return PokeReturnValue(is_done=False)
        logs = log_tail if log_tail is not None else hook.get_job_logs(sid)
        if status != "SUCCEEDED":
            raise failure(info, logs, self.log_tail_lines)
        return PokeReturnValue(is_done=True,
                               xcom_value=job_result(info, logs, dashboard_url=hook.job_url(sid)))

    def execute(self, context) -> Any:
        hook = RayHook(self.ray_conn_id)
        context["ti"].xcom_push(key=XCOM_DASHBOARD_URL, value=hook.job_url(self._sid()))
        if not self.deferrable:
            return super().execute(context)
        first = self._check(hook, context)
        if first.is_done:
            return first.xcom_value
        self.defer(trigger=RayJobTrigger(submission_id=self._sid(), ray_conn_id=self.ray_conn_id,
                                         poll_interval=self.poke_interval, deadline=None,
                                         fetch_logs=self.fetch_logs,
                                         max_log_lines=self.log_tail_lines,
                                         stop_on_timeout=False, owns_job=False),
                   method_name="execute_complete",
                   timeout=timedelta(seconds=self.timeout) if self.timeout else None)

    def poke(self, context) -> PokeReturnValue:
        return self._check(RayHook(self.ray_conn_id), context)

    def execute_complete(self, context, event: dict[str, Any]) -> Any:
        if event["status"] == "error":
            raise RayJobFailed(f"waiting for Ray job {event['submission_id']} failed: "
                               f"{event.get('message')}")
        result = self._check(RayHook(self.ray_conn_id), context, event.get("log_tail"))
        if not result.is_done:
            raise RayJobFailed(f"Ray job {event['submission_id']} not finished after the "
                               f"trigger fired ({event})")
        return result.xcom_value
