"""System tier: the real Airflow 3 services (api-server, scheduler, dag-processor, triggerer;
LocalExecutor, SQLite) on 127.0.0.1 against the session's private token-auth Ray head, driven
through the REST API exactly as the UI drives them (trigger, clear, mark, backfill, links).

Everything runs in a throwaway AIRFLOW_HOME; each service runs in its own process group and
only those groups (and their descendants) are stopped at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")
TERMINAL_RUN = {"success", "failed"}


def _sqlite_busy(method: str, resp: requests.Response) -> bool:
    """Whether ``resp`` is SQLite's lock seen by the api-server, worth the same request again."""
    if resp.status_code == 503:
        return "Database is locked" in resp.text
    if resp.status_code != 500 or method not in ("GET", "PATCH", "PUT", "DELETE"):
        return False
    try:
        detail = resp.json().get("detail")
    except ValueError:
        return False
    return isinstance(detail, dict) and detail.get("reason") == "Database error"


class AirflowStack:
    """The four Airflow services of one AIRFLOW_HOME, and a logged-in REST client."""

    def __init__(self, home: Path, ray_head, dags: list[Path], db_template: Path, *,
                 all_admins: bool = False):
        from kg_ops.devcluster import free_ports

        self.home = home
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.password = secrets.token_urlsafe(12)
        self.procs: dict[str, subprocess.Popen] = {}
        self.token = ""
        self.db_template = db_template
        self.env = self._env(ray_head, all_admins)
        (home / "dags").mkdir(parents=True, exist_ok=True)
        for dag in dags:
            (home / "dags" / dag.name).symlink_to(dag)

    def _env(self, ray_head, all_admins: bool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        pw_file = self.home / "passwords.json"
        self.home.mkdir(parents=True, exist_ok=True)
        pw_file.write_text(json.dumps({"admin": self.password}))
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.home / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "3",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            # A loaded 2-core CI machine: the api-server's first Execution API calls can take
            # tens of seconds (SQLite, cold imports); the default 5 s makes tasks fail at start.
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "90",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(pw_file),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": str(all_admins),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW_CONN_RAY_DEFAULT": json.dumps({"conn_type": "ray",
                                                    "host": ray_head.dashboard_url,
                                                    "password": ray_head.token}),
            "KGOPS_ARTIFACT_ROOT": str(self.home / "artifacts"),
            "HF_HUB_OFFLINE": "1",
        })
        return env

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        shutil.copy(self.db_template, self.home / "airflow.db")
        for name in SERVICES:
            log = open(self.home / f"{name}.log", "w")  # noqa: SIM115 (closed by the process)
            self.procs[name] = subprocess.Popen([self._bin(), name], env=self.env, stdout=log,
                                                stderr=subprocess.STDOUT,
                                                start_new_session=True)
        self._wait_healthy()
        self.token = self.login()

    def _bin(self) -> str:
        return str(Path(sys.executable).parent / "airflow")

    def _wait_healthy(self, timeout: float = 180) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
            if dead:
                raise RuntimeError(f"Airflow services exited: {dead}\n{self.logs_tail()}")
            try:
                if requests.get(f"{self.url}/api/v2/monitor/health", timeout=5).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        raise RuntimeError(f"api-server not healthy after {timeout}s\n{self.logs_tail()}")

    def stop(self) -> None:
        from kg_ops.devcluster import kill_cluster

        for proc in self.procs.values():
            kill_cluster(proc.pid, str(self.home / "no-such-dir"), grace_s=10)

    def logs_tail(self, n: int = 40) -> str:
        out = []
        for name in SERVICES:
            path = self.home / f"{name}.log"
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-n:]
                out.append(f"--- {name} ---\n" + "\n".join(lines))
        return "\n".join(out)

    # --- REST, as the UI calls it ---------------------------------------------------------------
    def login(self, username: str = "admin", password: str | None = None) -> str:
        resp = requests.post(f"{self.url}/auth/token", timeout=30,
                             json={"username": username, "password": password or self.password})
        assert resp.status_code == 201, resp.text
        return resp.json()["access_token"]

    def call(self, method: str, path: str, *, auth: bool = True, headers: dict | None = None,
             **kwargs) -> requests.Response:
        headers = dict(headers or {})
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        return requests.request(method, self.url + path, headers=headers, timeout=60, **kwargs)

    def api(self, method: str, path: str, **kwargs) -> Any:
        resp = self.call(method, "/api/v2" + path, **kwargs)
        # On SQLite (the embedded default) Airflow answers 503 "Database is locked" when the
        # scheduler writes at the same moment (seen for POST /backfills in CI) and asks the
        # caller to try again: do what a UI user would, for up to a minute. The same lock
        # during the request's audit-log INSERT comes back as a 500 "Database error" (seen
        # for PATCH /dags/{id} in CI, the api-server log naming the `INSERT INTO log`): an
        # idempotent request is retried on it too (a POST is not: it may have taken effect).
        end = time.monotonic() + 60
        while _sqlite_busy(method, resp) and time.monotonic() < end:
            time.sleep(2)
            resp = self.call(method, "/api/v2" + path, **kwargs)
        assert resp.ok, f"{method} {path}: {resp.status_code} {resp.text[:2000]}"
        return resp.json() if resp.content else None

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            resp = self.call("GET", f"/api/v2/dags/{dag_id}")
            if resp.ok:
                return resp.json()
            time.sleep(2)
        errors = self.api("GET", "/importErrors")
        raise AssertionError(f"DAG {dag_id} not parsed after {timeout}s: {errors}\n"
                             f"{self.logs_tail()}")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        tis = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti["state"] for ti in tis["task_instances"]}

    def wait(self, what: str, predicate, timeout: float, interval: float = 2.0):
        """Poll ``predicate`` until it returns something truthy; fail with the services' logs."""
        end = time.monotonic() + timeout
        last = None
        while time.monotonic() < end:
            last = predicate()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n"
                             f"{self.logs_tail()}")

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 900) -> str:
        def done():
            state = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
            return state if state in TERMINAL_RUN else None
        return self.wait(f"run {run_id} to finish", done, timeout, interval=3)

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        """The task try's log as the UI shows it (worker and trigger parts), one event a line."""
        resp = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/"
                                f"taskInstances/{task_id}/logs/{try_number}",
                         headers={"Accept": "application/x-ndjson"})
        assert resp.ok, resp.text
        events = (json.loads(line) for line in resp.text.splitlines() if line.strip())
        return "\n".join(str(e.get("event", "")) for e in events)


def start_stack(tmp_path_factory, ray_head, dags: list[Path], db_template: Path,
                **kwargs) -> AirflowStack:
    stack = AirflowStack(tmp_path_factory.mktemp("airflow-system"), ray_head, dags, db_template,
                         **kwargs)
    try:
        stack.start()
    except BaseException:
        stack.stop()
        raise
    return stack


@pytest.fixture(scope="session")
def airflow_stack(tmp_path_factory, ray_head, migrated_db_template):
    """The real services with the repo's refresh DAG and the system tier's job DAG."""
    dags = [REPO / "dags" / "kg_embedding_refresh.py",
            REPO / "tests" / "system" / "dags" / "kgops_system_jobs.py"]
    stack = start_stack(tmp_path_factory, ray_head, dags, migrated_db_template)
    yield stack
    stack.stop()
