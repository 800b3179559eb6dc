"""``kgops evaluate``: filtered link-prediction metrics, AUC, report and embedding export.

``kgops --force evaluate ...`` recomputes even when a complete identical run exists."""

from __future__ import annotations

import argparse

from kg_ops.config import EvaluateConfig

HELP = ("Evaluate a trained model: filtered MRR/Hits@k (both directions, realistic ties), "
        "ROC-AUC vs type-constrained negatives, HTML report, embeddings as Parquet.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    EvaluateConfig.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    import torch

    from kg_ops.evaluate.run import evaluate_model
    from kg_ops.manifest import require_manifest
    from kg_ops.models.trained import load_trained

    config = EvaluateConfig.from_args(args)
    if config.threads:
        torch.set_num_threads(config.threads)
    require_manifest(config.model, "train")
    trained = load_trained(config.model)
    if config.inductive:
        from kg_ops.models.inductive import for_graph

        trained, _ = for_graph(trained, config.graph, config.features, config.fold_in)
    evaluate_model(trained, config, force=args.force)
    return 0
