"""The link-prediction service on a real local Ray Serve (in-process Ray, HTTP on 127.0.0.1).

Answers are checked against a brute-force ranking computed from the stored files alone
(embeddings.parquet, the decoder's weights in model.pt, the graph's edge and node tables),
with ComplEx written out in numpy complex arithmetic (:class:`tests.serve.conftest.Brute`).
Runs with whichever ingress the environment selects (``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``
makes the in-process Ray's Serve use direct ingress); test_direct_ingress.py covers that mode
through the CLI on a cluster started with it.
"""

from __future__ import annotations

import numpy as np
import pytest
import requests

from kg_ops.devcluster import free_ports
from tests.serve.conftest import Brute, clients_running, post, queries, swap_query

NAME = "kgtest"
PREFIX = "/kgtest"


@pytest.fixture(scope="module")
def service(ray_local, versions):
    """Serve on this test's Ray instance with version 1 live; only this Serve is shut down."""
    from ray import serve

    from kg_ops.serve.deploy import deploy

    port = free_ports(1)[0]
    manifest = deploy(versions[0], name=NAME, route_prefix=PREFIX, http_port=port,
                      num_cpus=0.5)
    yield {"url": manifest["outputs"]["url"], "port": port, "manifest": manifest}
    serve.shutdown()


def test_predict_equals_brute_force_with_types_and_filter(service, versions, graph):
    brute = Brute(versions[0], graph)
    checked_filtered = 0
    for q in queries(brute):
        for filter_known in (True, False):
            body = {**q, "k": 15, "filter_known": filter_known}
            resp = post(f"{service['url']}/predict", body)
            assert resp.status_code == 200, resp.text
            got = resp.json()
            tail_side = "head" in q
            keys, scores = brute.topk(q.get("head") or q.get("tail"), q["relation"], 15,
                                      tail_side, filter_known)
            assert [a["key"] for a in got["answers"]] == keys, body
            np.testing.assert_allclose([a["score"] for a in got["answers"]], scores,
                                       rtol=1e-4, atol=1e-5)
            want_type = brute.rel_ends[q["relation"]][1 if tail_side else 0]
            assert {a["type"] for a in got["answers"]} <= {want_type}
            assert got["predict"] == ("tail" if tail_side else "head")
            a = brute.index[q.get("head") or q.get("tail")]
            r = brute.rel_names.index(q["relation"])
            known = [((a, r, brute.index[x["key"]]) if tail_side else
                      (brute.index[x["key"]], r, a)) in brute.known for x in got["answers"]]
            if filter_known:
                assert not any(known), body
            else:
                checked_filtered += any(known)
    # The filter is exercised: unfiltered answer lists do contain known facts.
    assert checked_filtered


def test_predict_by_url_parameters_answers_the_same(service, versions, graph):
    """``GET /predict?head=..&relation=..`` is the POST query without a body."""
    brute = Brute(versions[0], graph)
    for q in queries(brute, n=3):
        tail_side = "head" in q
        params = {**q, "k": 7, "filter_known": "false"}
        resp = requests.get(f"{service['url']}/predict", params=params, timeout=30)
        assert resp.status_code == 200, resp.text
        keys, _ = brute.topk(q.get("head") or q.get("tail"), q["relation"], 7, tail_side,
                             False)
        assert [a["key"] for a in resp.json()["answers"]] == keys
        assert resp.json() == post(f"{service['url']}/predict",
                                   {**q, "k": 7, "filter_known": False}).json()
    resp = requests.get(f"{service['url']}/predict", timeout=30,
                        params={"head": "no-such-entity:9", "relation": brute.rel_names[0]})
    assert resp.status_code == 404 and "no-such-entity:9" in resp.json()["detail"]
    resp = requests.get(f"{service['url']}/predict", timeout=30,
                        params={"head": brute.keys[0], "relation": brute.rel_names[0],
                                "k": 5000})
    assert resp.status_code == 422


