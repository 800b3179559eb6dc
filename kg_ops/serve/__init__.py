"""Link-prediction service: a model version's embeddings answering top-k and scoring queries
over HTTP on Ray Serve (``kgops serve``).

* :mod:`kg_ops.serve.version`: what a servable model version is (an evaluate output);
* :mod:`kg_ops.serve.index`: the in-process engine (exact, type-constrained, filtered top-k);
* :mod:`kg_ops.serve.app`: the Ray Serve application (FastAPI ingress on the model replicas,
  batched top-k, in-replica version swaps) and the service registry;
* :mod:`kg_ops.serve.deploy`: zero-downtime deploys, rollback and the deployment manifest.
"""
