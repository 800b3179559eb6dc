"""Attribute encoding: fit scikit-learn encoders and a BERT text encoder once over all nodes, then
transform on Ray workers that write feature blocks straight to the artifact store.

``features`` (format + loader) is the contract the partition and training stages read."""

from kg_ops.encode.features import FeatureBlock, load_feature_blocks

__all__ = ["FeatureBlock", "load_feature_blocks"]
