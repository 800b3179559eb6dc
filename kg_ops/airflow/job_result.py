"""What a finished Ray job means for Airflow: its result, or an error worth reading.

Shared by the submit operator, the sensor and the trigger so that all three report the same way:
a succeeded job whose log holds ``KGOPS_MANIFEST <uri>`` (printed by ``kg_ops.manifest.Stage``)
returns the manifest's URI and headline figures; a failed or stopped job raises with Ray's error
type, message and the last lines of its log.
"""

from __future__ import annotations

import re
from typing import Any

from airflow.sdk.exceptions import AirflowException

from kg_ops.airflow.hooks.ray import ACTIVE_STATES, RayHook
from kg_ops.airflow.job_ids import attempt_id

_MANIFEST_LINE = re.compile(r"^KGOPS_MANIFEST\s+(\S+)\s*$", re.MULTILINE)
# Terminal colour/cursor sequences (Ray colours its worker prefixes): unreadable in the UI.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
MAX_ATTEMPTS = 50
# Prefix of each job log line relayed into the task log. Short: the task log already names the
# job once ("submitted Ray job <id>"); an id on every line pushes the content off-screen.
RELAY_PREFIX = "[ray] "


class RayJobFailed(AirflowException):
    """The Ray job ended FAILED or STOPPED."""


class RayJobTimeout(AirflowException):
    """The Ray job ran past ``job_timeout``; it has been stopped."""


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def tail_lines(text: str, n: int) -> list[str]:
    """The last ``n`` lines of a job log, without terminal escape codes."""
    lines = strip_ansi(text).rstrip("\n").splitlines()
    return lines[-n:] if n > 0 else []


def find_manifest_uri(logs: str) -> str | None:
    """The last ``KGOPS_MANIFEST <uri>`` line of a job log (the stage's final result)."""
    found = _MANIFEST_LINE.findall(logs or "")
    return found[-1] if found else None


def job_result(info: dict, logs: str, *, dashboard_url: str | None = None) -> dict[str, Any]:
    """The task's return value (XCom): manifest URI + headline figures, else the status."""
    sid = info.get("submission_id")
    result: dict[str, Any] = {"submission_id": sid, "status": info.get("status"),
                              "dashboard_url": dashboard_url}
    uri = find_manifest_uri(logs)
    if not uri:
        result["message"] = info.get("message")
        return result
    from kg_ops.manifest import read_manifest

    manifest = read_manifest(uri)
    if manifest is None:
        raise RayJobFailed(f"Ray job {sid} succeeded and announced its manifest {uri}, but it "
                           f"cannot be read there: is the artifact store reachable from Airflow "
                           f"workers with the same URI?")
    result.update({
        "manifest_uri": uri,
        "stage": manifest.get("stage"),
        "metrics": manifest.get("metrics", {}),
        "counts": manifest.get("counts", {}),
        "outputs": manifest.get("outputs", {}),
    })
    return result


def failure(info: dict, logs: str, tail: int = 40) -> RayJobFailed:
    """An exception naming the job, Ray's error type and message, and the log tail."""
    sid = info.get("submission_id")
    status = info.get("status")
    etype = info.get("error_type") or ("stopped" if status == "STOPPED" else "unknown")
    lines = tail_lines(logs, tail)
    body = "\n".join(f"    {ln}" for ln in lines) if lines else "    (no log output)"
    return RayJobFailed(f"Ray job {sid} ended {status} (error type: {etype}): "
                        f"{strip_ansi(info.get('message') or '').strip()}\nLast {len(lines)} log lines:\n"
                        f"{body}")


def stopped_by_earlier_try(info: dict, try_number: int) -> int | None:
    """The try number that submitted ``info``'s job if the job ended STOPPED and that try came
    before ``try_number``, else None. Such a job was stopped for its own, cleared or killed,
    try (whose stop can finish only after a newer try re-attached to the job): the newer try
    should run the job again, not fail because of it."""
    if info.get("status") != "STOPPED":
        return None
    submitted_by = str((info.get("metadata") or {}).get("airflow_try_number", ""))
    if not submitted_by.isdigit() or int(submitted_by) >= int(try_number):
        return None
    return int(submitted_by)


def resolve_submission(hook: RayHook, base_id: str, force: bool) -> tuple[str, str, dict | None]:
    """Decide what to do for a task instance whose jobs use ids ``base_id[-rN]``.

    Returns ``(action, submission_id, info)`` with action ``attach`` (a job is pending or running:
    follow it), ``reuse`` (a job succeeded and ``force`` is off) or ``submit`` (no live job: submit
    under the returned, unused id). Ray answers HTTP 500 to a reused id, so we look up first.
    """
    for n in range(1, MAX_ATTEMPTS + 1):
        sid = attempt_id(base_id, n)
        info = hook.get_job(sid)
        if info is None:
            return "submit", sid, None
        status = info.get("status")
        if status in ACTIVE_STATES:
            return "attach", sid, info
        if status == "SUCCEEDED" and not force:
            return "reuse", sid, info
    raise AirflowException(f"{MAX_ATTEMPTS} Ray jobs already exist for {base_id}; not "
                           f"submitting another. Investigate them in the Ray dashboard.")
