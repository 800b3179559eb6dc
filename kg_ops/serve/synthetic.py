"""A servable version with random embeddings, for load-testing a service at a size nobody
trains on a laptop (the 2.8M-node synthetic graph) and for tests that compare the service with
a brute-force ranking of known vectors.

It writes what ``kgops train`` and ``kgops evaluate`` would: a training artifact holding a
decoder (``model_config.json``, ``model.pt``) and an evaluate output with
``embeddings.parquet`` in the export format, each with its manifest. Both manifests say the
vectors are random (``config.synthetic``) and the evaluation carries no metrics.
"""

from __future__ import annotations

import io

import numpy as np

from kg_ops.graph.kg import load_schema
from kg_ops.manifest import Stage
from kg_ops.store import join

NOTE = "random embeddings and decoder (load testing): not trained, not evaluated"


def write_random_version(graph_uri: str, out: str, *, dim: int = 64,
                         decoder: str = "complex", seed: int = 0,
                         reciprocal: bool = False) -> str:
    """Write ``out/model`` and ``out/evaluation`` for ``graph_uri``; returns the evaluation
    URI (what ``kgops serve --model`` takes)."""
    import torch

    from kg_ops.evaluate.export import export_embeddings
    from kg_ops.models.decoders import DECODERS
    from kg_ops.models.link_predictor import ModelConfig

    schema = load_schema(graph_uri)
    model_uri, eval_uri = join(out, "model"), join(out, "evaluation")
    config = {"synthetic": NOTE, "dim": dim, "decoder": decoder, "seed": seed,
              "reciprocal": reciprocal}
    torch.manual_seed(seed)
    dec = DECODERS[decoder](schema.num_relations, dim, reciprocal=reciprocal)
    cfg = ModelConfig(model="rgcn", num_nodes=schema.num_nodes,
                      num_relations=schema.num_relations, embedding_dim=dim, hidden_dim=dim,
                      out_dim=dim, decoder=decoder, reciprocal=reciprocal)
    with Stage("train", model_uri, config=config, inputs={"graph": graph_uri},
               announce=False) as st:
        st.store.write_json(st.uri("model_config.json"), {**cfg.to_dict(), "graph": graph_uri})
        st.store.write_json(st.uri("history.json"), [])
        buf = io.BytesIO()
        torch.save({f"decoder.{k}": v for k, v in dec.state_dict().items()}, buf)
        st.store.write_bytes(st.uri("model.pt"), buf.getvalue())
        st.outputs["model"] = st.uri("model.pt")
    with Stage("evaluate", eval_uri, config=config,
               inputs={"model": model_uri, "graph": graph_uri}, announce=False) as st:
        rng = np.random.default_rng(seed)
        emb = np.empty((schema.num_nodes, dim), dtype=np.float32)
        for start in range(0, schema.num_nodes, 1 << 20):  # bounded temporaries
            stop = min(schema.num_nodes, start + (1 << 20))
            emb[start:stop] = rng.standard_normal((stop - start, dim), dtype=np.float32)
        emb /= np.sqrt(dim)
        st.outputs["embeddings"] = st.uri("embeddings.parquet")
        export_embeddings(st.outputs["embeddings"], graph_uri, schema, emb)
        st.counts["entities"] = schema.num_nodes
    return eval_uri
