"""SubmitRayJobOperator: run a command as a Ray job, safely across retries and kills.

One task instance maps to one deterministic submission id (``job_ids``). Before submitting, the
operator looks that id up: a pending/running job is re-attached, a succeeded one reused (unless
``force``), a failed/stopped one resubmitted under ``-rN``. So a retry after a worker died never
starts a duplicate Ray job. The id and the job's dashboard URL are in XCom before any waiting.
A re-attached job that ends STOPPED although an *earlier* try submitted it (that try was cleared
or killed and stopped it, and Ray finished stopping only after this try re-attached) is submitted
afresh instead of failing this try.

Waiting is in the worker (``deferrable=False``) or in the triggerer (``deferrable=True``,
``RayJobTrigger``), by the same loop (:class:`kg_ops.airflow.follow.JobFollower`: status polls,
the log followed incrementally). ``job_timeout`` stops the job, then fails the task;
``on_kill`` stops the job and waits (bounded) until Ray reports it stopped. A failed job raises
with Ray's error type and the log tail. Subclasses build their command in ``build_entrypoint``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator

from kg_ops.airflow.follow import JobFollower, astop_and_wait, run_sync
from kg_ops.airflow.hooks.ray import TERMINAL_STATES, RayHook
from kg_ops.airflow.job_ids import sanitize_submission_id, submission_id_for
from kg_ops.airflow.job_result import (
    RayJobFailed,
    RayJobTimeout,
    failure,
    job_result,
    resolve_submission,
    stopped_by_earlier_try,
    tail_lines,
)
from kg_ops.airflow.links import XCOM_DASHBOARD_URL, XCOM_SUBMISSION_ID, RayJobLink
from kg_ops.airflow.triggers.ray import RayJobTrigger
from kg_ops.config import as_bool


def as_seconds(value: Any) -> float | None:
    if value in (None, "", "None"):
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


class SubmitRayJobOperator(BaseOperator):
    """Submit ``entrypoint`` to the Ray cluster of ``ray_conn_id`` and (optionally) wait for it.

    :param entrypoint: shell command run by the Ray job driver (templated).
    :param runtime_env: Ray runtime env (``env_vars``, ``working_dir``, ``pip``...; templated).
    :param metadata: extra job metadata (strings; templated). Airflow identifiers are added.
    :param entrypoint_num_cpus / entrypoint_num_gpus / entrypoint_memory / entrypoint_resources:
        resources reserved for the driver process.
    :param submission_id: explicit id instead of the derived one (templated).
    :param wait_for_completion: False: submit and return (a ``RayJobSensor`` can wait later).
    :param deferrable: wait in the triggerer instead of holding a worker slot.
    :param poll_interval: seconds between status checks.
    :param job_timeout: seconds (or timedelta) the job may run before it is stopped and the task
        fails.
    :param fetch_logs: follow the job's log into the task log.
    :param log_tail_lines: log lines quoted in a failure and shown per poll at most.
    :param force: run again even if this task instance's job already succeeded (templated).
    :param stop_deadline: seconds to wait for Ray to confirm a stop.
    """

    template_fields: Sequence[str] = ("entrypoint", "runtime_env", "metadata", "submission_id",
                                      "force", "entrypoint_resources")
    template_fields_renderers = {"runtime_env": "json", "metadata": "json"}
    operator_extra_links = (RayJobLink(),)
    ui_color = "#d2e8fa"

    def __init__(self, *, entrypoint: str | None = None, ray_conn_id: str = "ray_default",
                 runtime_env: dict | None = None, metadata: dict[str, str] | None = None,
                 entrypoint_num_cpus: float | None = None,
                 entrypoint_num_gpus: float | None = None,
                 entrypoint_memory: int | None = None,
                 entrypoint_resources: dict[str, float] | None = None,
                 submission_id: str | None = None, wait_for_completion: bool = True,
                 deferrable: bool = False, poll_interval: float = 5.0,
                 job_timeout: float | timedelta | None = None, fetch_logs: bool = True,
                 log_tail_lines: int = 40, force: bool | str = False,
                 stop_deadline: float = 60.0, **kwargs):
        super().__init__(**kwargs)
        self.entrypoint = entrypoint
        self.ray_conn_id = ray_conn_id
        self.runtime_env = runtime_env
        self.metadata = metadata
        self.entrypoint_num_cpus = entrypoint_num_cpus
        self.entrypoint_num_gpus = entrypoint_num_gpus
        self.entrypoint_memory = entrypoint_memory
        self.entrypoint_resources = entrypoint_resources
        self.submission_id = submission_id
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.poll_interval = float(poll_interval)
        self.job_timeout = as_seconds(job_timeout)
        self.fetch_logs = fetch_logs
        self.log_tail_lines = int(log_tail_lines)
        self.force = force
        self.stop_deadline = float(stop_deadline)
        self._job_id: str | None = None
        self._hook: RayHook | None = None

    # --- extension points ---------------------------------------------------------------------
    def build_entrypoint(self, context) -> str:
        """The command the Ray job runs. Subclasses build it from their own arguments."""
        if not self.entrypoint:
            raise ValueError(f"{self.task_id}: entrypoint is empty")
        return self.entrypoint

    def build_runtime_env(self, context, submission_id: str) -> dict:
        """Runtime env sent with the job; the submission id lands in stage manifests."""
        env = dict(self.runtime_env or {})
        env_vars = dict(env.get("env_vars") or {})
        env_vars.setdefault("KGOPS_RAY_SUBMISSION_ID", submission_id)
        env["env_vars"] = env_vars
        return env

    def base_submission_id(self, context) -> str:
        if self.submission_id:
            return sanitize_submission_id(str(self.submission_id))
        ti = context["ti"]
        return submission_id_for(ti.dag_id, ti.run_id, ti.task_id, ti.map_index)

    def job_metadata(self, context) -> dict[str, str]:
        ti = context["ti"]
        meta = {"airflow_dag_id": ti.dag_id, "airflow_run_id": ti.run_id,
                "airflow_task_id": ti.task_id, "airflow_map_index": str(ti.map_index),
                "airflow_try_number": str(ti.try_number), "submitted_by": "kg_ops"}
        meta.update({k: str(v) for k, v in (self.metadata or {}).items()})
        return meta

    @property
    def hook(self) -> RayHook:
        if self._hook is None:
            self._hook = RayHook(self.ray_conn_id)
        return self._hook

    # --- execution ----------------------------------------------------------------------------
    def execute(self, context) -> dict[str, Any]:
        return self._start(context, *resolve_submission(self.hook, self.base_submission_id(context),
                                                        as_bool(self.force)))

    def _start(self, context, action: str, sid: str, info: dict | None) -> dict[str, Any]:
        """Submit, re-attach to or reuse the job ``resolve_submission`` chose, then wait."""
        hook = self.hook
        self._job_id = sid
        url = hook.job_url(sid)
        if action == "submit":
            hook.submit_job(self.build_entrypoint(context), submission_id=sid,
                            runtime_env=self.build_runtime_env(context, sid),
                            metadata=self.job_metadata(context),
                            entrypoint_num_cpus=self.entrypoint_num_cpus,
                            entrypoint_num_gpus=self.entrypoint_num_gpus,
                            entrypoint_memory=self.entrypoint_memory,
                            entrypoint_resources=self.entrypoint_resources)
            self.log.info("submitted Ray job %s: %s", sid, url)
        elif action == "attach":
            self.log.info("Ray job %s of this task instance is %s: re-attaching (%s)", sid,
                          info["status"], url)
        else:
            self.log.info("Ray job %s of this task instance already SUCCEEDED: reusing its "
                          "result (force=True reruns it)", sid)
        context["ti"].xcom_push(key=XCOM_SUBMISSION_ID, value=sid)
        context["ti"].xcom_push(key=XCOM_DASHBOARD_URL, value=url)
        if action == "reuse":
            return self.finish(context, sid, info)
        if not self.wait_for_completion:
            return {"submission_id": sid, "status": (info or {}).get("status", "PENDING"),
                    "dashboard_url": url}
        return self._wait(context, sid)

    def _wait(self, context, sid: str) -> dict[str, Any]:
        """Wait in the triggerer (deferrable) or here; either way ``execute_complete`` ends it."""
        deadline = time.time() + self.job_timeout if self.job_timeout else None
        if self.deferrable:
            self.defer(trigger=RayJobTrigger(
                submission_id=sid, ray_conn_id=self.ray_conn_id,
                poll_interval=self.poll_interval, deadline=deadline,
                fetch_logs=self.fetch_logs, max_log_lines=self.log_tail_lines,
                stop_deadline=self.stop_deadline),
                method_name="execute_complete")
        outcome = run_sync(JobFollower(
            self.hook, sid, log=self.log, poll_interval=self.poll_interval, deadline=deadline,
            fetch_logs=self.fetch_logs, max_log_lines=self.log_tail_lines,
            keep_lines=self.log_tail_lines, stop_deadline=self.stop_deadline).run())
        return self.execute_complete(context, outcome.event(sid))

    def _stop(self, sid: str) -> dict | None:
        return run_sync(astop_and_wait(self.hook, sid, self.stop_deadline, self.log))

    def _timeout(self, sid: str, info: dict | None) -> None:
        self.log.error("Ray job %s exceeded job_timeout=%ss", sid, self.job_timeout)
        if (info or {}).get("status") not in TERMINAL_STATES:
            info = self._stop(sid)
        logs = self.hook.get_job_logs(sid)
        tail = "\n".join(f"    {ln}" for ln in tail_lines(logs, self.log_tail_lines))
        raise RayJobTimeout(f"Ray job {sid} exceeded job_timeout={self.job_timeout}s and was "
                            f"stopped (now {(info or {}).get('status')}). Last log lines:\n"
                            f"{tail}")

    def execute_complete(self, context, event: dict[str, Any]) -> dict[str, Any]:
        """The wait ended (in-process or in ``RayJobTrigger``)."""
        sid = event["submission_id"]
        self._job_id = sid
        if event["status"] == "timeout":
            self._timeout(sid, {"status": event.get("job_status")})
        if event["status"] == "error":
            raise RayJobFailed(f"waiting for Ray job {sid} failed: {event.get('message')}")
        info = self.hook.get_job(sid) or {"submission_id": sid, "status": event["job_status"],
                                          "message": event.get("message"),
                                          "error_type": event.get("error_type")}
        earlier = stopped_by_earlier_try(info, context["ti"].try_number)
        if earlier is not None:
            # The try that submitted the job was cleared or killed and stopped it, while this
            # try, started meanwhile, re-attached to it before Ray finished stopping it: that
            # stop was meant for the earlier try, so this one runs the job afresh.
            self.log.warning("Ray job %s was submitted by try %s of this task and stopped when "
                             "that try was cleared or killed; submitting it afresh for try %s",
                             sid, earlier, context["ti"].try_number)
            return self._start(context, *resolve_submission(
                self.hook, self.base_submission_id(context), as_bool(self.force)))
        return self.finish(context, sid, info, log_tail=event.get("log_tail"))

    def finish(self, context, sid: str, info: dict, log_tail: str | None = None
               ) -> dict[str, Any]:
        """Turn a terminal job into the task's result, or raise with the log tail.
        ``log_tail``: the end of the log as followed; without it the log is downloaded."""
        logs = log_tail if log_tail is not None else self.hook.get_job_logs(sid)
        if info.get("status") != "SUCCEEDED":
            raise failure(info, logs, self.log_tail_lines)
        result = job_result(info, logs, dashboard_url=self.hook.job_url(sid))
        self.log.info("Ray job %s SUCCEEDED%s", sid,
                      f"; manifest {result['manifest_uri']}" if "manifest_uri" in result else "")
        return result

    def on_kill(self) -> None:
        """The task was killed: stop its Ray job and wait until Ray confirms (bounded)."""
        if not self._job_id:
            return
        self.log.info("task killed: stopping Ray job %s", self._job_id)
        info = self._stop(self._job_id)
        self.log.info("Ray job %s is %s", self._job_id, (info or {}).get("status"))
