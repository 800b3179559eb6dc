"""RayJobTrigger: wait for a Ray job in the triggerer without blocking its event loop.

The waiting itself is :class:`kg_ops.airflow.follow.JobFollower`, the same loop the operator runs
in-process: status polling and incremental log following (Ray's websocket tail) as two asyncio
tasks, every network call aiohttp with a timeout and the connection's retry policy, log lines
relayed through a bounded buffer so a chatty job cannot flood the triggerer.

Who stops the job when a user acts on the deferred task (``on_kill``; see the README's
"Backfills and manual runs"): only the task that *owns* the job (the operator that submitted it,
``owns_job=True``). Airflow runs ``on_kill`` alike for a clear, a mark-failed and a mark-success,
and the trigger cannot ask which without deadlocking the triggerer's supervisor channel (seen in
the system tier), so the owner always stops its job: a cleared owner's next try then submits a
new job (clear = run again), and a marked one leaves nothing running. A sensor waiting for someone
else's job (``owns_job=False``) never stops it. ``cleanup`` (every exit, including triggerer
restarts) never stops it either.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from kg_ops.airflow.follow import JobFollower, astop_and_wait
from kg_ops.airflow.hooks.ray import RayHook

CLASSPATH = "kg_ops.airflow.triggers.ray.RayJobTrigger"


class RayJobTrigger(BaseTrigger):
    """Fires once the job is terminal (``status: done``; the event carries the end of the
    followed log, ``log_tail``), past ``deadline`` (``timeout``; the job is stopped first when
    ``stop_on_timeout``) or unobservable (``error``)."""

    def __init__(self, submission_id: str, ray_conn_id: str = "ray_default",
                 poll_interval: float = 5.0, deadline: float | None = None,
                 fetch_logs: bool = True, max_log_lines: int = 100,
                 stop_deadline: float = 60.0, stop_on_timeout: bool = True,
                 owns_job: bool = True):
        super().__init__()
        self.submission_id = submission_id
        self.ray_conn_id = ray_conn_id
        self.poll_interval = float(poll_interval)
        self.deadline = deadline
        self.fetch_logs = fetch_logs
        self.max_log_lines = int(max_log_lines)
        self.stop_deadline = float(stop_deadline)
        self.stop_on_timeout = stop_on_timeout
        self.owns_job = bool(owns_job)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return CLASSPATH, {
            "submission_id": self.submission_id, "ray_conn_id": self.ray_conn_id,
            "poll_interval": self.poll_interval, "deadline": self.deadline,
            "fetch_logs": self.fetch_logs, "max_log_lines": self.max_log_lines,
            "stop_deadline": self.stop_deadline, "stop_on_timeout": self.stop_on_timeout,
            "owns_job": self.owns_job,
        }

    def _hook(self) -> RayHook:
        return RayHook(self.ray_conn_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # A first ``import aiohttp`` takes long enough to stall every other trigger: do it in a
        # thread, as the connection lookup does its own I/O asynchronously.
        await asyncio.to_thread(importlib.import_module, "aiohttp")
        outcome = await JobFollower(
            self._hook(), self.submission_id, log=self.log, poll_interval=self.poll_interval,
            deadline=self.deadline, fetch_logs=self.fetch_logs,
            max_log_lines=self.max_log_lines, keep_lines=self.max_log_lines,
            stop_on_timeout=self.stop_on_timeout, stop_deadline=self.stop_deadline).run()
        yield TriggerEvent(outcome.event(self.submission_id))

    async def stop_job(self, hook: RayHook | None = None) -> dict | None:
        """Stop the job and wait (bounded by ``stop_deadline``) until Ray reports it terminal."""
        return await astop_and_wait(hook or self._hook(), self.submission_id,
                                    self.stop_deadline, self.log)

    async def on_kill(self) -> None:
        """A user acted on the deferred task (clear, mark failed, mark success): the task that
        owns the job stops it and waits (bounded) until Ray confirms, so a cleared task's next
        try submits a fresh job instead of attaching to one being stopped. A sensor
        (``owns_job=False``) leaves the job to its owner."""
        if not self.owns_job:
            self.log.info("waiting for Ray job %s ended by a user action; this task does not "
                          "own the job: it keeps running", self.submission_id)
            return
        self.log.info("task cleared or marked by a user: stopping Ray job %s",
                      self.submission_id)
        await self.stop_job()

    async def cleanup(self) -> None:
        """Runs on every exit, including triggerer restarts: never stops the job."""
