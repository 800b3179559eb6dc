"""RayJobTrigger: wait for a Ray job in the triggerer without blocking its event loop.

Status polling and log following are two independent asyncio tasks: a dashboard that is slow to
stream logs (or a proxy without websockets) never delays the status check, and every network call
is aiohttp with a timeout. Log lines go to the task log through a bounded buffer: at most
``max_log_lines`` per poll, the rest counted and reported, so a chatty job cannot flood the
triggerer.

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
