"""Sharded 1vsall encoded layer by layer: each worker computes only the entities it owns.

With ``1vsall`` every entity is a candidate, so every step encodes every entity. Encoding a
worker's share through a sampled K-hop computation graph (seeds = its share) does not divide
by the workers: the K-hop neighbourhood of half of CoDEx-M's entities is most of the graph (a
2-worker step computed 13,011 + 10,076 layer outputs where one worker computes 17,050 twice),
and the epoch went only 1.32x faster on 2 workers.

Here each worker computes GNN layer ``l`` for the entities it owns
(:func:`~kg_ops.train.candidates.balanced_owners`) and one all-gather of the layer's output
gives every worker every entity's representation as layer ``l + 1``'s input (the halo exchange
of distributed full-graph GNN training): every layer's work is 1/P of the whole. Backward
sums each gathered block's gradient on its owner
(:meth:`~kg_ops.train.candidates.CandidateShards.gather_rows`). The final layer is not
gathered: each worker scores every worker's queries against the entities it owns
(:mod:`kg_ops.train.owner_scoring`). The positives are rows of the table the final layer's
blocks make in rank order; on one process (the cost planner) that table is gathered and
scored whole.

The messages are the ones the 1-worker computation graph samples: the sampler is globally
deterministic (:mod:`kg_ops.sampling`) and a partition holds its core nodes' sampled messages,
so with the training seed they are the same in every partition and every step. They are
sampled once, here, not per step.
"""

from __future__ import annotations

import numpy as np
import torch

from kg_ops.train.candidates import CandidateShards


