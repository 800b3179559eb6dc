"""``kgops embed``: embeddings for every entity of a graph with an already trained model, no
training. Entities are matched to the model's graph by key; kept ones use their learned rows,
new ones are embedded from their encoded attributes and neighbourhood through the trained GNN
(see :mod:`kg_ops.models.inductive`), their learned rows first fitted to the edges they arrive
with, the model frozen (``--fold-in-steps``, :mod:`kg_ops.models.fold_in`).

Outputs under ``--out``: ``embeddings.parquet`` (``kgops evaluate``'s export plus an
``inductive`` column), ``entity_map.parquet`` (kept / new / removed, see
:mod:`kg_ops.graph.versions`) and ``_manifest.json`` last (counts of kept, new, removed)."""

from __future__ import annotations

import argparse

from kg_ops.config.fold_in import FoldIn

HELP = ("Embed every entity of a (possibly newer) graph with a trained model, without "
        "training: kept entities by key, new ones from their attributes and neighbours.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="URI of a `kgops train` output")
    p.add_argument("--graph", required=True, help="URI of the graph to embed (any version)")
    p.add_argument("--out", required=True, help="output URI (local path, file:// or s3://)")
    p.add_argument("--features", default=None,
                   help="encode output of --graph made with `kgops encode --encoders <the "
                        "model's features>` (default: the model's encoders applied here)")
    p.add_argument("--fold-in-steps", type=int, default=FoldIn.steps,
                   help="Adagrad steps fitting the new entities' learned rows to their edges, "
                        "the trained model frozen (0: keep their type's mean learned row; "
                        f"default {FoldIn.steps})")
    p.add_argument("--fold-in-lr", type=float, default=FoldIn.lr,
                   help=f"learning rate of the fold-in (default {FoldIn.lr})")
    p.add_argument("--fold-in-context", type=float, default=FoldIn.context,
                   help="other training edges sampled per new entity's edge, standing for the "
                        "rest of the graph in the fold-in (0: the new entities' edges alone; "
                        f"default {FoldIn.context})")
    p.add_argument("--fold-in-norm-quantile", type=float, default=FoldIn.norm_quantile,
                   help="cap each new row's norm at this quantile of its type's trained rows' "
                        f"norms after every step (default {FoldIn.norm_quantile}; 1: the "
                        "longest trained row)")
    p.add_argument("--batch-size", type=int, default=65536,
                   help="entities per batch during full-graph inference")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")


def embed(model: str, graph: str, out: str, *, features: str | None = None,
          fold: FoldIn = FoldIn(), batch_size: int = 65536, force: bool = False) -> dict:
    """Run the stage; returns the manifest."""
    from kg_ops.evaluate.export import export_embeddings
    from kg_ops.manifest import Stage, require_manifest
    from kg_ops.models.inductive import NEW_ROW_INIT, for_graph
    from kg_ops.models.trained import load_trained
    from kg_ops.store import normalize

    model, graph = normalize(model), normalize(graph)
    require_manifest(graph)
    inputs = {"model": model, "graph": graph, **({"features": features} if features else {})}
    config = {"batch_size": batch_size, "fold_in": fold.to_dict()}
    with Stage("embed", out, config=config, inputs=inputs,
               force=force) as st:
        if st.reused:
            return st.manifest
        with st.phase("match"):
            inductive, table = for_graph(load_trained(model), graph, features, fold)
            st.outputs["entity_map"] = st.uri("entity_map.parquet")
            st.store.write_parquet(st.outputs["entity_map"], table)
        with st.phase("embed"):
            emb = inductive.embed_all(batch_size=batch_size)
        with st.phase("write"):
            st.outputs["embeddings"] = st.uri("embeddings.parquet")
            export_embeddings(st.outputs["embeddings"], graph, inductive.schema,
                              emb.numpy(), inductive=inductive.mapping.is_new)
        st.counts.update(inductive.mapping.counts())
        st.extra["new_entity_initial_row"] = NEW_ROW_INIT
        st.extra["neighbourhoods"] = inductive.neighbourhoods()
        st.extra["fold_in"] = inductive.fold_report
    return st.manifest


def run(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    m = embed(args.model, args.graph, args.out, features=args.features,
              fold=FoldIn(args.fold_in_steps, args.fold_in_lr, args.fold_in_context,
                        args.fold_in_norm_quantile), batch_size=args.batch_size,
              force=args.force)
    c = m["counts"]
    print(f"embedded {c['new_entities']} entities: {c['kept']} kept, {c['new']} new "
          f"(inductive), {c['removed']} of the model's removed -> {m['outputs']['embeddings']}")
    return 0
