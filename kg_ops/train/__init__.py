"""Distributed training (``kgops train``): Ray Train workers, one per partition.

``loop`` is the worker loop, ``negatives`` the type-constrained negative sampler,
``validation`` the per-epoch sampled validation MRR, ``checkpoints`` the checkpoint files and
``cli`` the command and the driver (:func:`kg_ops.train.cli.train`).
"""
