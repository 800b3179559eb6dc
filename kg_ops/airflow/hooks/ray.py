"""RayHook: the Ray Jobs REST API (the dashboard's ``/api/jobs/``) behind an Airflow connection.

Why REST and not ``ray.job_submission.JobSubmissionClient``: the Airflow side must stay light
(no ``ray`` import in the scheduler or triggerer) and the triggerer needs truly async calls.
Sync methods use ``requests`` (operators, sensors); ``a``-prefixed methods use ``aiohttp``
(triggers) and never block the event loop.

Connection ``ray``: ``host`` = dashboard URL (``http://head:8265``; ``https://`` for TLS),
``password`` = the cluster's auth token (sent as ``Authorization: Bearer``), extras:
``verify_ssl`` (default true), ``ca_bundle`` (PEM path), ``headers`` (JSON object),
``metadata`` (default job metadata, JSON object), ``timeout`` (seconds per request), and the
retry policy of every call (:mod:`kg_ops.airflow.retry`): ``retry_deadline`` (seconds a call
keeps retrying transient faults; 0 = never), ``retry_initial_wait``, ``retry_max_wait``.
The token never appears in logs, errors, XCom or job metadata.
"""

from __future__ import annotations

import dataclasses
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from airflow.sdk import BaseHook

from kg_ops.airflow.retry import RetryPolicy
from kg_ops.config import as_bool

TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
ACTIVE_STATES = frozenset({"PENDING", "RUNNING"})
_EXTRA_KEYS = {"verify_ssl", "ca_bundle", "headers", "metadata", "timeout",
               *RetryPolicy.EXTRAS}


class RayHookError(RuntimeError):
    """Talking to the Ray dashboard failed; the message names the connection and what to do."""


class RayConnectionConfigError(RayHookError):
    """The Airflow connection itself is wrong (missing host, malformed extras)."""


class RayUnreachableError(RayHookError):
    """No answer from the dashboard (refused, DNS, timeout): may be transient."""


class RayAuthError(RayHookError):
    """The dashboard refused the token (401 missing, 403 wrong)."""


class RayApiError(RayHookError):
    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RaySettings:
    """What a connection resolves to. ``repr`` hides the token."""

    conn_id: str
    url: str
    token: str = field(repr=False)
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    verify: bool | str = True
    metadata: dict[str, str] = field(default_factory=dict)
    timeout: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def request_headers(self) -> dict[str, str]:
        out = dict(self.headers)
        if self.token:
            out["Authorization"] = f"Bearer {self.token}"
        return out


def _str_map(value: Any, what: str) -> dict[str, str]:
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{what} is not valid JSON ({e})") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{what} must be a JSON object of strings, got {type(value).__name__}")
    bad = [k for k, v in value.items() if not isinstance(v, str | int | float | bool)]
    if bad:
        raise ValueError(f"{what}: values must be strings, not objects ({', '.join(bad)})")
    return {k: str(v) for k, v in value.items()}


