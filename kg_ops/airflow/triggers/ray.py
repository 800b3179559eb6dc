"""RayJobTrigger: wait for a Ray job in the triggerer without blocking its event loop.

Status polling and log following are two independent asyncio tasks: a dashboard that is slow to
stream logs (or a proxy without websockets) never delays the status check, and every network call
is aiohttp with a timeout. Log lines go to the task log through a bounded buffer: at most
``max_log_lines`` per poll, the rest counted and reported, so a chatty job cannot flood the
triggerer.

Who stops the job when a user acts on the deferred task (``on_kill``; see the README's
"Backfills and manual runs"): only the task that *owns* the job (the operator that submitted it,
``owns_job=True``), and only when the user marked it failed (or skipped): then the user meant
"stop". A clear (the UI's default "with downstream" included) leaves the job running: the task's
next try re-attaches to it, so a cleared training is not thrown away and never runs twice. A
mark-success leaves it running too (the user accepted the task as done). A sensor waiting for
someone else's job (``owns_job=False``) never stops it. ``cleanup`` (every exit, including
triggerer restarts) never stops it either.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from kg_ops.airflow.hooks.ray import (
    TERMINAL_STATES,
    RayHook,
    RayHookError,
    RayUnreachableError,
)
from kg_ops.airflow.job_result import RELAY_PREFIX, strip_ansi

CLASSPATH = "kg_ops.airflow.triggers.ray.RayJobTrigger"
# Task states a user sets to say "stop this work" (mark failed; mark the run failed skips).
STOP_STATES = frozenset({"failed", "upstream_failed", "skipped", "removed"})


class LogBuffer:
    """The newest ``max_lines`` complete lines since the last flush, plus a count of the rest."""

    def __init__(self, max_lines: int):
        self.lines: deque[str] = deque(maxlen=max(1, max_lines))
        self.dropped = 0
        self._partial = ""

    def add(self, chunk: str) -> None:
        text = self._partial + chunk
        *complete, self._partial = text.split("\n")
        for line in complete:
            if len(self.lines) == self.lines.maxlen:
                self.dropped += 1
            self.lines.append(strip_ansi(line.rstrip("\r")))

    def drain(self, final: bool = False) -> tuple[list[str], int]:
        if final and self._partial:
            self.add("\n")
        out, dropped = list(self.lines), self.dropped
        self.lines.clear()
        self.dropped = 0
        return out, dropped


class RayJobTrigger(BaseTrigger):
    """Fires once the job is terminal (``status: done``), past ``deadline`` (``timeout``; the
    job is stopped first when ``stop_on_timeout``) or unobservable (``error``)."""

    def __init__(self, submission_id: str, ray_conn_id: str = "ray_default",
                 poll_interval: float = 5.0, deadline: float | None = None,
                 fetch_logs: bool = True, max_log_lines: int = 100,
                 stop_deadline: float = 60.0, stop_on_timeout: bool = True,
                 max_poll_failures: int = 10, owns_job: bool = True):
        super().__init__()
        self.submission_id = submission_id
        self.ray_conn_id = ray_conn_id
        self.poll_interval = float(poll_interval)
        self.deadline = deadline
        self.fetch_logs = fetch_logs
        self.max_log_lines = int(max_log_lines)
        self.stop_deadline = float(stop_deadline)
        self.stop_on_timeout = stop_on_timeout
        self.max_poll_failures = int(max_poll_failures)
        self.owns_job = bool(owns_job)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return CLASSPATH, {
            "submission_id": self.submission_id, "ray_conn_id": self.ray_conn_id,
            "poll_interval": self.poll_interval, "deadline": self.deadline,
            "fetch_logs": self.fetch_logs, "max_log_lines": self.max_log_lines,
            "stop_deadline": self.stop_deadline, "stop_on_timeout": self.stop_on_timeout,
            "max_poll_failures": self.max_poll_failures, "owns_job": self.owns_job,
        }

    def _hook(self) -> RayHook:
        return RayHook(self.ray_conn_id)

    def _event(self, status: str, info: dict | None = None, **extra: Any) -> TriggerEvent:
        info = info or {}
        return TriggerEvent({"status": status, "submission_id": self.submission_id,
                             "job_status": info.get("status"), "message": info.get("message"),
                             "error_type": info.get("error_type"), **extra})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # A first ``import aiohttp`` takes long enough to stall every other trigger: do it in a
        # thread, as the connection lookup below does its own I/O asynchronously.
        await asyncio.to_thread(importlib.import_module, "aiohttp")
        hook = self._hook()
        buffer = LogBuffer(self.max_log_lines)
        follower = (asyncio.create_task(self._follow_logs(hook, buffer))
                    if self.fetch_logs else None)
        failures = 0
        try:
            while True:
                try:
                    info = await hook.aget_job(self.submission_id)
                    failures = 0
                except RayUnreachableError as e:
                    failures += 1
                    self.log.warning("polling Ray job %s (%d/%d): %s", self.submission_id,
                                     failures, self.max_poll_failures, e)
                    if failures >= self.max_poll_failures:
                        yield self._event("error", message=str(e))
                        return
                    await asyncio.sleep(self.poll_interval)
                    continue
                except RayHookError as e:
                    yield self._event("error", message=str(e))
                    return
                self._flush(buffer)
                if info is None:
                    yield self._event("error", message=f"Ray job {self.submission_id} does not "
                                                       f"exist on the cluster")
                    return
                if info.get("status") in TERMINAL_STATES:
                    if follower is not None:
                        # The server closes the log stream when the job ends: let it drain.
                        await asyncio.wait({follower}, timeout=min(5.0, self.poll_interval + 1))
                    self._flush(buffer, final=True)
                    yield self._event("done", info)
                    return
                if self.deadline is not None and time.time() >= self.deadline:
                    self.log.warning("Ray job %s passed its deadline; %s", self.submission_id,
                                     "stopping it" if self.stop_on_timeout else "leaving it")
                    if self.stop_on_timeout:
                        info = await self.stop_job(hook) or info
                    self._flush(buffer, final=True)
                    yield self._event("timeout", info)
                    return
                await asyncio.sleep(self.poll_interval)
        finally:
            if follower is not None and not follower.done():
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await follower

    async def _follow_logs(self, hook: RayHook, buffer: LogBuffer) -> None:
        try:
            async for chunk in hook.atail_job_logs(self.submission_id):
                buffer.add(chunk)
        except RayHookError as e:
            self.log.warning("following the log of Ray job %s stopped (%s); status polling "
                             "continues", self.submission_id, e)

    def _flush(self, buffer: LogBuffer, final: bool = False) -> None:
        lines, dropped = buffer.drain(final)
        if dropped:
            self.log.info("%s... %d lines not shown (full log in the Ray dashboard)",
                          RELAY_PREFIX, dropped)
        for line in lines:
            self.log.info("%s%s", RELAY_PREFIX, line)

    async def stop_job(self, hook: RayHook | None = None) -> dict | None:
        """Stop the job and wait (bounded by ``stop_deadline``) until Ray reports it terminal."""
        hook = hook or self._hook()
        end = time.monotonic() + self.stop_deadline
        info, last_stop = None, float("-inf")
        while time.monotonic() < end:
            try:
                if time.monotonic() - last_stop >= 1.0:
                    await hook.astop_job(self.submission_id)
                    last_stop = time.monotonic()
                info = await hook.aget_job(self.submission_id)
            except RayHookError as e:
                self.log.warning("stopping Ray job %s: %s", self.submission_id, e)
            if info is not None and info.get("status") in TERMINAL_STATES:
                self.log.info("Ray job %s is %s", self.submission_id, info["status"])
                return info
            await asyncio.sleep(0.5)
        self.log.error("Ray job %s not terminal %.0fs after stop_job", self.submission_id,
                       self.stop_deadline)
        return info

    async def on_kill(self) -> None:
        """A user acted on the deferred task: stop the job only if this task owns it and the
        user marked it failed (module docstring). A state that cannot be read stops it (the
        owner was killed, and nothing says it will be re-attached)."""
        if not self.owns_job:
            self.log.info("waiting for Ray job %s ended by a user action; this task does not "
                          "own the job: it keeps running", self.submission_id)
            return
        known, state = await self._task_state()
        if known and state not in STOP_STATES:
            self.log.info("task is now %s (cleared or marked success): Ray job %s keeps running; "
                          "a new try re-attaches to it", state or "cleared", self.submission_id)
            return
        self.log.info("task marked %s: stopping Ray job %s", state or "killed",
                      self.submission_id)
        await self.stop_job()

    async def _task_state(self) -> tuple[bool, str | None]:
        """(known, state) of this trigger's task instance as the user left it, asked through
        the triggerer's supervisor (the Execution API)."""
        ti = self.task_instance
        if ti is None:
            return False, None
        try:
            from airflow.sdk.execution_time import task_runner
            from airflow.sdk.execution_time.comms import GetTaskStates

            resp = await task_runner.SUPERVISOR_COMMS.asend(GetTaskStates(
                dag_id=ti.dag_id, task_ids=[ti.task_id], run_ids=[ti.run_id],
                map_index=ti.map_index))
            key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}_{ti.map_index}"
            state = resp.task_states.get(ti.run_id, {}).get(key)
            return True, (None if state is None else str(getattr(state, "value", state)))
        except Exception as e:  # no supervisor (trigger run inline), API error
            self.log.warning("cannot read the state of task %s (%s)", ti.task_id, e)
            return False, None

    async def cleanup(self) -> None:
        """Runs on every exit, including triggerer restarts: never stops the job."""
