"""``kgops serve`` on a Ray cluster started with Serve's direct ingress
(``RAY_SERVE_ENABLE_DIRECT_INGRESS=1`` in the environment of its processes, as a real cluster
gets it): the replica answers HTTP on its own port, the deploy reports that URL, and answers,
404s, a version swap without a failed request and a rollback work through it.

The cluster is a private local head (token auth, own ports); ``kgops serve`` runs as a
separate process against it, as a user or the deploy task runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from kg_ops.devcluster import LocalRayHead, free_ports
from tests.serve.conftest import Brute, clients_running, post, queries, swap_query

pytestmark = pytest.mark.slow

KGOPS = str(Path(sys.executable).parent / "kgops")
NAME = "kgdirect"
PREFIX = "/kgd"


@pytest.fixture(scope="module")
def head():
    with LocalRayHead(num_cpus=2, env={"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"}) as h:
        yield h


def kgops_serve(head, port: int, out: Path, *args: str) -> tuple[dict, str]:
    """Run ``kgops serve ARGS`` against ``head``; its manifest and what it printed."""
    from kg_ops.manifest import read_manifest

    env = {**os.environ, **head.env()}
    proc = subprocess.run([KGOPS, "serve", *args, "--name", NAME, "--num-cpus", "0.5",
                           "--http-port", str(port), "--out", str(out),
                           "--ray-address", head.address],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return read_manifest(str(out)), proc.stdout


@pytest.fixture(scope="module")
def service(head, versions, tmp_path_factory):
    port = free_ports(1)[0]
    out = tmp_path_factory.mktemp("deploy")
    manifest, printed = kgops_serve(head, port, out / "v1", "--model", versions[0],
                                    "--route-prefix", PREFIX)
    return {"port": port, "out": out, "manifest": manifest, "printed": printed,
            "url": manifest["outputs"]["url"]}


def test_the_replica_answers_on_its_own_port(service, versions, graph):
    out = service["manifest"]["outputs"]
    proxy_url = f"http://127.0.0.1:{service['port']}{PREFIX}"
    assert out["ingress"] == "direct" and out["proxy_url"] == proxy_url
    assert out["urls"] == [out["url"]] and out["url"] != proxy_url
    assert out["url"].startswith("http://127.0.0.1:") and out["url"].endswith(PREFIX)
    assert "ingress: direct" in service["printed"] and out["url"] in service["printed"]

    brute = Brute(versions[0], graph)
    for q in queries(brute, n=4):
        tail_side = "head" in q
        keys, _ = brute.topk(q.get("head") or q.get("tail"), q["relation"], 10, tail_side,
                             True)
        for url in (out["url"], proxy_url):  # the proxy still answers, the same
            got = post(f"{url}/predict", {**q, "k": 10})
            assert got.status_code == 200, got.text
            assert [a["key"] for a in got.json()["answers"]] == keys
        got = requests.get(f"{out['url']}/predict", params={**q, "k": 10}, timeout=30)
        assert [a["key"] for a in got.json()["answers"]] == keys

    rel = brute.rel_names[0]
    resp = post(f"{out['url']}/predict", {"head": "no-such-entity:5", "relation": rel})
    assert resp.status_code == 404 and "no-such-entity:5" in resp.json()["detail"]
    resp = requests.get(f"{out['url']}/predict", timeout=30,
                        params={"head": brute.keys[0], "relation": rel, "k": 5000})
    assert resp.status_code == 422
    big = {"head": brute.keys[0], "relation": rel, "pad": "x" * (2 << 20)}
    assert post(f"{out['url']}/predict", big).status_code == 413
    # Outside the route prefix the replica's server answers 404 (Serve's own check).
    assert requests.get(out["url"].rsplit("/", 1)[0] + "/other/health",
                        timeout=10).status_code == 404


def test_swap_and_rollback_through_the_replica_port(head, service, versions, graph):
    from kg_ops.serve.version import open_version

    v1, v2 = (open_version(v).id for v in versions)
    brute1, brute2 = Brute(versions[0], graph), Brute(versions[1], graph)
    body, expect1, expect2 = swap_query(brute1, brute2)
    with clients_running(service["url"], body) as (seen, errors):
        swapped, _ = kgops_serve(head, service["port"], service["out"] / "v2",
                                 "--model", versions[1], "--route-prefix", PREFIX)
    assert errors == []
    assert seen[0][0] == v1 and seen[-1][0] == v2
    assert {a for v, a in seen if v == v1} == {expect1}
    assert {a for v, a in seen if v == v2} == {expect2}
    # The swap happened inside the replica: same replica, same port.
    assert swapped["outputs"]["url"] == service["url"]
    assert swapped["outputs"]["ingress"] == "direct"

    back, _ = kgops_serve(head, service["port"], service["out"] / "back", "--rollback")
    assert back["live"]["version"]["id"] == v1 and back["outputs"]["url"] == service["url"]
    got = post(f"{service['url']}/predict", body).json()
    assert got["version"] == v1 and tuple(a["key"] for a in got["answers"]) == expect1


def test_two_replicas_each_answer_on_their_own_port(head, service, versions):
    """A redeploy with ``--replicas 2`` starts new replicas (new ports, the old one drains);
    the deploy lists both URLs, prints them, and each answers the live version."""
    from kg_ops.serve.version import open_version

    live = open_version(versions[0]).id  # rolled back to v1 by the previous test, or never left
    scaled, printed = kgops_serve(head, service["port"], service["out"] / "two", "--model",
                                  versions[0], "--route-prefix", PREFIX, "--replicas", "2")
    urls = scaled["outputs"]["urls"]
    assert scaled["outputs"]["ingress"] == "direct" and len(set(urls)) == 2
    assert scaled["outputs"]["url"] == urls[0] and all(u in printed for u in urls)
    for url in urls:
        assert requests.get(f"{url}/health", timeout=10).json()["version"] == live
