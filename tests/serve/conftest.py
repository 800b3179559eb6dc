"""Shared pieces of the service tests: a small synthetic graph, two random model versions over
it, and the expected answers computed from the stored files alone (:class:`Brute`)."""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    from kg_ops.cli import main

    out = tmp_path_factory.mktemp("serve") / "graph"
    assert main(["synth", "--nodes", "300", "--edges", "2400", "--seed", "3",
                 "--out", str(out)]) == 0
    return str(out)


@pytest.fixture(scope="module")
def versions(graph, tmp_path_factory):
    from kg_ops.serve.synthetic import write_random_version

    root = tmp_path_factory.mktemp("versions")
    return [write_random_version(graph, str(root / f"v{i}"), dim=16, seed=i) for i in (1, 2)]


class Brute:
    """The expected answers, from the files only."""

    def __init__(self, version_uri: str, graph_uri: str):
        import json

        import torch

        table = pq.read_table(f"{version_uri}/embeddings.parquet")
        self.keys = table.column("key").to_pylist()
        self.types = np.array(table.column("node_type").to_pylist(), dtype=object)
        emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float64)
        half = emb.shape[1] // 2
        self.z = emb[:, :half] + 1j * emb[:, half:]
        model_uri = version_uri.rsplit("/", 1)[0] + "/model"
        rel = torch.load(f"{model_uri}/model.pt", weights_only=True)["decoder.rel"].double()
        self.w = rel[:, :half].numpy() + 1j * rel[:, half:].numpy()
        with open(f"{graph_uri}/schema.json") as fh:
            schema = json.load(fh)
        self.rel_names = [r["name"] for r in schema["relations"]]
        self.rel_ends = {r["name"]: (r["head"], r["tail"]) for r in schema["relations"]}
        edges = np.concatenate([pq.read_table(f"{graph_uri}/edges/{s}.parquet").to_pandas()
                                .to_numpy() for s in ("train", "valid", "test")])
        self.known = {tuple(map(int, e)) for e in edges}
        self.index = {k: i for i, k in enumerate(self.keys)}

    def score(self, h: int, r: int, t: np.ndarray) -> np.ndarray:
        return np.real((self.z[h] * self.w[r])[None, :] * np.conj(self.z[t])).sum(-1) \
            if np.ndim(t) else float(np.real(self.z[h] * self.w[r] * np.conj(self.z[t])).sum())

    def topk(self, anchor: str, relation: str, k: int, tail_side: bool, filter_known: bool):
        a, r = self.index[anchor], self.rel_names.index(relation)
        want_type = self.rel_ends[relation][1 if tail_side else 0]
        cand = np.flatnonzero(self.types == want_type)
        if tail_side:
            s = np.real((self.z[a] * self.w[r])[None, :] * np.conj(self.z[cand])).sum(-1)
            known = [(a, r, int(c)) in self.known for c in cand]
        else:
            s = np.real(self.z[cand] * self.w[r][None, :] * np.conj(self.z[a])[None, :]).sum(-1)
            known = [(int(c), r, a) in self.known for c in cand]
        keep = ~np.array(known) if filter_known else np.ones(len(cand), bool)
        cand, s = cand[keep], s[keep]
        order = np.argsort(-s, kind="stable")[:k]
        return [self.keys[c] for c in cand[order]], s[order]


def post(url, body, **kw):
    return requests.post(url, json=body, timeout=30, **kw)


def queries(brute: Brute, n: int = 12, seed: int = 0):
    """Tail and head queries over every relation, anchors with and without known answers."""
    rng = np.random.default_rng(seed)
    out = []
    for (h, r, t) in sorted(brute.known)[:: max(1, len(brute.known) // n)][:n]:
        rel = brute.rel_names[r]
        out.append({"head": brute.keys[h], "relation": rel})
        out.append({"tail": brute.keys[t], "relation": rel})
    rng.shuffle(out)
    return out


def client_loop(url: str, body: dict, stop: threading.Event, seen: list, errors: list):
    """POST ``body`` to ``{url}/predict`` until ``stop``: (version, answer keys) into ``seen``,
    anything but a 200 into ``errors``."""
    with requests.Session() as s:
        while not stop.is_set():
            try:
                r = s.post(f"{url}/predict", json=body, timeout=30)
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
                else:
                    seen.append((r.json()["version"], tuple(a["key"] for a in r.json()["answers"])))
            except requests.RequestException as exc:
                errors.append(repr(exc))


@contextlib.contextmanager
def clients_running(url: str, body: dict, n: int = 3):
    """``n`` :func:`client_loop` threads POSTing ``body`` to ``url`` around the block (from a
    second before it to a second after it); yields their ``(seen, errors)`` lists."""
    stop, seen, errors = threading.Event(), [], []
    clients = [threading.Thread(target=client_loop, args=(url, body, stop, seen, errors))
               for _ in range(n)]
    for c in clients:
        c.start()
    try:
        time.sleep(1.0)
        yield seen, errors
        time.sleep(1.0)
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=60)


def swap_query(brute1, brute2) -> tuple[dict, tuple, tuple]:
    """A top-10 query whose answers differ between two versions: ``(body, v1's, v2's)``."""
    q = queries(brute1, n=2)[0]
    side, anchor = "head" in q, q.get("head") or q.get("tail")
    expect1 = tuple(brute1.topk(anchor, q["relation"], 10, side, True)[0])
    expect2 = tuple(brute2.topk(anchor, q["relation"], 10, side, True)[0])
    assert expect1 != expect2
    return {**q, "k": 10}, expect1, expect2
