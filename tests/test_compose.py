"""docker-compose.yaml and Dockerfile, checked without a Docker engine (none runs here).

The services and their commands are compared with the official Airflow 3 compose file's:
api-server, scheduler, dag-processor and triggerer, sharing one environment, plus the Ray head
and worker and the S3-compatible store this project adds."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


def test_airflow3_services_and_commands():
    services = compose()["services"]
    expected = {"airflow-apiserver": "api-server", "airflow-scheduler": "scheduler",
                "airflow-dag-processor": "dag-processor", "airflow-triggerer": "triggerer"}
    for name, command in expected.items():
        assert services[name]["command"] == command, name
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == \
            "http://airflow-apiserver:8080/execution/"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        assert services[name]["depends_on"]["airflow-init"]["condition"] == \
            "service_completed_successfully"
    assert "airflow db migrate" in " ".join(services["airflow-init"]["command"])
    # Airflow 2 leftovers must not creep in.
    text = (REPO / "docker-compose.yaml").read_text()
    for removed in ("webserver", "SequentialExecutor", "celery"):
        assert removed not in text


def test_ray_cluster_has_token_auth_and_kg_ops_image():
    services = compose()["services"]
    head, worker = services["ray-head"], services["ray-worker"]
    assert head["command"].startswith("ray start --head") and "--block" in head["command"]
    assert worker["command"].startswith("ray start --address ray-head:6379")
    for svc in (head, worker):
        assert svc["environment"]["RAY_AUTH_MODE"] == "token"
        assert svc["build"]["target"] == "ray"
    for name in ("airflow-scheduler", "airflow-triggerer"):
        assert services[name]["build"]["target"] == "airflow"


def test_connections_preconfigured_and_secrets_come_from_env():
    env = compose()["services"]["airflow-scheduler"]["environment"]
    ray_conn = env["AIRFLOW_CONN_RAY_DEFAULT"]
    assert '"conn_type": "ray"' in ray_conn and "http://ray-head:8265" in ray_conn
    # The token is interpolated from .env, never written in the file.
    assert "${RAY_AUTH_TOKEN" in ray_conn
    assert env["KGOPS_ARTIFACT_ROOT"].startswith("s3://")
    text = (REPO / "docker-compose.yaml").read_text()
    assert not re.search(r"(PASSWORD|TOKEN|SECRET)[A-Z_]*:\s*['\"]?[A-Za-z0-9]{8,}", text)


def test_dockerfile_targets_install_kg_ops_in_both_images():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM \$\{AIRFLOW_IMAGE\} AS airflow$", text, re.M)
    assert re.search(r"^FROM \$\{RAY_IMAGE\} AS ray$", text, re.M)
    assert '"/opt/kg_ops[airflow]"' in text and '"/opt/kg_ops[ray]"' in text
    assert "torch==2.13.0" in text and "whl/cpu" in text
