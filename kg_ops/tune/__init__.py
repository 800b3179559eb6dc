"""``kgops tune``: the training recipe searched with Ray Tune, each trial a Ray Train run."""
