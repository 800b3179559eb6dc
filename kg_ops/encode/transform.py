"""Distributed transform: Ray actors encode row ranges and write their shards themselves.

Each worker is an actor (``ShardEncoder``) that receives the fitted encoders once, loads the text
model once, takes the tabular columns from the object store (the driver read them anyway to fit;
placed once, read zero-copy) and reads the text columns from the artifact store itself (cached
per node type), and writes one Parquet shard per (attribute, row range) straight to the store. The driver only
hands out row ranges and gathers shard manifests (paths, row counts, id ranges, timings): the
feature arrays never pass through it. Keeping two items in flight per worker hides the round trip.

``encode_in_process`` runs the very same per-item code in this process over whole tables: the
reference the distributed output is tested against.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kg_ops.encode.features import (
    dense_table,
    indicator_table,
    shard_path,
    storage_for,
    write_shard,
)
from kg_ops.encode.fit import (
    Encoded,
    EncodeError,
    FittedEncoder,
    _column_lookup,
    encode_column,
    prepare,
)
from kg_ops.errors import root_cause
from kg_ops.graph.schema import GraphSchema
from kg_ops.progress import Progress
from kg_ops.store import join

log = logging.getLogger(__name__)

PHASES = ("tabular", "text")


@dataclass
class WorkItem:
    """Rows ``[start, stop)`` of one node table, for some of its attributes, in one phase."""

    node_type: str
    start: int
    stop: int
    attributes: list[str]
    phase: str

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass
class Plan:
    items: dict[str, list[WorkItem]] = field(default_factory=lambda: {p: [] for p in PHASES})

    def rows(self, phase: str) -> int:
        return sum(i.rows for i in self.items[phase])


def _cuts(cost: np.ndarray, parts: int) -> np.ndarray:
    """Boundaries ``[0, ..., n]`` of at most ``parts`` contiguous row ranges of about equal total
    ``cost`` (equal row counts when there is no cost at all)."""
    n = len(cost)
    parts = max(1, min(parts, n))
    cum = np.cumsum(cost, dtype=np.float64)
    if not n or cum[-1] <= 0:
        inner = np.linspace(0, n, parts + 1).round().astype(np.int64)[1:-1]
    else:
        inner = np.searchsorted(cum, cum[-1] * np.arange(1, parts) / parts, side="right")
    return np.unique(np.concatenate([[0], np.clip(inner, 1, n - 1 if n > 1 else 1), [n]]))


def plan_items(schema: GraphSchema, encoders: list[FittedEncoder], workers: int,
               text_chunk: int = 512, tabular_chunk: int = 250_000,
               text_costs: dict[str, np.ndarray] | None = None,
               min_tabular_cells: int = 500_000) -> Plan:
    """Row ranges per phase, sized by work so the workers finish together.

    Text: at least ~8 items per worker and about ``text_chunk`` rows each, cut at equal total
    token count (``text_costs``: tokens per row, from :func:`text_token_costs`) rather than equal
    rows, so no worker is left with the long descriptions. Tabular: items of equal size across
    all node types, ~2 per worker, but none smaller than ``min_tabular_cells`` rows x attributes
    (a sub-second job is not worth splitting: each item pays a dispatch and one shard write per
    attribute) nor larger than ``tabular_chunk`` rows (memory). Items are listed largest first.
    """
    plan = Plan()
    tab_cells = sum(nt.count * sum(1 for e in encoders if e.node_type == nt.name
                                   and e.kind != "text") for nt in schema.node_types)
    cells_per_item = max(min_tabular_cells, math.ceil(tab_cells / (2 * workers)))
    for nt in schema.node_types:
        mine = [e for e in encoders if e.node_type == nt.name]
        for phase in PHASES:
            attrs = [e.attribute for e in mine if (e.kind == "text") == (phase == "text")]
            if not attrs or nt.count == 0:
                continue
            if phase == "text":
                parts = max(8 * workers, math.ceil(nt.count / text_chunk))
                cost = (text_costs or {}).get(nt.name)
                cuts = _cuts(np.ones(nt.count) if cost is None else cost, parts)
            else:
                parts = max(math.ceil(nt.count * len(attrs) / cells_per_item),
                            math.ceil(nt.count / tabular_chunk))
                cuts = _cuts(np.ones(nt.count), parts)
            plan.items[phase].extend(WorkItem(nt.name, int(a), int(b), attrs, phase)
                                     for a, b in zip(cuts[:-1], cuts[1:], strict=True))
    for phase in PHASES:  # largest first: the last items handed out are the short ones
        plan.items[phase].sort(key=lambda i: -i.rows * len(i.attributes))
    return plan


def text_token_costs(graph_uri: str, schema: GraphSchema, encoders: list[FittedEncoder],
                     ) -> dict[str, np.ndarray]:
    """Per node type with text attributes: tokens per row after truncation (0 when missing),
    summed over its text attributes: what a row costs the text model, to cut balanced items.
    Runs on the driver with the model's own tokenizer (Rust ``tokenizers`` from
    ``tokenizer.json`` when the model has one: light to import; else transformers'
    AutoTokenizer); no model weights are loaded."""
    from kg_ops.encode.text import resolve_model_path
    from kg_ops.graph.kg import load_nodes

    text_encoders = [e for e in encoders if e.kind == "text"]
    if not text_encoders:
        return {}
    params = text_encoders[0].params
    path = resolve_model_path(params["model"])
    max_length = params["max_length"]
    if (path / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        fast = Tokenizer.from_file(str(path / "tokenizer.json"))
        fast.enable_truncation(max_length)
        fast.no_padding()
        batch = getattr(fast, "encode_batch_fast", fast.encode_batch)

        def lengths(texts: list[str]) -> np.ndarray:
            return np.fromiter((len(e) for e in batch(texts)), np.int64, len(texts))
    else:
        from transformers import AutoTokenizer

        slow = AutoTokenizer.from_pretrained(path, local_files_only=True)

        def lengths(texts: list[str]) -> np.ndarray:
            return np.asarray(slow(texts, truncation=True, max_length=max_length,
                                   return_length=True)["length"], dtype=np.int64)
    costs: dict[str, np.ndarray] = {}
    for nt in schema.node_types:
        attrs = [e.attribute for e in text_encoders if e.node_type == nt.name]
        if not attrs or nt.count == 0:
            continue
        table = load_nodes(graph_uri, nt.name, columns=attrs)
        cost = np.zeros(nt.count, dtype=np.int64)
        for attr in attrs:
            prep = prepare("text", table.column(attr), graph_uri, attr)
            if len(prep.rows):
                cost[prep.rows] += lengths([t.strip() for t in prep.data.to_pylist()])
        costs[nt.name] = cost
    return costs


class ShardEncoder:
    """One worker: the fitted encoders and the text model, loaded once; encodes and writes items."""

    def __init__(self, graph_uri: str, out_uri: str | None, encoders: list[dict[str, Any]],
                 on_bad: str = "error", threads: int | None = None, text_batch_size: int = 64,
                 worker_id: int = 0, shared_tables: dict[str, Any] | None = None,
                 text_batch_tokens: int | None = None):
        self.shared_tables = shared_tables or {}  # node type -> ObjectRef of its tabular columns
        self.graph_uri, self.out_uri, self.on_bad = graph_uri, out_uri, on_bad
        self.threads, self.worker_id, self.text_batch_size = threads, worker_id, text_batch_size
        self.text_batch_tokens = text_batch_tokens
        self.encoders = {(e["node_type"], e["attribute"]): FittedEncoder(**e) for e in encoders}
        self.lookups = {k: _column_lookup(e) for k, e in self.encoders.items()
                        if e.kind in ("categorical", "multilabel")}
        self._tables: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._text = None
        self._load_error: Exception | None = None
        if any(e.kind == "text" for e in self.encoders.values()):
            try:
                self._text_model()  # load once, up front: the startup phase pays for it
            except Exception as exc:  # noqa: BLE001 -- raised by ready(), see there
                self._load_error = exc

    def ready(self) -> int:
        """The worker id once loaded; else the load error itself. Raised here, not in
        ``__init__``: Ray keeps only the text of an exception from an actor's constructor
        (an ActorDiedError with a traceback), but a method's exception travels whole."""
        if self._load_error is not None:
            raise self._load_error
        return self.worker_id

    def _text_model(self):
        if self._text is None:
            from kg_ops.encode.text import TextEncoder

            params = next(e.params for e in self.encoders.values() if e.kind == "text")
            self._text = TextEncoder(params, threads=self.threads,
                                     batch_size=self.text_batch_size,
                                     batch_tokens=self.text_batch_tokens)
        return self._text

    def _table(self, node_type: str, attributes: list[str]):
        from kg_ops.graph.kg import load_nodes

        key = (node_type, tuple(attributes))
        if key not in self._tables:
            columns = ["id", "key", *attributes]
            ref = self.shared_tables.get(node_type)
            if ref is not None:
                import ray

                shared = ray.get(ref)  # zero-copy from the object store
                if set(columns) <= set(shared.column_names):
                    self._tables[key] = shared.select(columns)
            if key not in self._tables:
                self._tables[key] = load_nodes(self.graph_uri, node_type, columns=columns)
        return self._tables[key]

    def encode_item(self, item: WorkItem) -> tuple[dict[str, tuple], dict[str, float]]:
        """Per attribute: (global node ids, values, stats) of the item's rows; values are a
        dense array (text) or an :class:`Encoded` (0/1 kinds, sparse)."""
        t0 = time.perf_counter()
        table = self._table(item.node_type, item.attributes).slice(item.start, item.rows)
        t_read = time.perf_counter() - t0
        where = join(self.graph_uri, "nodes", f"{item.node_type}.parquet")
        ids = table.column("id").to_numpy()
        keys = table.column("key")
        out = {}
        for attr in item.attributes:
            enc = self.encoders[(item.node_type, attr)]
            col = table.column(attr)
            if enc.kind == "text":
                prep = prepare("text", col, f"{where} rows {item.start}+", attr)
                values = self._text_model().encode(prep.data.to_pylist())
                rows = prep.rows
                stats = {"present": len(rows), "missing": prep.missing, "bad": 0, "unknown": 0,
                         "bad_examples": []}
            else:
                res = encode_column(enc, col, where, self.on_bad, keys,
                                    self.lookups.get((item.node_type, attr)))
                rows, values, stats = res.rows, res, res.stats  # kept sparse until written
            out[attr] = (ids[rows], values, stats)
        return out, {"read_s": t_read, "encode_s": time.perf_counter() - t0 - t_read}

    def run(self, item: WorkItem) -> dict[str, Any]:
        """Encode and write one item; returns only its shard manifests and timings."""
        t0, c0 = time.perf_counter(), time.process_time()
        encoded, timing = self.encode_item(item)
        t1 = time.perf_counter()
        shards = {}
        for attr, (ids, values, stats) in encoded.items():
            enc = self.encoders[(item.node_type, attr)]
            if not len(ids):
                shard = None
            else:
                table = (indicator_table(ids, values.hot_rows, values.hot_cols, enc.dim)
                         if isinstance(values, Encoded) else dense_table(ids, values, enc.dim))
                shard = write_shard(self.out_uri, shard_path(item.node_type, attr, item.start),
                                    table)
            shards[attr] = {"shard": shard, "start": item.start, "stats": stats}
        timing["write_s"] = time.perf_counter() - t1
        timing["busy_s"] = time.perf_counter() - t0
        timing["cpu_s"] = time.process_time() - c0  # < busy_s when the cores are contended
        return {"worker": self.worker_id, "node_type": item.node_type, "phase": item.phase,
                "rows": item.rows, "shards": shards, "timing": timing}


