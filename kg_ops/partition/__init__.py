"""Edge partitioning with self-sufficient K-hop expansion (``kgops partition``).

``metis`` assigns nodes to parts and owners to edges, ``expand`` adds to each part the sampled
K-hop neighbourhood its core nodes need, ``io`` stores and loads partitions, ``cli`` is the
command. Training workers only need :func:`kg_ops.partition.io.load_partition`.
"""

from kg_ops.partition.io import Partition, load_partition, load_partitions_manifest

__all__ = ["Partition", "load_partition", "load_partitions_manifest"]
