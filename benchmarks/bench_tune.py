"""``kgops tune`` on CoDEx-S: the trials, the best recipe, and its test MRR next to the default
recipe's (issue #12).

Imports CoDEx-S from ``../shared/datasets`` (the copy shipped in kg_ops otherwise), builds one
partition (each trial one Ray Train worker, so the 2 cores run two trials at a time), runs
``kgops tune`` with the default space within ``--budget-s``, evaluates the best trial's model
(filtered test MRR, both directions, all entities) and, side by side in the same run, trains
and evaluates the default recipe with the same epoch limit (``--no-default``: skipped).

Run under the CPU lock: ``flock /tmp/kgops-cpu.lock .venv/bin/python benchmarks/bench_tune.py``
(``--budget-s 900`` keeps the hold near 30 minutes on the shared 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import DATASETS, write_results  # noqa: E402

KGOPS = [sys.executable, "-m", "kg_ops.cli"]


def kgops(*args: str) -> float:
    t = time.perf_counter()
    subprocess.run([*KGOPS, *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def manifest(uri: str | Path) -> dict:
    return json.loads((Path(uri) / "_manifest.json").read_text())


def eval_metrics(model: str, graph: str, out: Path) -> dict:
    wall = kgops("evaluate", "--model", model, "--graph", graph, "--out", str(out))
    m = manifest(out)["metrics"]
    return {k: round(m[k], 4) for k in ("mrr", "hits@1", "hits@10", "mrr_head", "mrr_tail")
            } | {"eval_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, default=900)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=20, help="maximum epochs of every trial "
                    "and of the default-recipe run")
    ap.add_argument("--default", action=argparse.BooleanOptionalAction, default=True,
                    help="also train and evaluate the default recipe (--no-default: compare "
                         "with bench_train's default-recipe row instead)")
    ap.add_argument("--work", default="/tmp/kgops-bench-tune")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    graph, parts = str(work / "graph"), str(work / "parts1")
    root = ["--root", str(DATASETS / "codex")] if (DATASETS / "codex").is_dir() else []
    kgops("import", "codex", *root, "--size", "s", "--out", graph)
    kgops("partition", "--graph", graph, "--parts", "1", "--out", parts)

    tuned = work / "tune"
    tune_s = kgops("--force", "tune", "--partitions", parts, "--out", str(tuned),
                   "--budget-s", str(args.budget_s), "--trials", str(args.trials),
                   "--epochs", str(args.epochs))
    search = manifest(tuned)
    best = search["best"]
    results = {
        "tune": {"command": f"kgops tune --partitions P --out O --budget-s {args.budget_s:g} "
                            f"--trials {args.trials} --epochs {args.epochs}",
                 "wall_s": round(tune_s, 1), "search_s": search["timings"]["search_s"],
                 **{k: v for k, v in search["metrics"].items() if k != "valid_mrr_kind"}},
        "trials": [{k: t[k] for k in ("trial_id", "status", "epochs", "best_valid_mrr",
                                      "options")} for t in search["trials"]],
        "best": {"trial_id": best["trial_id"], "valid_mrr_sampled": best["valid_mrr"],
                 "options": best["options"], "epochs": best["epochs"],
                 "test": eval_metrics(best["model"], graph, work / "eval-tuned")},
    }
    if args.default:
        results.update(default_recipe(parts, graph, work, args.epochs, results))
    else:
        results["default recipe"] = ("not run here (--no-default): see the default-recipe "
                                     "rows of benchmarks/results/bench_train.json")
    results["notes"] = ("CoDEx-S, 1 partition (1 Ray Train worker per trial, 2 trials at a "
                        "time), measured under /tmp/kgops-cpu.lock on the shared 2-core "
                        "machine; test MRR filtered, both directions, realistic ties")
    write_results("bench_tune", results)


def default_recipe(parts: str, graph: str, work: Path, epochs: int, results: dict) -> dict:
    default = work / "default"
    train_s = kgops("--force", "train", "--partitions", parts, "--out", str(default),
                    "--epochs", str(epochs))
    dm = manifest(default)["metrics"]
    row = {"command": f"kgops train --partitions P --out M --epochs {epochs}",
           "wall_s": round(train_s, 1), "epochs": dm["epochs"],
           "valid_mrr_sampled": round(dm["best_valid_mrr"], 4),
           "test": eval_metrics(str(default), graph, work / "eval-default")}
    return {"default recipe": row, "tuned - default test MRR": round(
        results["best"]["test"]["mrr"] - row["test"]["mrr"], 4)}


if __name__ == "__main__":
    main()
