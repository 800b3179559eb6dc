"""``kgops embed``: embeddings of a (possibly newer) graph version with a trained model."""