class LayerwiseEncoding:
    """Every entity's embedding, computed 1/P per worker, and the 1vsall loss against them.

    ``owned``: this worker's entities (partition-local ids, ``types`` their node types);
    ``fanouts``: training's, layer ``i`` of ``K`` uses ``fanouts[K-1-i]`` as
    :meth:`~kg_ops.models.link_predictor.LinkPredictor.encode_full` does. Constructing it is
    a collective (one all-gather of every worker's owned ids), except with ``layout``: the
    gathered table's ``(global ids, node types)`` given, the owned entities first, on one
    process (``shards.world == 1``: the cost planner times a P-worker step this way, the
    other workers' rows left zero)."""

    def __init__(self, csr, owned: np.ndarray, types: np.ndarray, fanouts: list[int],
                 seed: int, num_layers: int, shards: CandidateShards, num_nodes: int,
                 layout: tuple[np.ndarray, np.ndarray] | None = None):
        from kg_ops.sampling import sample_messages, unique_int

        self.shards, m = shards, len(owned)
        if m > shards.slots:
            raise ValueError(f"{m} owned entities exceed the {shards.slots} slots of a shard")
        if layout is None:
            self.gid, self.ntype = shards.gather_ids(csr.to_global(owned), types)
        else:
            self.gid, self.ntype = (torch.as_tensor(np.asarray(a, dtype=np.int64))
                                    for a in layout)
        # The 1-vs-all table: the gathered rows without the shards' padding, each entity
        # once (owners are disjoint); global id -> its row.
        real = (self.gid >= 0).numpy()
        self.keep = None if real.all() else torch.from_numpy(np.flatnonzero(real))
        self.rows = np.full(num_nodes, -1, dtype=np.int64)
        self.rows[self.gid.numpy()[real]] = np.arange(int(real.sum()))
        # This worker's rows of the table: the real rows of the blocks before its own.
        self.num_rows = int(real.sum())
        self.offset = int(real[:shards.rank * shards.slots].sum())
        gathered = np.full(num_nodes, -1, dtype=np.int64)      # ... and its gathered row
        gathered[self.gid.numpy()[real]] = np.flatnonzero(real)
        self.tail_ok, self.head_ok = _type_masks(self.ntype[torch.from_numpy(real)], shards)

        self.owned = m
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        for i in range(num_layers):
            pos, seg = sample_messages(csr, owned, int(fanouts[len(fanouts) - 1 - i]), seed)
            src = csr.src[pos]
            if i == 0:       # the inputs: the owned entities first, then the other senders
                others = np.setdiff1d(unique_int(src), owned, assume_unique=True)
                self.inputs = np.concatenate([owned, others])
                where = np.full(csr.num_nodes, -1, dtype=np.int64)
                where[self.inputs] = np.arange(len(self.inputs))
                src_rows = where[src]
            else:            # the previous layer's gathered output
                src_rows = gathered[csr.to_global(src)]
                if (src_rows < 0).any():
                    bad = int(csr.to_global(src[src_rows < 0])[0])
                    raise ValueError(f"entity {bad} sends a sampled message but no worker owns "
                                     "it: the partitions do not cover the graph; repartition")
            self.layers.append((torch.from_numpy(np.stack([src_rows, seg])),
                                torch.from_numpy(csr.rel[pos])))
        if num_layers == 0:
            self.inputs = np.asarray(owned, dtype=np.int64)
        self.input_gid = csr.to_global(self.inputs)

    def positive_rows(self, gid: np.ndarray) -> np.ndarray:
        """Rows of the 1-vs-all table of the positives' ``[head, tail]`` global ids."""
        rows = self.rows[gid]
        if (rows < 0).any():
            raise ValueError(f"entity {int(gid[rows < 0][0])} ends a training edge but no "
                             "worker owns it: the partitions do not cover the graph; "
                             "repartition")
        return rows

    def encode_own(self, model, features=None) -> torch.Tensor:
        """``[m, d]``: the final embeddings of this worker's owned entities (the layers
        before the last are gathered: each needs every entity's previous layer)."""
        x = model.inputs(torch.from_numpy(self.inputs), torch.from_numpy(self.input_gid),
                         features)
        own_x = x[:self.owned]
        h_src, h_own = x, own_x
        for i, (edge_index, edge_type) in enumerate(self.layers):
            h_own = model.encoder.layer(i, h_src, h_own, edge_index, edge_type)
            if i < len(self.layers) - 1:
                h_src = self.shards.gather_rows(h_own)
        return model.skip(h_own, own_x) if self.layers else own_x

    def encode(self, model, features=None) -> torch.Tensor:
        """``[P * slots, d]``: every worker's owned entities' embeddings (zero padding rows)."""
        return self.shards.gather_rows(self.encode_own(model, features))

    def table(self, model, features=None) -> torch.Tensor:
        """``[N, d]``: the 1-vs-all table, every entity once (:meth:`encode` without the
        padding rows)."""
        c = self.encode(model, features)
        return c if self.keep is None else c.index_select(0, self.keep)

    def loss(self, model, batch, features=None) -> torch.Tensor:
        """The 1vsall loss of this worker's positives (``batch.triples``: rows of the table)
        against every entity: on several workers scored where the entities live
        (:mod:`kg_ops.train.owner_scoring`), on one against the table."""
        if self.shards.world > 1:
            return self._owner_loss(model, batch, features)
        table = self.table(model, features)
        if batch.size == 0:      # still part of the collectives, contributes nothing
            return table.sum() * 0.0
        rel = batch.triples[:, 1]
        return model.table_loss(table, batch.triples,
                                None if self.tail_ok is None else self.tail_ok[rel],
                                None if self.head_ok is None else self.head_ok[rel])

    def _owner_loss(self, model, batch, features=None) -> torch.Tensor:
        from kg_ops.train.owner_scoring import gather_positives, owner_table_loss

        drop = model.training and model.decoder.drop.p > 0
        seed = int(torch.randint(2 ** 62, ())) if drop else 0
        times, rank = self.shards.times, self.shards.rank
        triples, starts, seed = gather_positives(batch.triples, times, seed)
        return owner_table_loss(model, self.encode_own(model, features), self.offset,
                                self.num_rows, triples, slice(starts[rank], starts[rank + 1]),
                                self.tail_ok, self.head_ok, times, self.shards.wire,
                                seed if drop else None)


def _type_masks(types: torch.Tensor, shards: CandidateShards
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``[R, N]`` per relation: which of the table's entities (``types``, their node types)
    have the type it expects at its tail / head; ``None`` where every entity has it for every
    relation (one node type: the masks would cost two passes over each step's scores)."""
    out = []
    for expected in (shards.tail_type, shards.head_type):
        ok = types[None, :] == expected[:, None]
        out.append(None if bool(ok.all()) else ok)
    return out[0], out[1]
