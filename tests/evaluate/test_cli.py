"""``kgops evaluate`` as a user runs it: after a real (1-epoch) `kgops train` on a small
synthetic graph, and with bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from kg_ops.cli import main
from kg_ops.graph.kg import load_edges, load_schema
from kg_ops.manifest import read_manifest


def kgops(*args: str) -> int:
    """In-process, as the console script runs it (saves a torch import per command)."""
    return main(list(args))


def kgops_subprocess(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """For `train`: its local Ray instance lives and dies with the process."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "kg_ops.cli", *args], env=env,
                          capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"kgops {args[0]} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    graph, parts, model = str(root / "graph"), str(root / "parts"), str(root / "model")
    assert kgops("synth", "--nodes", "300", "--edges", "2400", "--seed", "3", "--out", graph) == 0
    assert kgops("partition", "--graph", graph, "--parts", "1", "--fanout", "5,5",
                 "--out", parts) == 0
    proc = kgops_subprocess("train", "--partitions", parts, "--epochs", "1", "--out", model,
                            "--threads", "1", "--valid-triples", "50")
    (root / "train.log").write_text(proc.stderr)
    return root, graph, model


@pytest.mark.slow
def test_a_local_training_log_has_no_state_api_warnings(trained):
    """The local Ray instance serves the State API (its dashboard): without it Ray Train's
    placement-group cleaner logs "State API may be temporarily unavailable" every second."""
    log = (trained[0] / "train.log").read_text()
    assert "train: " in log and "epoch 1/1" in log            # the log was captured
    assert "State API may be temporarily unavailable" not in log


@pytest.mark.slow
def test_train_then_evaluate_matches_a_per_query_reference(trained, capsys):
    import torch

    from kg_ops.models.trained import load_trained

    root, graph, model = trained
    out = str(root / "eval")
    assert kgops("evaluate", "--model", model, "--graph", graph, "--out", out,
                 "--max-queries", "60", "--threads", "1", "--batch-size", "1") == 0
    printed = capsys.readouterr()
    man = read_manifest(out)
    assert man["stage"] == "evaluate" and man["inputs"]["model"]["uri"] == model
    for key in ("mrr", "hits@1", "hits@3", "hits@10", "auc", "tc_mrr"):
        assert 0.0 <= man["metrics"][key] <= 1.0
    assert f"KGOPS_MANIFEST {out}/_manifest.json" in printed.out
    assert "hits@10" in printed.out and "per relation" in printed.out
    assert "evaluate/rank: 120/120 queries" in printed.err  # progress log
    for name in ("report.html", "metrics.json", "per_relation.parquet", "embeddings.parquet",
                 "training_curves.png", "per_relation_mrr.png"):
        assert os.path.exists(os.path.join(out, name)), name

    # Independent reference: the trained model itself, one query at a time (the same scoring
    # call as --batch-size 1, so float rounding is identical), Python-set filters.
    tm = load_trained(model)
    emb = tm.embed_all()
    schema = load_schema(graph)
    edges = {s: load_edges(graph, s) for s in ("train", "valid", "test")}
    tails, heads = defaultdict(set), defaultdict(set)
    for h, r, t in np.concatenate(list(edges.values())).tolist():
        tails[(h, r)].add(t)
        heads[(t, r)].add(h)
    test = edges["test"][np.sort(np.random.default_rng(0).choice(len(edges["test"]), 60,
                                                                 replace=False))]
    types = {t.name: range(t.offset, t.offset + t.count) for t in schema.node_types}
    rr, tc_rr = [], []
    with torch.no_grad():
        for h, r, t in test.tolist():
            rel = torch.tensor([r])
            rel_def = schema.relations[r]
            for scores, answer, known, cand_type in (
                    (tm.score_tails(emb[[h]], rel, emb)[0], t, tails[(h, r)], rel_def.tail),
                    (tm.score_heads(emb[[t]], rel, emb)[0], h, heads[(t, r)], rel_def.head)):
                s = scores.tolist()
                for cands, out_list in ((range(schema.num_nodes), rr), (types[cand_type], tc_rr)):
                    others = [c for c in cands if c not in known]
                    gt = sum(s[c] > s[answer] for c in others)
                    ge = sum(s[c] >= s[answer] for c in others)
                    out_list.append(2.0 / ((1 + gt) + (1 + ge)))
    assert len(schema.node_types) > 1
    assert man["metrics"]["mrr"] == pytest.approx(np.mean(rr), rel=1e-9)
    assert man["metrics"]["tc_mrr"] == pytest.approx(np.mean(tc_rr), rel=1e-9)
    assert man["counts"]["queries"] == 120


@pytest.mark.slow
def test_reads_the_training_history_into_the_report(trained):
    root, graph, model = trained
    out = str(root / "eval")
    if read_manifest(out) is None:
        assert kgops("evaluate", "--model", model, "--graph", graph, "--out", out,
                     "--max-queries", "60") == 0
    history = json.loads(Path(model, "history.json").read_text())
    assert len(history) == 1
    page = Path(out, "report.html").read_text()
    assert "Training curves" in page and "recorded no per-epoch history" not in page


@pytest.mark.slow
def test_bad_inputs_exit_2_with_a_clear_message(tmp_path, trained, capsys):
    root, graph, model = trained
    out = str(tmp_path / "e")

    def fails(model_uri: str, *expected: str) -> None:
        assert kgops("evaluate", "--model", model_uri, "--graph", graph, "--out", out) == 2
        err = capsys.readouterr().err
        assert all(e in err for e in expected) and "Traceback" not in err, err[-2000:]
        assert read_manifest(out) is None

    fails(graph, "holds a graph (kgops import / synth), not a model (kgops train)")
    fails(str(tmp_path / "nope"), "has no _manifest.json")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(model, corrupt)
    (corrupt / "model.pt").write_bytes(b"not a checkpoint")
    fails(str(corrupt), "model.pt")
