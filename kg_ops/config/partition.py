"""``kgops partition`` options."""

from __future__ import annotations

import dataclasses

from kg_ops.config.options import StageConfig, option

METHODS = ("metis", "random")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PartitionConfig(StageConfig):
    """Partition the training graph into self-sufficient K-hop partitions."""

    stage = "partition"

    graph: str = option(help="graph artifact URI (kgops import/synth)", recorded=False)
    parts: int = option(minimum=1, help="number of partitions P")
    out: str = option(help="output URI (local path or s3://)", recorded=False)
    hops: int = option(2, minimum=1, help="GNN layers K to expand for")
    fanout: str = option("25,10", help="neighbours kept per node per hop, comma separated, -1 = "
                         "all (one value = same for every hop; write a leading -1 as "
                         "--fanout=-1,-1)")
    method: str = option("metis", choices=METHODS, help="edge partitioner")
    seed: int = option(0, help="seed of METIS, owner order, sampling")
    features: str | None = option(None, recorded=False,
                                  help="encode stage URI; recorded so workers load their "
                                       "feature rows")
    plan_steps: int = option(6, minimum=0, recorded=False,
                             help="training steps timed (twice, in a fresh process) on the "
                                  "largest partition to predict each worker's epoch time and "
                                  "peak memory with `kgops train`'s defaults (metrics.plan of "
                                  "the manifest; 0 = skip)")
