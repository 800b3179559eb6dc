"""``kgops evaluate``: filtered link-prediction metrics, AUC, report and embedding export.

``kgops --force evaluate ...`` recomputes even when a complete identical run exists."""

from __future__ import annotations

import argparse

HELP = ("Evaluate a trained model: filtered MRR/Hits@k (both directions, realistic ties), "
        "ROC-AUC vs type-constrained negatives, HTML report, embeddings as Parquet.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="URI of a `kgops train` output directory")
    p.add_argument("--graph", required=True, help="URI of the graph the model was trained on")
    p.add_argument("--out", required=True, help="output URI (local path, file:// or s3://)")
    p.add_argument("--inductive", action="store_true",
                   help="--graph is another version of the model's graph (e.g. the full_graph "
                        "of `kgops split-entities`): entities are matched by key and new ones "
                        "embedded from their attributes and neighbours, as `kgops embed` does")
    p.add_argument("--features", default=None,
                   help="with --inductive: --graph's features encoded with the model's "
                        "encoders (default: the model's encoders applied here)")
    p.add_argument("--split", choices=("test", "valid"), default="test")
    p.add_argument("--batch-size", type=int, default=None,
                   help="ranking queries per batch (default: from --memory-mib)")
    p.add_argument("--memory-mib", type=float, default=256.0,
                   help="working-memory budget for one batch of scores (default 256)")
    p.add_argument("--embed-batch-size", type=int, default=65536,
                   help="entities per batch during full-graph inference")
    p.add_argument("--max-queries", type=int, default=None,
                   help="evaluate a seeded random subset of this many triples (recorded)")
    p.add_argument("--auc-negatives", type=int, default=1,
                   help="type-constrained negatives per positive for ROC-AUC (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")


def run(args: argparse.Namespace) -> int:
    import torch

    from kg_ops.evaluate.run import evaluate_model
    from kg_ops.manifest import require_manifest
    from kg_ops.models.trained import load_trained

    if args.threads:
        torch.set_num_threads(args.threads)
    require_manifest(args.model, "train")
    trained = load_trained(args.model)
    if args.inductive:
        from kg_ops.models.inductive import for_graph

        trained, _ = for_graph(trained, args.graph, args.features)
    evaluate_model(trained, model_uri=args.model, graph_uri=args.graph, out=args.out,
                   split=args.split, batch_size=args.batch_size, memory_mib=args.memory_mib,
                   max_queries=args.max_queries, seed=args.seed,
                   auc_negatives=args.auc_negatives, embed_batch_size=args.embed_batch_size)
    return 0
