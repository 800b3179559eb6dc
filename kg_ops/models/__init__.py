"""GNN link-prediction models: an attribute-aware input layer, a relational GNN encoder (RGCN or
relation-attention GCN) and a factorisation decoder (DistMult, ComplEx).

``link_predictor`` ties them together and is what training saves; ``trained`` loads a training
artifact for inference and evaluation.
"""

from kg_ops.models.link_predictor import LinkPredictor, ModelConfig

__all__ = ["LinkPredictor", "ModelConfig"]