def settings_from_connection(conn) -> RaySettings:
    """Validate a connection into ``RaySettings`` with errors that name the connection."""
    cid = conn.conn_id

    def bad(msg: str) -> RayConnectionConfigError:
        return RayConnectionConfigError(f"Airflow connection '{cid}' (type ray): {msg}")

    host = (conn.host or "").strip()
    if not host:
        raise bad("no host: set it to the Ray dashboard URL, e.g. http://ray-head:8265")
    if "://" not in host:
        scheme = conn.schema if conn.schema in ("http", "https") else "http"
        host = f"{scheme}://{host}"
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad(f"host {conn.host!r} is not an http(s) URL of the Ray dashboard")
    if conn.port and not parts.port:
        host = f"{parts.scheme}://{parts.hostname}:{conn.port}{parts.path}"
    url = host.rstrip("/")

    raw = conn.extra or ""
    if isinstance(raw, dict):
        extra = raw
    elif raw.strip():
        try:
            extra = json.loads(raw)
        except json.JSONDecodeError as e:
            raise bad(f"extra is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                      f"expected an object with keys {sorted(_EXTRA_KEYS)}") from None
    else:
        extra = {}
    if not isinstance(extra, dict):
        raise bad(f"extra must be a JSON object, got {type(extra).__name__}")
    # UI forms may store conn-fields as extra__ray__<name>.
    extra = {k.removeprefix("extra__ray__"): v for k, v in extra.items()}
    unknown = sorted(set(extra) - _EXTRA_KEYS)
    if unknown:
        raise bad(f"unknown extra field(s) {unknown}; allowed: {sorted(_EXTRA_KEYS)}")
    try:
        verify: bool | str = as_bool(extra.get("verify_ssl", True), "extra 'verify_ssl'")
        if verify and extra.get("ca_bundle"):
            verify = str(extra["ca_bundle"])
        headers = _str_map(extra.get("headers"), "extra 'headers'")
        metadata = _str_map(extra.get("metadata"), "extra 'metadata'")
        timeout = float(extra.get("timeout") or 30.0)
        if timeout <= 0:
            raise ValueError("extra 'timeout' must be a positive number of seconds")
        retry = RetryPolicy.from_extras(extra)
    except (TypeError, ValueError) as e:
        raise bad(str(e)) from None
    if any(k.lower() == "authorization" for k in headers):
        raise bad("extra 'headers' must not carry Authorization: put the token in the "
                  "connection's password")
    return RaySettings(conn_id=cid, url=url, token=conn.password or "", headers=headers,
                       verify=verify, metadata=metadata, timeout=timeout, retry=retry)


class RayHook(BaseHook):
    """Submit, inspect, stop and read the logs of Ray jobs over the Jobs REST API."""

    conn_name_attr = "ray_conn_id"
    default_conn_name = "ray_default"
    conn_type = "ray"
    hook_name = "Ray"

    def __init__(self, ray_conn_id: str = default_conn_name, *,
                 settings: RaySettings | None = None):
        super().__init__()
        self.ray_conn_id = ray_conn_id
        self._settings = settings

    # --- connection ---------------------------------------------------------------------------
    @property
    def settings(self) -> RaySettings:
        if self._settings is None:
            self._settings = settings_from_connection(self.get_connection(self.ray_conn_id))
        return self._settings

    async def asettings(self) -> RaySettings:
        if self._settings is None:
            conn = await self.aget_connection(self.ray_conn_id)
            self._settings = settings_from_connection(conn)
        return self._settings

    def get_conn(self) -> RaySettings:
        return self.settings

    def job_url(self, submission_id: str) -> str:
        """The job's page in the Ray dashboard."""
        return f"{self.settings.url}/#/jobs/{quote(submission_id, safe='')}"

    def _where(self, s: RaySettings) -> str:
        return f"Ray connection '{s.conn_id}' ({s.url})"

    def _raise_for(self, s: RaySettings, status: int, body: str, what: str) -> None:
        if status == 401:
            raise RayAuthError(f"{self._where(s)}: the dashboard requires a token and none was "
                               f"sent; set the connection's password to the cluster's token")
        if status == 403:
            raise RayAuthError(f"{self._where(s)}: the dashboard rejected the token (HTTP 403); "
                               f"the connection's password does not match the cluster's token")
        raise RayApiError(f"{self._where(s)}: {what} failed with HTTP {status}: "
                          f"{_error_detail(body)}", status)

    def _unreachable(self, s: RaySettings, exc: BaseException) -> RayUnreachableError:
        name = type(exc).__name__
        return RayUnreachableError(
            f"{self._where(s)}: cannot reach the Ray dashboard ({name}: {exc}); check the "
            f"connection's host and port and that the cluster is running")

    # --- sync (requests) -----------------------------------------------------------------------
    def _policy(self, s: RaySettings, deadline_s: float | None) -> RetryPolicy:
        if deadline_s is None or deadline_s >= s.retry.deadline_s:
            return s.retry
        return dataclasses.replace(s.retry, deadline_s=max(0.0, deadline_s))

    def _request(self, method: str, path: str, what: str, *, deadline_s: float | None = None,
                 **kwargs: Any) -> Any:
        """One call to the dashboard, retried on transient faults (the connection's policy;
        ``deadline_s`` can only shorten it)."""
        s = self.settings
        return self._policy(s, deadline_s).call(
            lambda: self._request_once(s, method, path, what, **kwargs), self.log)

    def _request_once(self, s: RaySettings, method: str, path: str, what: str, *,
                      json_body: Any = None, ok_404: bool = False,
                      timeout: float | None = None) -> Any:
        import requests

        try:
            resp = requests.request(method, s.url + path, json=json_body, verify=s.verify,
                                    headers=s.request_headers(),
                                    timeout=timeout or s.timeout, allow_redirects=False)
        except requests.exceptions.SSLError as e:
            raise RayHookError(f"{self._where(s)}: TLS verification failed ({e}); set the "
                               f"connection's ca_bundle extra to the CA that signed the "
                               f"dashboard's certificate") from None
        except requests.exceptions.RequestException as e:
            raise self._unreachable(s, e) from None
        if ok_404 and resp.status_code == 404:
            return None
        if resp.status_code >= 300:
            self._raise_for(s, resp.status_code, resp.text, what)
        return resp.json() if resp.content else None

    def get_job(self, submission_id: str, deadline_s: float | None = None) -> dict | None:
        """Job details (status, message, error_type, metadata, ...) or None if unknown."""
        return self._request("GET", f"/api/jobs/{quote(submission_id, safe='')}",
                             f"looking up job {submission_id}", ok_404=True,
                             deadline_s=deadline_s)

    def list_jobs(self, deadline_s: float | None = None) -> list[dict]:
        return self._request("GET", "/api/jobs/", "listing jobs", deadline_s=deadline_s) or []

    def submit_job(self, entrypoint: str, *, submission_id: str,
                   runtime_env: dict | None = None, metadata: dict[str, str] | None = None,
                   entrypoint_num_cpus: float | None = None,
                   entrypoint_num_gpus: float | None = None,
                   entrypoint_memory: int | None = None,
                   entrypoint_resources: dict[str, float] | None = None) -> str:
        body = self._submit_body(entrypoint, submission_id, runtime_env, metadata,
                                 entrypoint_num_cpus, entrypoint_num_gpus, entrypoint_memory,
                                 entrypoint_resources)
        s, attempts = self.settings, []

        def once() -> Any:
            attempts.append(1)
            try:
                return self._request_once(s, "POST", "/api/jobs/",
                                          f"submitting job {submission_id}", json_body=body)
            except RayApiError as e:
                # A retry whose earlier attempt reached Ray (its answer was lost): Ray refuses
                # the id it already has. Only then is "already exists" this call's success.
                if len(attempts) > 1 and "already exists" in str(e):
                    self.log.info("Ray job %s was created by an earlier attempt of this "
                                  "submission", submission_id)
                    return {"submission_id": submission_id}
                raise

        out = s.retry.call(once, self.log)
        return out["submission_id"]

    def _submit_body(self, entrypoint, submission_id, runtime_env, metadata, num_cpus,
                     num_gpus, memory, resources) -> dict:
        s = self.settings
        meta = {**s.metadata, **(metadata or {})}
        body: dict[str, Any] = {"entrypoint": entrypoint, "submission_id": submission_id,
                                "metadata": {k: str(v) for k, v in meta.items()}}
        if s.token and s.token in json.dumps([entrypoint, runtime_env, body["metadata"]]):
            raise RayHookError(f"{self._where(s)}: refusing to submit job {submission_id}: the "
                               f"connection's token appears in its entrypoint, runtime_env or "
                               f"metadata (Ray stores and shows those in clear)")
        for key, value in (("runtime_env", runtime_env), ("entrypoint_num_cpus", num_cpus),
                           ("entrypoint_num_gpus", num_gpus), ("entrypoint_memory", memory),
                           ("entrypoint_resources", resources)):
            if value is not None:
                body[key] = value
        return body

    def stop_job(self, submission_id: str, deadline_s: float | None = None) -> bool:
        """Ask Ray to stop the job; True if it was running. Does not wait."""
        out = self._request("POST", f"/api/jobs/{quote(submission_id, safe='')}/stop",
                            f"stopping job {submission_id}", deadline_s=deadline_s)
        return bool(out and out.get("stopped"))

    def get_job_logs(self, submission_id: str) -> str:
        out = self._request("GET", f"/api/jobs/{quote(submission_id, safe='')}/logs",
                            f"reading the logs of job {submission_id}", ok_404=True)
        return (out or {}).get("logs", "")

    def test_connection(self) -> tuple[bool, str]:
        """Authenticated call to the Jobs API (the UI's Test button: answers at once, no
        retries)."""
        try:
            version = self._request("GET", "/api/version", "reading the Ray version",
                                    deadline_s=0)
            self.list_jobs(deadline_s=0)
        except RayHookError as e:
            return False, str(e)
        return True, (f"Connected to Ray {version.get('ray_version', '?')} at "
                      f"{self.settings.url}")

    # --- async (aiohttp) -----------------------------------------------------------------------
    def _ssl(self, s: RaySettings):
        if s.verify is False:
            return False
        if isinstance(s.verify, str):
            return ssl.create_default_context(cafile=s.verify)
        return True

    async def _arequest(self, method: str, path: str, what: str, *,
                        deadline_s: float | None = None, **kwargs: Any) -> Any:
        """Async :meth:`_request`: the same policy, sleeping without blocking the loop."""
        s = await self.asettings()

        async def once() -> Any:
            return await self._arequest_once(s, method, path, what, **kwargs)

        return await self._policy(s, deadline_s).acall(once, self.log)

    async def _arequest_once(self, s: RaySettings, method: str, path: str, what: str, *,
                             json_body: Any = None, ok_404: bool = False,
                             timeout: float | None = None) -> Any:
        import aiohttp

        client_timeout = aiohttp.ClientTimeout(total=timeout or s.timeout)
        try:
            async with aiohttp.ClientSession(timeout=client_timeout) as session, \
                    session.request(method, s.url + path, json=json_body,
                                    headers=s.request_headers(), ssl=self._ssl(s),
                                    allow_redirects=False) as resp:
                text = await resp.text()
                status = resp.status
        except aiohttp.ClientSSLError as e:
            raise RayHookError(f"{self._where(s)}: TLS verification failed ({e}); set the "
                               f"connection's ca_bundle extra") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise self._unreachable(s, e) from None
        if ok_404 and status == 404:
            return None
        if status >= 300:
            self._raise_for(s, status, text, what)
        return json.loads(text) if text else None

    async def aget_job(self, submission_id: str, deadline_s: float | None = None
                       ) -> dict | None:
        return await self._arequest("GET", f"/api/jobs/{quote(submission_id, safe='')}",
                                    f"looking up job {submission_id}", ok_404=True,
                                    deadline_s=deadline_s)

    async def astop_job(self, submission_id: str, deadline_s: float | None = None) -> bool:
        out = await self._arequest("POST", f"/api/jobs/{quote(submission_id, safe='')}/stop",
                                   f"stopping job {submission_id}", deadline_s=deadline_s)
        return bool(out and out.get("stopped"))

    async def aget_job_logs(self, submission_id: str) -> str:
        out = await self._arequest("GET", f"/api/jobs/{quote(submission_id, safe='')}/logs",
                                   f"reading the logs of job {submission_id}", ok_404=True)
        return (out or {}).get("logs", "")

    async def atail_job_logs(self, submission_id: str) -> AsyncIterator[str]:
        """Log text as the job writes it (websocket ``/logs/tail``); ends when the job ends."""
        import aiohttp

        s = await self.asettings()
        url = s.url.replace("http", "ws", 1) + \
            f"/api/jobs/{quote(submission_id, safe='')}/logs/tail"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=s.timeout)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, \
                    session.ws_connect(url, headers=s.request_headers(), ssl=self._ssl(s),
                                       heartbeat=30) as ws:
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        yield msg.data
                    elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        break
        except aiohttp.WSServerHandshakeError as e:
            self._raise_for(s, e.status, e.message or "", f"tailing the logs of {submission_id}")
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise self._unreachable(s, e) from None


def _error_detail(body: str) -> str:
    """The line of a dashboard error body worth showing: Ray answers 500 with a traceback whose
    last line can be bare punctuation, and the line naming an existing id ("already exists")
    decides whether a retry is in order, so it wins over the last line."""
    lines = [ln.strip() for ln in body.splitlines() if any(c.isalnum() for c in ln)]
    if not lines:
        return ""
    return next((ln for ln in lines if "already exists" in ln), lines[-1])[:500]
