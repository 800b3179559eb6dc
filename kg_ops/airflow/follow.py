"""Following a Ray job to its end: the one poll loop of the trigger (in the triggerer's event
loop) and of the operator's in-process wait (``asyncio.run``), and the one stop-and-wait.

Status polling and log following are two asyncio tasks: a dashboard slow to stream logs never
delays the status check. The log is followed incrementally through Ray's websocket
``/logs/tail`` (each byte crosses the wire once, where polling ``/logs`` downloads the whole log
every time) into a bounded buffer: at most ``max_log_lines`` lines per poll go to the task log,
the rest are counted. The followed log's last lines and ``KGOPS_MANIFEST`` line are kept, so the
result of a followed job needs no second download of its log. Transient dashboard faults are
retried by the hook's policy (:mod:`kg_ops.airflow.retry`); what is left is fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from kg_ops.airflow.hooks.ray import TERMINAL_STATES, RayHook, RayHookError
from kg_ops.airflow.job_result import RELAY_PREFIX, strip_ansi

_MANIFEST_PREFIX = "KGOPS_MANIFEST "


class LogBuffer:
    """The newest ``max_lines`` complete lines since the last flush, plus a count of the rest;
    also the last ``keep`` lines overall and the last ``KGOPS_MANIFEST`` line."""

    def __init__(self, max_lines: int, keep: int = 0):
        self.lines: deque[str] = deque(maxlen=max(1, max_lines))
        self.last: deque[str] = deque(maxlen=max(1, keep, max_lines))
        self.manifest_line: str | None = None
        self.dropped = 0
        self._partial = ""

    def add(self, chunk: str) -> None:
        text = self._partial + chunk
        *complete, self._partial = text.split("\n")
        for line in complete:
            line = strip_ansi(line.rstrip("\r"))
            if len(self.lines) == self.lines.maxlen:
                self.dropped += 1
            self.lines.append(line)
            self.last.append(line)
            if line.startswith(_MANIFEST_PREFIX):
                self.manifest_line = line

    def drain(self, final: bool = False) -> tuple[list[str], int]:
        if final and self._partial:
            self.add("\n")
        out, dropped = list(self.lines), self.dropped
        self.lines.clear()
        self.dropped = 0
        return out, dropped

    def text(self) -> str:
        """What the job's log is known to end with (the manifest line first if it scrolled
        out of the kept lines)."""
        lines = list(self.last)
        if self.manifest_line and self.manifest_line not in lines:
            lines.insert(0, self.manifest_line)
        return "\n".join(lines) + "\n" if lines else ""


@dataclass
class Outcome:
    """How following ended: ``done`` (terminal), ``timeout`` (past the deadline; stopped if
    asked) or ``error`` (the job cannot be observed). ``log_tail`` is the end of the followed
    log when the whole log was followed, else None."""

    status: str
    info: dict | None = None
    message: str | None = None
    log_tail: str | None = field(default=None, repr=False)

    def event(self, submission_id: str) -> dict[str, Any]:
        info = self.info or {}
        return {"status": self.status, "submission_id": submission_id,
                "job_status": info.get("status"),
                "message": self.message if self.message is not None else info.get("message"),
                "error_type": info.get("error_type"), "log_tail": self.log_tail}


class JobFollower:
    """Poll a job's status, follow its log, stop it past ``deadline`` (epoch seconds)."""

    def __init__(self, hook: RayHook, submission_id: str, *, log: logging.Logger,
                 poll_interval: float = 5.0, deadline: float | None = None,
                 fetch_logs: bool = True, max_log_lines: int = 100, keep_lines: int = 200,
                 stop_on_timeout: bool = True, stop_deadline: float = 60.0):
        self.hook, self.sid, self.log = hook, submission_id, log
        self.poll_interval, self.deadline = poll_interval, deadline
        self.fetch_logs, self.stop_on_timeout = fetch_logs, stop_on_timeout
        self.stop_deadline = stop_deadline
        self.buffer = LogBuffer(max_log_lines, keep=keep_lines)
        self._log_complete = False

    async def run(self) -> Outcome:
        follower = asyncio.create_task(self._follow_logs()) if self.fetch_logs else None
        try:
            return await self._poll(follower)
        except RayHookError as e:
            return Outcome("error", message=str(e))
        finally:
            if follower is not None and not follower.done():
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await follower

    async def _poll(self, follower: asyncio.Task | None) -> Outcome:
        while True:
            info = await self.hook.aget_job(self.sid)
            self._flush()
            if info is None:
                return Outcome("error", message=f"Ray job {self.sid} does not exist on the "
                                                "cluster")
            if info.get("status") in TERMINAL_STATES:
                if follower is not None:
                    # The server closes the log stream when the job ends: let it drain.
                    await asyncio.wait({follower}, timeout=min(5.0, self.poll_interval + 1))
                self._flush(final=True)
                return Outcome("done", info, log_tail=self._tail())
            if self.deadline is not None and time.time() >= self.deadline:
                self.log.warning("Ray job %s passed its deadline; %s", self.sid,
                                 "stopping it" if self.stop_on_timeout else "leaving it")
                if self.stop_on_timeout:
                    info = await astop_and_wait(self.hook, self.sid, self.stop_deadline,
                                                self.log) or info
                self._flush(final=True)
                return Outcome("timeout", info)
            await asyncio.sleep(self.poll_interval)

    async def _follow_logs(self) -> None:
        try:
            async for chunk in self.hook.atail_job_logs(self.sid):
                self.buffer.add(chunk)
            self._log_complete = True
        except RayHookError as e:
            self.log.warning("following the log of Ray job %s stopped (%s); status polling "
                             "continues", self.sid, e)

    def _tail(self) -> str | None:
        return self.buffer.text() if self._log_complete else None

    def _flush(self, final: bool = False) -> None:
        lines, dropped = self.buffer.drain(final)
        if dropped:
            self.log.info("%s... %d lines not shown (full log in the Ray dashboard)",
                          RELAY_PREFIX, dropped)
        for line in lines:
            self.log.info("%s%s", RELAY_PREFIX, line)


async def astop_and_wait(hook: RayHook, submission_id: str, deadline_s: float,
                         log: logging.Logger, poll_s: float = 0.5) -> dict | None:
    """Ask Ray to stop the job until it is terminal, within ``deadline_s``. A PENDING job has
    no supervisor to stop yet, so the request is repeated (at most once a second)."""
    end = time.monotonic() + deadline_s
    info, last_stop = None, float("-inf")
    while (left := end - time.monotonic()) > 0:
        try:
            if time.monotonic() - last_stop >= 1.0:
                await hook.astop_job(submission_id, deadline_s=left)
                last_stop = time.monotonic()
            info = await hook.aget_job(submission_id, deadline_s=end - time.monotonic())
        except RayHookError as e:
            log.warning("stopping Ray job %s: %s", submission_id, e)
        if info is not None and info.get("status") in TERMINAL_STATES:
            log.info("Ray job %s is %s", submission_id, info["status"])
            return info
        await asyncio.sleep(poll_s)
    log.error("Ray job %s not terminal %.0fs after stop_job (last status %s)", submission_id,
              deadline_s, (info or {}).get("status"))
    return info


def run_sync(coro: Coroutine) -> Any:
    """Run a coroutine from sync code, even from inside a running event loop (``on_kill`` can
    interrupt ``asyncio.run``): then in a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # noqa: BLE001 -- re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, name="kgops-sync-call")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")