def test_predict_batch_answers_each_query_like_brute_force(service, versions, graph):
    """``POST /predict/batch``: many queries in one request, each answered as ``/predict``
    (and brute force) would, in order; one bad query refuses the request and is named."""
    from kg_ops.serve.app import MAX_QUERIES

    brute = Brute(versions[0], graph)
    qs = [{**q, "k": 3 + i % 5, "filter_known": i % 3 != 0}
          for i, q in enumerate(queries(brute, n=8))]
    resp = post(f"{service['url']}/predict/batch", {"queries": qs})
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert len(results) == len(qs)
    for q, got in zip(qs, results, strict=True):
        tail_side = "head" in q
        keys, scores = brute.topk(q.get("head") or q.get("tail"), q["relation"], q["k"],
                                  tail_side, q["filter_known"])
        assert got["predict"] == ("tail" if tail_side else "head") and got["query"] == q
        assert [a["key"] for a in got["answers"]] == keys, q
        np.testing.assert_allclose([a["score"] for a in got["answers"]], scores,
                                   rtol=1e-4, atol=1e-5)
        single = post(f"{service['url']}/predict", q).json()
        assert [a["key"] for a in single["answers"]] == keys

    bad = [*qs[:2], {"head": "no-such-entity:3", "relation": qs[0]["relation"]}, *qs[2:]]
    resp = post(f"{service['url']}/predict/batch", {"queries": bad})
    assert resp.status_code == 404
    assert "queries[2]" in resp.json()["detail"] and "no-such-entity:3" in resp.json()["detail"]
    too_many = {"queries": [qs[0]] * (MAX_QUERIES + 1)}
    assert post(f"{service['url']}/predict/batch", too_many).status_code == 422
    assert post(f"{service['url']}/predict/batch", {"queries": []}).status_code == 422


