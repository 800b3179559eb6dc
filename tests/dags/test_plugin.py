"""The kg_ops Airflow plugin loads in Airflow 3 and serves the embedding-versions page."""

from __future__ import annotations

from kg_ops.airflow.published import render_versions_page


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


def test_versions_page_served_from_the_metadata_db(airflow_db):
    from fastapi.testclient import TestClient

    from kg_ops.airflow.published import create_versions_app

    client = TestClient(create_versions_app())
    page = client.get("/versions")
    assert page.status_code == 200
    assert "Published KG embedding versions" in page.text
    assert isinstance(client.get("/versions.json").json(), list)


def test_versions_page_escapes_and_formats():
    page = render_versions_page([{"timestamp": "2026-11-01T02:00:00", "run_id": "r<1>",
                                  "mrr": 0.123456, "hits@10": 0.5, "model": "rgcn",
                                  "embeddings_uri": "s3://b/e.parquet"}])
    assert "r&lt;1&gt;" in page and "<script" not in page
    assert "0.1235" in page and "s3://b/e.parquet" in page
    assert "No version published" in render_versions_page([])
