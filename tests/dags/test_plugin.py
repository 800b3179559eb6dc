"""The kg_ops Airflow plugin: loads in Airflow 3, is mounted by the real api-server app, and every
route answers only behind Airflow's own authentication (the api-server's auth manager)."""

from __future__ import annotations

import pytest

from kg_ops.airflow.published import render_versions_page

ROUTES = ("/kgops/versions", "/kgops/versions.json",
          "/kgops/reports/kg_embedding_refresh/manual__1/evaluate",
          "/kgops/reports/kg_embedding_refresh/manual__1/evaluate/manifest")


def test_plugin_loads_with_page_and_links(airflow_db):
    from airflow import plugins_manager

    plugins, import_errors = plugins_manager._get_plugins()
    assert not {k: v for k, v in import_errors.items() if "kg_ops" in k}, import_errors
    ours = [p for p in plugins if p.name == "kg_ops"]
    assert len(ours) == 1
    plugin = ours[0]
    assert plugin.fastapi_apps[0]["url_prefix"] == "/kgops"
    assert plugin.external_views[0]["href"] == "/kgops/versions"
    assert {type(link).__name__ for link in plugin.operator_extra_links} == \
        {"RayJobLink", "EvaluationReportLink"}


@pytest.fixture(scope="module")
def api_server(airflow_db):
    """The api-server's own FastAPI app (core API, auth manager, plugins) in-process, and a JWT
    the auth manager issued for an admin."""
    from airflow.api_fastapi.app import create_app
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    app = create_app(apps="core")
    token = app.state.auth_manager.generate_jwt(SimpleAuthManagerUser(username="admin",
                                                                      role="admin"))
    return TestClient(app), token


@pytest.mark.parametrize("path", ROUTES)
def test_every_route_needs_a_login(api_server, path):
    client, token = api_server
    assert client.get(path).status_code == 401
    assert client.get(path, headers={"Authorization": "Bearer forged"}).status_code in (401, 403)
    resp = client.get(path, headers={"Authorization": f"Bearer {token}"})
    if "/reports/" in path:
        assert resp.status_code == 404 and "no result yet" in resp.text   # authorised, no run
    else:
        assert resp.status_code == 200


def test_docs_of_the_plugin_app_are_off(api_server):
    client, token = api_server
    for path in ("/kgops/docs", "/kgops/openapi.json"):
        assert client.get(path, headers={"Authorization": f"Bearer {token}"}).status_code == 404


def test_versions_page_escapes_and_formats():
    page = render_versions_page([{"date": "2026-11-01T02:00:00+00:00", "run_id": "r<1>",
                                  "mrr": 0.123456, "hits@10": 0.5, "model": "rgcn",
                                  "embeddings_uri": "s3://b/e.parquet", "current": False}])
    assert "r&lt;1&gt;" in page and "<script" not in page
    assert "0.1235" in page and "s3://b/e.parquet" in page
    assert "2026-11-01T02:00:00+00:00 (past date)" in page
    assert "No version published" in render_versions_page([])