def encode_in_process(graph_uri: str, schema: GraphSchema, encoders: list[FittedEncoder],
                      on_bad: str = "error", threads: int | None = None,
                      ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The same per-item code, in this process: ``{"type/attr": (node_ids, dense values)}``."""
    worker = ShardEncoder(graph_uri, None, [e.__dict__ for e in encoders], on_bad, threads)
    parts: dict[str, list] = defaultdict(list)
    for phase in PHASES:
        for item in plan_items(schema, encoders, workers=1, text_chunk=1 << 62,
                               tabular_chunk=1 << 62).items[phase]:
            encoded, _ = worker.encode_item(item)
            for attr, (ids, values, _stats) in encoded.items():
                dense = values.values if isinstance(values, Encoded) else values
                parts[f"{item.node_type}/{attr}"].append((ids, dense))
    return {name: (np.concatenate([p[0] for p in ps]), np.concatenate([p[1] for p in ps]))
            for name, ps in parts.items()}


# --- the driver ---------------------------------------------------------------------------------
@dataclass
class TransformResult:
    results: list[dict[str, Any]]
    phase_wall_s: dict[str, float]
    startup_s: float
    workers: int
    threads: int
    plan_s: float = 0.0


def start_workers(graph_uri: str, out_uri: str, encoders: list[FittedEncoder], workers: int,
                  threads: int, on_bad: str, text_batch_size: int,
                  tables: dict[str, Any] | None = None,
                  text_batch_tokens: int | None = None) -> list:
    """Start the actors (without waiting for them). The fitted encoders and the tabular columns
    the driver already read for fitting are placed in the object store once; text columns the
    workers read themselves."""
    import ray

    # No runtime_env: the actors read S3 with the Ray nodes' own credentials (environment,
    # profile or instance role), never with secrets shipped from the driver (README).
    actor = ray.remote(ShardEncoder).options(num_cpus=threads)
    shared = ray.put([e.__dict__ for e in encoders])
    table_refs = {name: ray.put(t) for name, t in (tables or {}).items()}
    actors = [actor.remote(graph_uri, out_uri, shared, on_bad, threads, text_batch_size, i,
                           table_refs, text_batch_tokens)
              for i in range(workers)]
    return actors


def wait_ready(actors: list) -> None:
    """Block until every actor has loaded its encoders and model."""
    import ray

    try:
        ray.get([a.ready.remote() for a in actors])
    except Exception as exc:  # actor construction failed: surface the worker's own error
        raise root_cause(exc) from exc


def run_items(actors: list, items: list[WorkItem], phase: str, in_flight: int = 2,
              ) -> list[dict[str, Any]]:
    """Hand items to whichever worker is free; gather their small result dicts. ``in_flight``
    items per worker hide the round trip of short items; for long ones (text, seconds each) one
    is enough, and a second would sit queued on a busy worker while another runs out of work."""
    import ray

    progress = Progress(f"encode/{phase}", total=sum(i.rows for i in items), unit="rows")
    queue = list(reversed(items))
    free = [a for _ in range(in_flight) for a in actors]  # a0, a1, a0, a1: spread the big ones
    pending: dict[Any, Any] = {}
    results = []
    while queue or pending:
        while queue and free:
            a = free.pop(0)
            pending[a.run.remote(queue.pop())] = a
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            free.append(pending.pop(ref))
            try:
                res = ray.get(ref)
            except Exception as exc:
                raise root_cause(exc) from exc
            results.append(res)
            progress.update(res["rows"])
    progress.done()
    return results


def transform(graph_uri: str, out_uri: str, schema: GraphSchema, encoders: list[FittedEncoder],
              workers: int, threads: int, on_bad: str = "error", text_chunk: int = 512,
              text_batch_size: int = 64, phase_timer=None,
              tables: dict[str, Any] | None = None,
              text_batch_tokens: int | None = None,
              tabular_min_cells: int = 500_000) -> TransformResult:
    t0 = time.perf_counter()
    actors = start_workers(graph_uri, out_uri, encoders, workers, threads, on_bad, text_batch_size,
                           tables, text_batch_tokens)
    # while the workers load the model: count text tokens to cut balanced items
    costs = text_token_costs(graph_uri, schema, encoders) if workers > 1 else None
    plan = plan_items(schema, encoders, workers, text_chunk=text_chunk, text_costs=costs,
                      min_tabular_cells=tabular_min_cells)
    plan_s = time.perf_counter() - t0
    if costs:
        log.info("encode: %d text tokens counted in %.1fs to balance %d items",
                 sum(int(c.sum()) for c in costs.values()), plan_s, len(plan.items["text"]))
    wait_ready(actors)
    startup = time.perf_counter() - t0
    log.info("encode: %d worker(s) x %d thread(s) ready in %.1fs", workers, threads, startup)
    results, walls = [], {}
    for phase in PHASES:
        if not plan.items[phase]:
            walls[phase] = 0.0
            continue
        t = time.perf_counter()
        in_flight = 1 if phase == "text" else 2
        if phase_timer is not None:
            with phase_timer(phase):
                results += run_items(actors, plan.items[phase], phase, in_flight)
        else:
            results += run_items(actors, plan.items[phase], phase, in_flight)
        walls[phase] = time.perf_counter() - t
    import ray

    for a in actors:
        ray.kill(a)
    return TransformResult(results, walls, startup, workers, threads, plan_s)


def gather_blocks(encoders: list[FittedEncoder], results: list[dict[str, Any]],
                  fit_stats: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The index entries of features.json, from the workers' shard manifests (schema order)."""
    per_block: dict[str, list[dict]] = defaultdict(list)
    for res in results:
        for attr, s in res["shards"].items():
            per_block[f"{res['node_type']}/{attr}"].append(s)
    blocks = []
    for e in encoders:
        parts = sorted(per_block.get(e.name, []), key=lambda s: s["start"])
        shards = [p["shard"] for p in parts if p["shard"] is not None]
        stats = {k: sum(p["stats"][k] for p in parts) for k in ("present", "missing", "bad",
                                                                   "unknown")}
        examples = [k for p in parts for k in p["stats"]["bad_examples"]][:5]
        if stats["bad"] and not examples:
            examples = fit_stats.get(e.name, {}).get("bad_examples", [])
        blocks.append({
            "node_type": e.node_type, "attribute": e.attribute, "kind": e.kind, "dim": e.dim,
            "rows": stats["present"], "storage": storage_for(e.kind),
            "shards": [s["path"] for s in shards],
            "shard_rows": [s["rows"] for s in shards],
            "shard_id_ranges": [s["id_range"] for s in shards],
            "missing": stats["missing"], "bad": stats["bad"], "unknown": stats["unknown"],
            "bad_examples": examples, "encoder": e.summary(),
        })
        if sum(s["rows"] for s in shards) != stats["present"]:
            raise EncodeError(f"{e.name}: shard rows do not add up to the encoded rows")
    return blocks


def worker_timings(res: TransformResult) -> dict[str, Any]:
    """Mean per-worker busy/read/encode/write seconds over both phases."""
    busy = defaultdict(lambda: defaultdict(float))
    for r in res.results:
        for k, v in r["timing"].items():
            busy[r["worker"]][k] += v
    n = max(res.workers, 1)
    out: dict[str, Any] = {k: sum(w[k] for w in busy.values()) / n
                           for k in ("busy_s", "cpu_s", "read_s", "encode_s", "write_s")}
    out["per_worker_busy_s"] = [round(busy[i]["busy_s"], 3) for i in range(res.workers)]
    return out
