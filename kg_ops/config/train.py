"""``kgops train`` options: the single home of each training option.

Adding an option: one field here, plus the code that uses it (the worker reads it from the
:class:`TrainConfig` it receives whole).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kg_ops.config.options import StageConfig, option

GNN_MODELS = ("rgcn", "relgnn")
# Shallow KGE models: no message passing, the entity embedding goes straight to the decoder
# of the same name (the yardstick every GNN is measured against).
SHALLOW_MODELS = ("complex", "distmult")
MODELS = GNN_MODELS + SHALLOW_MODELS
DECODERS = ("distmult", "complex")
LOSSES = ("bce", "softmax", "1vsall")
OPTIMIZERS = ("adagrad", "adam")
ATTRIBUTE_INPUTS = ("add", "replace")     # how encoded attributes enter (models/attributes.py)
PRESETS = ("paper",)

# The learning rate of each optimiser in the default recipe (benchmarks/bench_train.py).
DEFAULT_LR = {"adagrad": 0.1, "adam": 0.001}
# Per-model defaults of the default recipe (lr None: the optimiser's DEFAULT_LR).
MODEL_DEFAULTS: dict[str, dict[str, float | None]] = {
    m: {"lr": None, "weight_decay": 0.0, "regularization": 0.0} for m in MODELS}
# ... and of the published system (issue 6); RGCN's regularisation follows PyG's.
PAPER_MODEL_DEFAULTS: dict[str, dict[str, float | None]] = {
    "complex": {"lr": 0.001, "weight_decay": 0.0, "regularization": 0.0},
    "distmult": {"lr": 0.001, "weight_decay": 0.0, "regularization": 0.0},
    "rgcn": {"lr": 0.01, "weight_decay": 0.0, "regularization": 0.01},
    "relgnn": {"lr": 0.001, "weight_decay": 1e-4, "regularization": 0.001},
}
DEFAULT_NEGATIVES = {"bce": 1, "softmax": 512, "1vsall": 1}   # 1vsall: every entity

# ``--preset paper``: the published system's recipe. It sets each of these options that is
# left at its default (an option given explicitly wins); the per-model learning rate and
# regularisation come from PAPER_MODEL_DEFAULTS.
PAPER_RECIPE: dict[str, Any] = {
    "loss": "bce", "optimizer": "adam", "batch_size": 256, "embedding_dim": 64, "hidden_dim": 64,
    "out_dim": 32, "decoder": "distmult", "dropout": 0.2, "residual": False,
    "residual_gate": False, "reciprocal": False, "entity_dropout": 0.0,
    "relation_dropout": 0.0, "n3": 0.0, "label_smoothing": 0.0, "init_scale": 0.0,
    "relation_prediction": 0.0, "lr_decay": 1.0,
    "lr_patience": 0, "patience": 5, "epochs": 20, "attribute_input": "replace",
    "precision": "fp32",
}


@dataclasses.dataclass(frozen=True)
class TrainConfig(StageConfig):
    """Train an RGCN or relation-attention GCN link predictor (or a shallow ComplEx /
    DistMult) with Ray Train."""

    stage = "train"

    partitions: str = option(help="URI of a `kgops partition` output", recorded=False)
    out: str = option(help="output URI (local path, file:// or s3://)", recorded=False)
    preset: str | None = option(None, choices=PRESETS, help="paper: the published system's "
                                "recipe (bce, 64/64/32, DistMult, published learning rates "
                                "and dropout) for every option left at its default")
    tuned: str | None = option(None, recorded=False, help="a `kgops tune` output: its best "
                               "recipe for every option left at its default (the tune run "
                               "is recorded as an input)")
    model: str = option("rgcn", choices=MODELS, help="GNN encoder, or complex / distmult: "
                        "a shallow KGE model (no message passing)")
    workers: int | None = option(None, minimum=1, help="Ray Train workers; must equal the "
                                 "number of partitions (default: the number of partitions)")
    epochs: int = option(40, minimum=1, help="maximum epochs")
    limit_steps: int = option(0, minimum=0, help="train each epoch on its first N steps only "
                              "(0 = the whole epoch): a quick check of a recipe, or of its "
                              "throughput on a large graph; the epoch's edges/s and step times "
                              "are those of the steps it ran")
    resume: str | None = option(None, help="checkpoint (.pt URI) or earlier training output "
                                "to continue from; training continues up to --epochs in total")
    init_from: str | None = option(
        None, recorded=False, help="warm start: an earlier `kgops train` output (of an earlier "
        "graph version); weights mapped by entity key, new entities initialised as in `kgops "
        "embed`. Falls back to training from scratch past the drift guard (see --max-drift, "
        "--retrain-every); the manifest says which")
    max_drift: float = option(0.2, minimum=0, recorded=False, help="with --init-from: train "
                              "from scratch when (new + removed) entities or (added + removed) "
                              "training edges exceed this fraction")
    retrain_every: int = option(7, minimum=0, recorded=False, help="with --init-from: train "
                                "from scratch when this run would be the N-th in a row "
                                "warm-started (0 = never)")
    warm_patience: int = option(2, minimum=0, recorded=False, help="with a warm start taken: "
                                "early-stopping patience instead of --patience (the start is "
                                "validated as epoch 0 and kept when no epoch beats it; 0 = off)")
    warm_fold_in_steps: int = option(0, minimum=0, recorded=False,
                                     help="with a warm start taken: fold-in steps fitting "
                                          "the new entities' rows to their edges before "
                                          "training, as `kgops embed` does (0, the default: "
                                          "their type's mean row; bench_warm_start measured "
                                          "the fold-in worse here, see the README)")
    optimizer: str = option("adagrad", choices=OPTIMIZERS,
                            help="optimiser of the entity embeddings and relation vectors: "
                                 "adagrad (tuned KGE's choice; a fraction of Adam's epochs "
                                 "on CoDEx, bench_train) or adam (--preset paper). The GNN's "
                                 "weights: Adam at --dense-lr")
    lr: float | None = option(None, minimum=0, help="learning rate of the embeddings and "
                              "relation vectors "
                              "(default: adagrad 0.1, adam 0.001; --preset paper: rgcn 0.01, "
                              "relgnn 0.001)")
    dense_lr: float | None = option(None, minimum=0, help="Adam learning rate of the dense "
                                    "weights (GNN layers; default: 0.001 "
                                    "with adagrad, --lr with adam)")
    weight_decay: float | None = option(None, minimum=0, help="default 0 (--preset paper: "
                                        "relgnn 1e-4)")
    regularization: float | None = option(
        None, minimum=0, help="L2 weight on embeddings and relation vectors (default 0; "
                              "--preset paper: rgcn 0.01, relgnn 0.001)")
    dropout: float = option(0.2, minimum=0, maximum=0.99, help="dropout")
    batch_size: int = option(1024, minimum=1, help="global batch of edges, split across "
                             "workers")
    fanout: str | None = option(None, help="neighbours per hop, e.g. 25,10 (default: the "
                                "partitions' fanouts; each must be <= the partitions' unless "
                                "they were built with -1)")
    loss: str = option("1vsall", choices=LOSSES,
                       help="1vsall: each positive ranked against every entity of the "
                            "expected type in the graph (gathered from the workers' "
                            "partitions), both directions (the tuned-KGE "
                            "objective, bench_train); softmax: against --negatives candidates "
                            "per type shared by the batch; bce: binary cross-entropy over "
                            "positives and corrupted triples (the published system)")
    negatives: int | None = option(None, minimum=1, help="type-constrained negatives: bce, per "
                                   "positive edge (default 1); softmax, candidates per node "
                                   "type shared by the batch (default 512)")
    embedding_dim: int = option(1000, minimum=1, help="input embedding size (ComplEx: "
                                "half real, half imaginary)")
    hidden_dim: int = option(128, minimum=1, help="hidden layer size")
    out_dim: int = option(1000, minimum=1, help="output embedding size")
    residual: bool = option(True, help="add each node's input embedding to the encoder "
                            "output (a skip connection; needs --embedding-dim equal to "
                            "--out-dim)")
    residual_gate: bool = option(True, help="with --residual: scale the encoder output by a "
                                 "learned scalar that starts at 0 (training starts from the "
                                 "shallow model the residual network contains)")
    reciprocal: bool = option(True, help="a second vector per relation answers head "
                              "queries (?, r, t) as (t, r^-1, ?)")
    entity_dropout: float = option(0.0, minimum=0, maximum=0.99,
                                   help="dropout on the entity embeddings the decoder scores")
    relation_dropout: float = option(0.0, minimum=0, maximum=0.99,
                                     help="dropout on the decoder's relation vectors")
    n3: float = option(0.01, minimum=0, help="weight of the N3 penalty on each query's factors "
                       "(softmax and 1vsall losses)")
    label_smoothing: float = option(0.0, minimum=0, maximum=0.99,
                                    help="label smoothing of the softmax and 1vsall losses")
    relation_prediction: float = option(
        0.0, minimum=0, help="weight of the relation-prediction term: each training edge's "
                             "relation ranked against every relation for its head and tail "
                             "(Chen et al. 2021; their CoDEx runs use 0.125)")
    init_scale: float = option(0.001, minimum=0, help="initial entity embeddings and "
                               "relation vectors uniform in [-s, s] (0: Xavier-uniform)")
    lr_decay: float = option(1.0, minimum=0.01, maximum=1.0,
                             help="multiply the learning rate by this after every "
                                  "--lr-patience epochs without a better validation MRR "
                                  "(1 = constant)")
    lr_patience: int = option(0, minimum=0, help="epochs without improvement before each "
                              "--lr-decay (0 = off)")
    attribute_input: str = option(
        "add", choices=ATTRIBUTE_INPUTS,
        help="with encoded attributes: add their projection to each entity's learned "
             "embedding (bench_attributes), or replace it (--preset paper; the learned "
             "embedding only for entities without attributes)")
    num_bases: int | None = option(4, minimum=1, help="RGCN basis decomposition")
    num_blocks: int | None = option(None, minimum=1, help="RGCN block decomposition instead "
                                    "of bases (PyG RGCNConv; slower)")
    heads: int = option(2, minimum=1, help="relation-attention heads (relgnn)")
    decoder: str = option("complex", choices=DECODERS, help="edge scoring function")
    patience: int = option(10, minimum=0, help="early stopping: epochs without a better "
                           "validation MRR (0 = off)")
    valid_triples: int = option(1000, minimum=0, help="validation triples ranked per epoch "
                                "(a seeded subset; 0 = all)")
    valid_ranking: str = option("full", choices=("full", "sampled"),
                                help="per-epoch validation MRR: full = kgops evaluate's "
                                     "filtered ranking against every entity (the graph's "
                                     "embedding table on each worker; sampled above 1 GiB); "
                                     "sampled = against --valid-candidates per type inside "
                                     "each partition (cheap, but on a Debian slice it kept "
                                     "epoch 9 where the full one kept epoch 2: test MRR 0.189 "
                                     "vs 0.261)")
    valid_candidates: int = option(200, minimum=1, help="sampled candidates per node type for "
                                   "--valid-ranking sampled")
    precision: str = option("auto", choices=("auto", "fp32", "bf16"),
                            help="bf16: the training forward's matrix products in bfloat16 "
                                 "(CPU autocast; weights, optimiser, aggregation and "
                                 "evaluation stay float32), fast on CPUs with bfloat16 units "
                                 "(AVX512-BF16, AMX) and slow elsewhere; auto: bf16 on each "
                                 "worker whose CPU has them, else fp32 (CoDEx-S: the same "
                                 "test MRR, 1.4x faster on 1 worker, 1.6x on 2); when every "
                                 "worker is bf16, the gathered embeddings and the embedding "
                                 "gradients also travel between workers as bfloat16")
    seed: int = option(0, help="random seed")
    threads: int = option(1, minimum=1, recorded=False, help="torch threads per worker")
    prefetch: int = option(1, minimum=0, recorded=False, help="batches built ahead in a "
                           "background thread while the current one trains (0 = off; the "
                           "batches are the same either way)")
    exchange: str = option("auto", choices=("auto", "gather", "dense", "owner"),
                           recorded=False,
                           help="how the embedding table's sparse gradient is averaged across "
                                "workers: gather the touched rows, all-reduce the dense table, "
                                "owner (sharded 1vsall: each row updated by the worker that "
                                "owns it and sent to the workers that read it), or auto (owner "
                                "where it applies, else the one moving fewer bytes); same "
                                "result")
    candidates: str = option("sharded", choices=("sharded", "local"),
                             help="softmax / 1vsall on several workers: sharded = each "
                                  "worker draws 1/P of the candidates (1vsall: encodes its 1/P "
                                  "of the entities, layer by layer) and all rank against all "
                                  "of them (work divides by P; 1vsall ranks against the whole "
                                  "graph); local = each draws all of them from its own "
                                  "partition")
    max_failures: int = option(2, minimum=0, recorded=False, help="worker failures Ray Train "
                               "recovers from (restart at the last checkpoint)")
    keep_checkpoints: int = option(3, minimum=1, recorded=False, help="epoch checkpoints kept "
                                   "(each also holds the best weights)")
    ray_address: str | None = option(None, recorded=False, help="Ray cluster (default: "
                                     "RAY_ADDRESS or a local Ray instance)")
    ray_storage: str | None = option(None, recorded=False, help="Ray Train's run storage "
                                     "(small pointer files; shared or s3:// on a multi-node "
                                     "cluster; default: a local temp directory)")

    def resolved(self) -> TrainConfig:
        """This config with the preset, and the per-model and per-loss defaults filled in."""
        if self.preset == "paper":
            defaults = self.defaults()
            recipe = {k: v for k, v in PAPER_RECIPE.items() if getattr(self, k) == defaults[k]}
            return self.replace(**recipe)._fill(PAPER_MODEL_DEFAULTS)
        return self._fill(MODEL_DEFAULTS)

    def _fill(self, table: dict[str, dict[str, float | None]]) -> TrainConfig:
        model = table[self.model]
        fill: dict[str, Any] = {k: model[k] for k in ("weight_decay", "regularization")
                                if getattr(self, k) is None}
        lr = self.lr if self.lr is not None else model["lr"] or DEFAULT_LR[self.optimizer]
        fill["lr"] = lr
        if self.dense_lr is None:       # the GNN's Adam: its own rate beside Adagrad
            fill["dense_lr"] = DEFAULT_LR["adam"] if self.optimizer == "adagrad" else lr
        if self.negatives is None:
            fill["negatives"] = DEFAULT_NEGATIVES[self.loss]
        if self.num_blocks is not None:
            fill["num_bases"] = None
        return self.replace(**fill)
