"""``kgops synth`` options."""

from __future__ import annotations

import dataclasses

from kg_ops.config.options import ConfigError, StageConfig, option

MIN_NODES = 50    # every node type gets members


@dataclasses.dataclass(frozen=True, kw_only=True)
class SynthConfig(StageConfig):
    """Generate a synthetic enterprise knowledge graph with latent communities."""

    stage = "synth"

    nodes: int = option(minimum=MIN_NODES, help=f"number of nodes (>= {MIN_NODES})")
    edges: int = option(minimum=1, help="number of distinct edges")
    seed: int = option(0, help="random seed")
    out: str = option(help="output graph URI (path, file:// or s3://)", recorded=False)
    communities: int | None = option(None, minimum=1, help="latent communities (default: "
                                     "nodes/2000, between 4 and 2000)")
    within: float = option(0.8, minimum=0, maximum=1, help="probability that an edge stays "
                           "inside its head's community")
    text_fraction: float = option(1.0, minimum=0, maximum=1, help="share of nodes that get a "
                                  "text value; the rest are null (lower it to bound "
                                  "text-encoding time on huge graphs)")
    missing_fraction: float = option(0.02, minimum=0, maximum=1, help="share of missing "
                                     "(null) values per attribute")

    def validate(self) -> None:
        if self.communities is not None and self.communities > self.nodes:
            raise ConfigError(f"--communities {self.communities}: must be between 1 and "
                              f"--nodes ({self.nodes})")
