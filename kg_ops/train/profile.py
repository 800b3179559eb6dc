"""Where a training step's time goes: one step split into its phases, timed separately.

Phases, in the order the loop runs them: ``sample`` (negatives or candidates and the sampled
K-hop computation graph: :class:`kg_ops.train.batches.BatchBuilder`, which the loop overlaps
with the previous step by prefetching), ``gather`` (the input representations of the
computation graph's nodes), ``forward`` (the GNN layers), ``loss``, ``backward``, ``coalesce``
(the local half of the gradient exchange: merging the embedding gradient's duplicate rows;
the collectives themselves need other workers) and ``optimizer``. Sizes of the step (nodes,
messages per layer, embedding rows touched) come with the times.
"""

from __future__ import annotations

import time

import numpy as np
import torch

PHASES = ("sample", "gather", "forward", "loss", "backward", "coalesce", "optimizer")


def _loss(model, z, batch):
    if batch.cand is not None:
        return model.softmax_loss(z, batch.triples, batch.cand, batch.tail_ok, batch.head_ok)
    n = batch.size
    return model.loss(z, batch.triples[:n], batch.triples[n:])


def profile_steps(model, opt, builder, edges: np.ndarray, batch: int, steps: int,
                  warmup: int = 1, seed: int = 0, precision: str = "fp32") -> dict:
    """Median seconds of every phase over ``steps`` real steps at local batch ``batch``
    (``precision``: as ``kgops train --precision``, the forward phases under autocast)."""
    from kg_ops.train.batches import autocast
    from kg_ops.train.optim import sparse_parameters

    rng = np.random.default_rng(seed)
    table = sparse_parameters(model)
    rows: dict[str, list] = {p: [] for p in PHASES}
    sizes: dict[str, list] = {"nodes": [], "messages": [], "touched_rows": []}
    for i in range(warmup + steps):
        pos = edges[rng.integers(0, len(edges), batch)]
        t = [time.perf_counter()]
        b = builder.build(pos, rng)
        t.append(time.perf_counter())
        opt.zero_grad()
        cg = b.cg
        n = cg.sizes[-1]
        x = model.inputs(torch.from_numpy(cg.nodes[:n]), torch.from_numpy(cg.global_nodes[:n]),
                         None)
        t.append(time.perf_counter())
        with autocast(precision):
            h = x
            for k, (edge_index, edge_type, n_src, n_dst) in enumerate(b.layers):
                h = model.encoder.layer(k, h[:n_src], h[:n_dst], edge_index, edge_type)
            z = model.skip(h, x[:len(h)])
            t.append(time.perf_counter())
            loss = _loss(model, z, b)
        t.append(time.perf_counter())
        loss.backward()
        t.append(time.perf_counter())
        touched = 0
        for p in table:
            p.grad = p.grad.coalesce()
            touched += int(p.grad.indices().shape[1])
        t.append(time.perf_counter())
        opt.step()
        t.append(time.perf_counter())
        if i >= warmup:
            for name, a, c in zip(PHASES, t[:-1], t[1:], strict=True):
                rows[name].append(c - a)
            sizes["nodes"].append(n)
            sizes["messages"].append(sum(int(e.shape[1]) for e, _, _, _ in b.layers))
            sizes["touched_rows"].append(touched)
    out = {name: float(np.median(v)) for name, v in rows.items()}
    out["step"] = float(np.median(np.sum([rows[p] for p in PHASES], axis=0)))
    out.update({k: float(np.mean(v)) for k, v in sizes.items()})
    out["local_batch"] = batch
    return out