def test_score_equals_brute_force(service, versions, graph):
    brute = Brute(versions[0], graph)
    rng = np.random.default_rng(1)
    trip = [(int(rng.integers(len(brute.keys))), int(rng.integers(len(brute.rel_names))),
             int(rng.integers(len(brute.keys)))) for _ in range(20)]
    trip.append(sorted(brute.known)[0])
    body = {"triples": [{"head": brute.keys[h], "relation": brute.rel_names[r],
                         "tail": brute.keys[t]} for h, r, t in trip]}
    resp = post(f"{service['url']}/score", body)
    assert resp.status_code == 200, resp.text
    got = resp.json()["scores"]
    expect = np.array([brute.score(h, r, t) for h, r, t in trip])
    np.testing.assert_allclose([g["score"] for g in got], expect, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([g["probability"] for g in got], 1 / (1 + np.exp(-expect)),
                               rtol=1e-4)
    assert [g["known"] for g in got] == [t in brute.known for t in trip]


def test_bad_input_gets_4xx_with_the_reason(service, versions, graph):
    brute = Brute(versions[0], graph)
    url = service["url"]
    rel = brute.rel_names[0]
    head_type, _ = brute.rel_ends[rel]
    a_head = brute.keys[int(np.flatnonzero(brute.types == head_type)[0])]
    wrong = brute.keys[int(np.flatnonzero(brute.types != head_type)[0])]

    resp = post(f"{url}/predict", {"head": "no-such-entity:42", "relation": rel})
    assert resp.status_code == 404 and "no-such-entity:42" in resp.json()["detail"]
    resp = post(f"{url}/predict", {"head": a_head, "relation": "no_such_relation"})
    assert resp.status_code == 404 and "no_such_relation" in resp.json()["detail"]
    resp = post(f"{url}/predict", {"head": wrong, "relation": rel})
    assert resp.status_code == 422 and wrong in resp.json()["detail"]
    assert post(f"{url}/predict", {"head": a_head, "tail": a_head,
                                   "relation": rel}).status_code == 422
    assert post(f"{url}/predict", {"head": a_head, "relation": rel,
                                   "k": 100_000}).status_code == 422
    assert post(f"{url}/predict", {"relation": rel, "k": 5}).status_code == 422
    resp = post(f"{url}/score", {"triples": [{"head": a_head, "relation": rel,
                                              "tail": "missing:7"}]})
    assert resp.status_code == 404 and "missing:7" in resp.json()["detail"]
    big = {"head": a_head, "relation": rel, "pad": "x" * (2 << 20)}
    assert post(f"{url}/predict", big).status_code == 413
    # Still healthy after all that.
    assert requests.get(f"{url}/health", timeout=10).json()["status"] == "ok"


def test_version_reports_model_metrics_and_graph(service, versions, graph):
    from kg_ops.serve.version import open_version

    info = requests.get(f"{service['url']}/version", timeout=10).json()
    v = open_version(versions[0])
    assert info["id"] == v.id and info["uri"] == v.uri and info["graph_uri"] == graph
    assert info["graph"]["entities"] == 300 and info["embedding_dim"] == 16
    assert requests.get(f"{service['url']}/health", timeout=10).json()["version"] == v.id


def test_deploy_reports_the_ingress_in_effect(service, versions):
    """The manifest says which ingress answers and where: Serve's proxy by default; with
    direct ingress on the cluster, the replica's own port (the proxy keeps answering)."""
    # Serve reads the setting from the environment this process gave the in-process Ray
    # (RAY_SERVE_ENABLE_DIRECT_INGRESS=1, or RAY_SERVE_THROUGHPUT_OPTIMIZED=1 which implies it).
    from ray.serve._private.constants import (
        RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT,
        RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT,
        RAY_SERVE_ENABLE_DIRECT_INGRESS,
    )

    from kg_ops.serve.deploy import service_state
    from kg_ops.serve.version import open_version

    out = service["manifest"]["outputs"]
    proxy_url = f"http://127.0.0.1:{service['port']}{PREFIX}"
    assert out["proxy_url"] == proxy_url
    if RAY_SERVE_ENABLE_DIRECT_INGRESS:
        assert out["ingress"] == "direct" and len(out["urls"]) == 1 and out["url"] == out["urls"][0]
        port = int(out["url"].rsplit(":", 1)[1].split("/")[0])
        assert RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT <= port < RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT
        assert out["url"] == f"http://127.0.0.1:{port}{PREFIX}"
    else:
        assert out["ingress"] == "proxy" and out["url"] == proxy_url and out["urls"] == [proxy_url]
    now = service_state(NAME)["ingress"]  # what `kgops serve --status` shows
    assert now == {k: out[k] for k in ("ingress", "urls", "proxy_url")}
    vid = open_version(versions[0]).id
    for url in {out["url"], proxy_url}:
        assert requests.get(f"{url}/health", timeout=10).json()["version"] == vid


def test_swap_without_failed_requests_then_rollback(service, versions, graph):
    from kg_ops.serve.deploy import deploy, rollback, service_state
    from kg_ops.serve.version import open_version

    v1, v2 = (open_version(v).id for v in versions)
    brute1, brute2 = Brute(versions[0], graph), Brute(versions[1], graph)
    body, expect1, expect2 = swap_query(brute1, brute2)
    with clients_running(service["url"], body) as (seen, errors):
        manifest = deploy(versions[1], name=NAME, route_prefix=PREFIX,
                          http_port=service["port"], num_cpus=0.5)
    assert errors == []
    versions_seen = [v for v, _ in seen]
    assert versions_seen[0] == v1 and versions_seen[-1] == v2
    # Each version answered with its own embeddings' ranking.
    assert {a for v, a in seen if v == v1} == {expect1}
    assert {a for v, a in seen if v == v2} == {expect2}
    assert manifest["live"]["version"]["id"] == v2
    assert manifest["outputs"]["url"] == service["url"]  # the replicas stay: so does the URL
    assert manifest["previous"]["version"]["id"] == v1
    # Every replica holds v2 only: v1 is released, nothing is left staged.
    held = service_state(NAME)["replicas"]
    assert held and all(r["live"] == v2 and r["staged"] is None for r in held.values())

    back = rollback(name=NAME, http_port=service["port"])
    assert back["live"]["version"]["id"] == v1 and back["previous"]["version"]["id"] == v2
    assert back["outputs"]["url"] == service["url"]
    got = post(f"{service['url']}/predict", body).json()
    assert got["version"] == v1 and tuple(a["key"] for a in got["answers"]) == expect1
    assert service_state(NAME)["live"]["version"]["id"] == v1


def test_a_version_that_fails_to_load_leaves_the_live_one(service, graph, tmp_path):
    """A version whose model.pt is damaged after it was written (the fault is real: a truncated
    file) fails in the new replica and never goes live."""
    from kg_ops.serve.deploy import DeployError, deploy, service_state
    from kg_ops.serve.synthetic import write_random_version

    before = service_state(NAME)["live"]["version"]["id"]
    broken = write_random_version(graph, str(tmp_path / "broken"), dim=16, seed=7)
    model_pt = tmp_path / "broken" / "model" / "model.pt"
    model_pt.write_bytes(model_pt.read_bytes()[:100])
    with pytest.raises(DeployError, match="live version is unchanged"):
        deploy(broken, name=NAME, route_prefix=PREFIX, http_port=service["port"],
               num_cpus=0.5, timeout_s=120)
    assert service_state(NAME)["live"]["version"]["id"] == before
    assert requests.get(f"{service['url']}/health", timeout=10).json()["version"] == before
    state = service_state(NAME)
    assert state["staged"] is None  # unstaged: the replicas drop what they were loading
    assert all(r["live"] == before for r in state["replicas"].values())
