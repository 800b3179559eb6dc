"""``kgops synth``: a synthetic enterprise knowledge graph of any size, with learnable structure.

The paper's enterprise graph (2.8M nodes, 24M edges, typed attributes) is private; this generator
has its shape. Five node types (person, department, project, document, product) carry different
attribute schemas that together cover all five attribute kinds, with a small share of missing
values; five relation types have declared head/tail types.

Latent communities drive both the edges and the attributes, so a GNN has something to learn and
how much it learnt can be checked: most edges stay inside the head's community, degrees are
heavy-tailed (Pareto node weights), and each community has its own numeric and date centres,
favourite categories and labels and its own topic words for text. The true community of each node
is written to ``truth/communities.parquet``, outside the graph's own tables, so no encoder sees it.

Everything is vectorised numpy/Arrow (weighted sampling by ``searchsorted`` on cumulative
weights, edge de-duplication by sorting packed int64 keys, text by sampling word indices and
joining them with Arrow's ``binary_join``): no Python loop per node or edge.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kg_ops.config.synth import MIN_NODES, SynthConfig
from kg_ops.errors import KGOpsError
from kg_ops.graph.kg import KnowledgeGraph
from kg_ops.graph.schema import Attribute, GraphSchema, NodeType, Relation
from kg_ops.graph.split import split_edges
from kg_ops.progress import Progress

log = logging.getLogger(__name__)

HELP = ("Generate a synthetic enterprise knowledge graph: typed attributes of all five kinds, "
        "5 relations, latent communities; seeded and split 80/10/10.")

TEXT_CHUNK = 500_000          # nodes per text batch: bounds the transient word array
MAX_ROUNDS = 30               # top-up rounds of edge sampling (duplicates are re-drawn)
MAX_FILL = 0.5                # a relation may use at most this share of its possible pairs

# --- vocabularies ---------------------------------------------------------------------------
TOPICS = (
    "accessibility", "analytics", "api", "archive", "audit", "authentication", "backup",
    "benchmark", "billing", "budget", "catalogue", "chatbot", "checkout", "cloud", "cluster",
    "compiler", "compliance", "contract", "crm", "customer", "dashboard", "data", "database",
    "deployment", "design", "devops", "encryption", "energy", "erp", "experiment", "finance",
    "firmware", "forecasting", "fraud", "gateway", "graph", "growth", "hardware", "helpdesk",
    "hiring", "identity", "infrastructure", "integration", "inventory", "invoice", "kernel",
    "latency", "ledger", "legal", "licensing", "localisation", "logistics", "loyalty",
    "machine-learning", "manufacturing", "marketing", "media", "messaging", "metrics",
    "migration", "mobile", "monitoring", "network", "observability", "onboarding", "ontology",
    "optimisation", "partnership", "payments", "payroll", "pipeline", "platform", "policy",
    "portal", "pricing", "privacy", "procurement", "quality", "recommendation", "recruiting",
    "refunds", "regulation", "reliability", "reporting", "research", "retail", "risk", "roadmap",
    "sales", "scheduling", "search", "security", "sensors", "shipping", "simulation", "storage",
    "strategy", "streaming", "subscription", "supply-chain", "support", "survey",
    "sustainability", "tax", "telemetry", "testing", "ticketing", "training", "translation",
    "vendor", "warehouse", "web", "wireless", "workflow",
)
FEATURES = (
    "offline mode", "single sign-on", "audit log", "rest api", "mobile app", "dark mode",
    "multi-tenant", "role-based access", "export to csv", "webhooks", "sla 99.9", "on-premises",
    "encryption at rest", "real-time sync", "custom reports", "plugin system", "localised ui",
    "bulk import", "usage metering", "two-factor auth", "white label", "voice control",
    "energy saving", "extended warranty",
)


@dataclass(frozen=True)
class _Attr:
    """One attribute of a node type and how its community-dependent values are drawn."""
    name: str
    kind: str
    description: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Type:
    name: str
    share: float
    description: str
    attributes: tuple[_Attr, ...]


def _text(prefix: str, lo: int, hi: int) -> dict[str, Any]:
    return {"prefix": prefix, "min_words": lo, "max_words": hi, "p_topic": 0.6, "topic_words": 10}


def _cat(values: tuple[str, ...], p_home: float = 0.7) -> dict[str, Any]:
    return {"values": values, "p_home": p_home}


def _labels(vocab: tuple[str, ...], lo: int, hi: int) -> dict[str, Any]:
    return {"vocab": vocab, "min": lo, "max": hi, "p_home": 0.7, "home_size": 5}


NODE_TYPES: tuple[_Type, ...] = (
    _Type("person", 0.45, "employees", (
        _Attr("bio", "text", "short profile", _text("Works on ", 4, 12)),
        _Attr("years_experience", "numeric", "years of professional experience",
              {"lo": 2.0, "hi": 20.0, "sd": 3.0, "min": 0.0, "decimals": 1}),
        _Attr("hire_date", "date", "date joined", {"start": "2000-01-01", "end": "2026-01-01",
                                                   "sd_days": 900}),
        _Attr("role", "categorical", "job role", _cat((
            "engineer", "analyst", "manager", "designer", "scientist", "consultant",
            "sales representative", "support specialist", "product owner", "architect",
            "administrator", "researcher"))),
        _Attr("skills", "multilabel", "self-declared skills", _labels(TOPICS, 1, 6)),
    )),
    _Type("department", 0.02, "organisational units", (
        _Attr("description", "text", "what the unit does", _text("Department for ", 3, 8)),
        _Attr("budget", "numeric", "yearly budget (EUR)",
              {"lo": 14.0, "hi": 17.0, "sd": 0.5, "log": True, "decimals": 0}),
        _Attr("founded", "date", "date founded", {"start": "1960-01-01", "end": "2024-01-01",
                                                  "sd_days": 3000}),
        _Attr("region", "categorical", "region", _cat((
            "EMEA", "North America", "LATAM", "APAC", "Middle East", "Africa"))),
    )),
    _Type("project", 0.08, "internal projects", (
        _Attr("summary", "text", "project summary", _text("Project on ", 4, 10)),
        _Attr("budget", "numeric", "budget (EUR)",
              {"lo": 10.0, "hi": 14.0, "sd": 0.7, "log": True, "decimals": 0}),
        _Attr("start_date", "date", "start date", {"start": "2015-01-01", "end": "2026-01-01",
                                                   "sd_days": 365}),
        _Attr("status", "categorical", "status", _cat((
            "proposed", "active", "on hold", "completed", "cancelled"), p_home=0.6)),
        _Attr("tags", "multilabel", "tags", _labels(TOPICS, 1, 4)),
    )),
    _Type("document", 0.30, "documents in the knowledge base", (
        _Attr("title", "text", "title", _text("", 3, 8)),
        _Attr("pages", "numeric", "number of pages",
              {"lo": 1.0, "hi": 4.0, "sd": 0.5, "log": True, "min": 1.0, "decimals": 0}),
        _Attr("created", "date", "creation date", {"start": "2010-01-01", "end": "2026-01-01",
                                                   "sd_days": 500}),
        _Attr("doc_type", "categorical", "document type", _cat((
            "specification", "report", "memo", "presentation", "contract", "policy", "manual",
            "meeting notes", "proposal", "invoice"))),
        _Attr("topics", "multilabel", "topics (may be empty)", _labels(TOPICS, 0, 4)),
    )),
    _Type("product", 0.15, "products and services sold", (
        _Attr("description", "text", "catalogue description", _text("Product for ", 5, 14)),
        _Attr("price", "numeric", "list price (EUR)",
              {"lo": 2.0, "hi": 8.0, "sd": 0.4, "log": True, "decimals": 2}),
        _Attr("category", "categorical", "product category", _cat((
            "software", "hardware", "service", "subscription", "platform", "accessory",
            "consulting", "training"))),
        _Attr("features", "multilabel", "product features", _labels(FEATURES, 1, 5)),
    )),
)

# name, head type, tail type, share of the edges, label
RELATIONS: tuple[tuple[str, str, str, float, str], ...] = (
    ("works_in", "person", "department", 0.10, "person works in department"),
    ("works_on", "person", "project", 0.20, "person works on project"),
    ("authored", "person", "document", 0.25, "person authored document"),
    ("mentions", "document", "product", 0.20, "document mentions product"),
    ("collaborates_with", "person", "person", 0.25, "person collaborates with person"),
)


class SynthError(KGOpsError):
    """The requested graph cannot be generated (sizes or fractions out of range)."""


def default_communities(nodes: int) -> int:
    """About 2,000 nodes per community, at least 4, at most 2,000 communities."""
    return int(min(max(nodes // 2000, 4), 2000))


# --- helpers --------------------------------------------------------------------------------
def _rng(seed: int, *path: str) -> np.random.Generator:
    """An independent stream per (seed, component): changing one part never shifts another."""
    return np.random.default_rng(np.random.SeedSequence(
        [int(seed)] + [zlib.crc32(p.encode()) for p in path]))


def _apportion(total: int, shares: np.ndarray, minimum: int = 0) -> np.ndarray:
    """Integer parts of ``total`` proportional to ``shares`` (largest remainder), each >= min."""
    raw = shares / shares.sum() * total
    out = np.maximum(np.floor(raw).astype(np.int64), minimum)
    rest = total - int(out.sum())
    if rest > 0:
        out[np.argsort(-(raw - np.floor(raw)), kind="stable")[:rest]] += 1
    while rest < 0:  # minimums overshot: take back from the largest parts
        i = int(np.argmax(out))
        out[i] -= 1
        rest += 1
    return out


def _days(iso: str) -> int:
    return int(np.datetime64(iso, "D").astype(np.int64))


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values. ``np.unique`` in numpy 2.4 hashes int64 and measured ~80x
    slower than sort + neighbour compare on 8M keys."""
    a = np.sort(a)
    keep = np.empty(len(a), dtype=bool)
    keep[:1] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


def _null_mask(rng: np.random.Generator, n: int, fraction: float) -> np.ndarray:
    return rng.random(n) < fraction


# --- attributes -----------------------------------------------------------------------------
def _numeric(rng, comm, C, p, missing) -> pa.Array:
    centre = rng.uniform(p["lo"], p["hi"], C)
    x = centre[comm] + p["sd"] * rng.standard_normal(len(comm))
    if p.get("log"):
        x = np.exp(x)
    x = np.round(np.maximum(x, p.get("min", -np.inf)), p["decimals"])
    return pa.array(x, type=pa.float64(), mask=missing)


def _date(rng, comm, C, p, missing) -> pa.Array:
    lo, hi = _days(p["start"]), _days(p["end"])
    centre = rng.uniform(lo, hi, C)
    d = np.clip(np.rint(centre[comm] + p["sd_days"] * rng.standard_normal(len(comm))), lo, hi)
    return pa.array(d.astype(np.int64) * 86400, type=pa.timestamp("s", tz="UTC"), mask=missing)


def _categorical(rng, comm, C, p, missing) -> pa.Array:
    values = pa.array(p["values"], type=pa.string())
    k = len(values)
    home = rng.integers(k, size=C)
    background = np.cumsum(1.0 / np.arange(1, k + 1))  # Zipf-like global popularity
    background /= background[-1]
    n = len(comm)
    other = np.minimum(np.searchsorted(background, rng.random(n), side="right"), k - 1)
    idx = np.where(rng.random(n) < p["p_home"], home[comm], other)
    return values.take(pa.array(idx, mask=missing))


def _multilabel(rng, comm, C, p, missing) -> pa.Array:
    vocab = pa.array(p["vocab"], type=pa.string())
    v, h, n = len(vocab), p["home_size"], len(comm)
    home = rng.integers(v, size=(C, h))
    k = rng.integers(p["min"], p["max"] + 1, size=n)
    k[missing] = 0  # a null list hides no values (readers of the raw child array see none)
    owner = np.repeat(np.arange(n, dtype=np.int64), k)
    m = len(owner)
    labels = np.where(rng.random(m) < p["p_home"], home[comm[owner], rng.integers(h, size=m)],
                      rng.integers(v, size=m))
    packed = _sorted_unique(owner * v + labels)  # one label at most once per node, sorted
    owner, labels = packed // v, packed % v
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(owner, minlength=n), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), vocab.take(pa.array(labels)),
                                    mask=pa.array(missing))


def _text_attr(rng, comm, C, p, missing) -> pa.ChunkedArray:
    vocab = pa.array(TOPICS, type=pa.string())
    v, kt = len(vocab), p["topic_words"]
    topic = rng.integers(v, size=(C, kt))
    chunks = []
    for s in range(0, len(comm), TEXT_CHUNK):  # batches of nodes, not a loop per node
        c = comm[s:s + TEXT_CHUNK]
        n = len(c)
        length = rng.integers(p["min_words"], p["max_words"] + 1, size=n)
        owner = np.repeat(np.arange(n, dtype=np.int64), length)
        m = len(owner)
        words = np.where(rng.random(m) < p["p_topic"], topic[c[owner], rng.integers(kt, size=m)],
                         rng.integers(v, size=m))
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(length, out=offsets[1:])
        lists = pa.ListArray.from_arrays(pa.array(offsets), vocab.take(pa.array(words)),
                                         mask=pa.array(missing[s:s + TEXT_CHUNK]))
        text = pc.binary_join(lists, " ")
        if p["prefix"]:
            text = pc.binary_join_element_wise(pa.scalar(p["prefix"]), text, "")
        chunks.append(text)
    return pa.chunked_array(chunks, type=pa.string())


_KIND = {"numeric": _numeric, "date": _date, "categorical": _categorical,
         "multilabel": _multilabel, "text": _text_attr}


def _node_table(seed: int, t: _Type, offset: int, comm: np.ndarray, C: int,
                text_fraction: float, missing_fraction: float) -> tuple[pa.Table, dict[str, int]]:
    n = len(comm)
    ids = np.arange(offset, offset + n, dtype=np.int64)
    local = pa.array(np.arange(n, dtype=np.int64)).cast(pa.string())
    cols: dict[str, Any] = {"id": ids,
                            "key": pc.binary_join_element_wise(pa.scalar(f"{t.name}:"), local, "")}
    missing_counts = {}
    for a in t.attributes:
        rng = _rng(seed, "attr", t.name, a.name)
        missing = _null_mask(rng, n, missing_fraction)
        if a.kind == "text" and text_fraction < 1.0:
            missing |= rng.random(n) >= text_fraction
        cols[a.name] = _KIND[a.kind](rng, comm, C, a.params, missing)
        missing_counts[f"{t.name}.{a.name}"] = int(missing.sum())
    return pa.table(cols), missing_counts


# --- edges ----------------------------------------------------------------------------------
class _Pool:
    """Weighted sampling of one node type's nodes, globally or inside a community.

    Nodes are ordered by community; the cumulative weights along that order make each community a
    contiguous interval, so drawing inside community c is one ``searchsorted`` into its interval.
    """

    def __init__(self, rng: np.random.Generator, comm: np.ndarray, C: int, alpha: float):
        n = len(comm)
        weight = rng.pareto(alpha, n) + 1.0   # Pareto(alpha, x_min=1): heavy-tailed degrees
        self.order = np.argsort(comm, kind="stable")
        self.cum = np.cumsum(weight[self.order])
        bounds = np.searchsorted(comm[self.order], np.arange(C + 1))
        self.start, self.end = bounds[:-1], bounds[1:]
        cum0 = np.concatenate([[0.0], self.cum])
        self.lo, self.hi = cum0[self.start], cum0[self.end]
        self.n = n

    def sample(self, rng: np.random.Generator, k: int, shuffle: bool = True) -> np.ndarray:
        """``k`` weighted draws. Sorted queries make ``searchsorted`` cache-friendly (measured
        ~4x faster on 8M draws); without ``shuffle`` the draws come ordered by community."""
        x = np.sort(rng.random(k))
        x *= self.cum[-1]
        out = self.order[np.minimum(np.searchsorted(self.cum, x, side="right"), self.n - 1)]
        if shuffle:
            rng.shuffle(out)
        return out

    def sample_in(self, rng: np.random.Generator, comm: np.ndarray) -> np.ndarray:
        """One node per entry of ``comm``, from that community (globally if it has none)."""
        lo, hi = self.lo[comm], self.hi[comm]
        pos = np.searchsorted(self.cum, lo + rng.random(len(comm)) * (hi - lo), side="right")
        pos = np.clip(pos, self.start[comm], np.maximum(self.end[comm] - 1, self.start[comm]))
        out = self.order[np.minimum(pos, self.n - 1)]
        empty = self.end[comm] == self.start[comm]
        if empty.any():
            out[empty] = self.sample(rng, int(empty.sum()))
        return out


def _relation_edges(rng: np.random.Generator, m: int, head: _Pool, tail: _Pool,
                    head_comm: np.ndarray, within: float, no_self: bool,
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """``m`` distinct (head, tail) pairs of local ids, sorted. Duplicates and self-loops are
    redrawn in top-up rounds; a random surplus of the last round is dropped."""
    n_tail = tail.n
    keys = np.empty(0, dtype=np.int64)
    stats = {"sampled": 0, "self_loops_redrawn": 0}
    factor = 1.05
    for _ in range(MAX_ROUNDS):
        need = m - len(keys)
        if need <= 0:
            break
        k = int(need * factor) + 16
        # Heads in community order: the in-community tail draws below then stay cache-local.
        h = head.sample(rng, k, shuffle=False)
        inside = rng.random(k) < within
        t = np.empty(k, dtype=np.int64)
        t[inside] = tail.sample_in(rng, head_comm[h[inside]])
        t[~inside] = tail.sample(rng, int((~inside).sum()))
        stats["sampled"] += k
        if no_self:
            keep = h != t
            stats["self_loops_redrawn"] += int(k - keep.sum())
            h, t = h[keep], t[keep]
        before = len(keys)
        keys = _sorted_unique(np.concatenate([keys, h * n_tail + t]))
        gained = len(keys) - before
        factor = min(k / max(gained, 1) * 1.02, 8.0)  # oversample by the observed yield
    if len(keys) > m:
        drop = rng.choice(len(keys), size=len(keys) - m, replace=False)
        keep = np.ones(len(keys), dtype=bool)
        keep[drop] = False
        keys = keys[keep]
    stats["duplicates_redrawn"] = stats["sampled"] - stats["self_loops_redrawn"] - len(keys)
    return keys // n_tail, keys % n_tail, stats


# --- the generator --------------------------------------------------------------------------
@dataclass
class SynthResult:
    graph: KnowledgeGraph
    communities: np.ndarray          # community of each node id (int32, length num_nodes)
    counts: dict[str, Any]
    metrics: dict[str, Any]


def _check(nodes: int, edges: int, communities: int, within: float, text_fraction: float,
           missing_fraction: float) -> None:
    if nodes < MIN_NODES:
        raise SynthError(f"--nodes {nodes}: need at least {MIN_NODES} nodes so that every node "
                         "type has members")
    if edges < 1:
        raise SynthError(f"--edges {edges}: need at least 1 edge")
    if not 1 <= communities <= nodes:
        raise SynthError(f"--communities {communities}: must be between 1 and --nodes ({nodes})")
    for flag, value in (("--within", within), ("--text-fraction", text_fraction),
                        ("--missing-fraction", missing_fraction)):
        if not 0.0 <= value <= 1.0:
            raise SynthError(f"{flag} {value}: must be a fraction between 0 and 1")


def _no_phase(name: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def synthesize(nodes: int, edges: int, seed: int = 0, *, communities: int | None = None,
               within: float = 0.8, text_fraction: float = 1.0, missing_fraction: float = 0.02,
               degree_alpha: float = 2.0,
               phase: Callable[[str], contextlib.AbstractContextManager] = _no_phase,
               ) -> SynthResult:
    """The graph, the true communities, and counts/metrics for the manifest. Deterministic for
    a seed. ``within`` is the probability that an edge's tail is drawn from its head's community;
    ``degree_alpha`` the Pareto tail index of node weights (smaller = heavier tail)."""
    C = default_communities(nodes) if communities is None else int(communities)
    _check(nodes, edges, C, within, text_fraction, missing_fraction)
    counts_t = _apportion(nodes, np.array([t.share for t in NODE_TYPES]), minimum=1)
    offsets = np.concatenate([[0], np.cumsum(counts_t)])
    rel_m = _apportion(edges, np.array([r[3] for r in RELATIONS]))
    _check_density(nodes, edges, counts_t, rel_m)
    comm = _communities(seed, nodes, C)
    with phase("nodes"):
        node_types, tables, missing = _nodes(seed, counts_t, offsets, comm, C, text_fraction,
                                             missing_fraction)
    with phase("edges"):
        all_edges, rel_counts, sampling = _edges(seed, counts_t, offsets, rel_m, comm, C,
                                                 within, degree_alpha)
    with phase("split"):
        splits, moved = split_edges(all_edges, nodes, len(RELATIONS), seed=seed)
        del all_edges
    schema = GraphSchema(
        name=f"synth-n{nodes}-e{edges}-s{seed}",
        node_types=node_types,
        relations=[Relation(name, h, t, label) for name, h, t, _, label in RELATIONS],
        source={"source": "synth", "generator": __name__, "nodes": nodes, "edges": edges,
                "seed": seed, "communities": C, "within": within, "degree_alpha": degree_alpha,
                "text_fraction": text_fraction, "missing_fraction": missing_fraction},
    )
    schema.validate()
    graph = KnowledgeGraph(schema=schema, edges=splits, nodes=tables)
    within_frac, baseline = _community_edge_fractions(splits, comm, C)
    filled = sum(rel_counts.values())
    counts = {
        # the keys every import writes (see kg_ops.graph.info.summarize), then synth's own
        "nodes": nodes, "relations": len(RELATIONS),
        "edges": {s: int(len(e)) for s, e in splits.items()},
        "node_types": {t.name: int(n) for t, n in zip(NODE_TYPES, counts_t, strict=True)},
        "relation_types": rel_counts, "moved_to_train": moved,
        "communities": C, "edges_requested": edges, "edges_total": filled,
        "edges_shortfall": edges - filled,
        "candidate_edges_sampled": sampling["sampled"],
        "duplicate_candidates_redrawn": sampling["duplicates_redrawn"],
        "self_loop_candidates_redrawn": sampling["self_loops_redrawn"],
        "missing_values": missing,
    }
    metrics = {"within_community_edge_fraction": within_frac,
               "within_community_random_baseline": baseline}
    return SynthResult(graph=graph, communities=comm, counts=counts, metrics=metrics)


def _check_density(nodes: int, edges: int, counts_t: np.ndarray, rel_m: np.ndarray) -> None:
    """Every relation's edge count fits in MAX_FILL of its possible (head, tail) pairs."""
    names = [t.name for t in NODE_TYPES]
    for (name, h, t, _, _), m in zip(RELATIONS, rel_m, strict=True):
        nh, nt = counts_t[names.index(h)], counts_t[names.index(t)]
        pairs = nh * (nt - 1 if h == t else nt)
        if m > MAX_FILL * pairs:
            raise SynthError(
                f"--edges {edges} is too dense for --nodes {nodes}: relation {name} ({h}->{t}) "
                f"would need {m:,} distinct edges among {pairs:,} possible pairs (at most "
                f"{MAX_FILL:.0%} can be used). Ask for fewer edges or more nodes.")


def _communities(seed: int, nodes: int, C: int) -> np.ndarray:
    """The community of each node: skewed sizes, same distribution for every node type."""
    rng = _rng(seed, "communities")
    share = rng.lognormal(0.0, 0.5, C)
    cum = np.cumsum(share / share.sum())
    comm = np.minimum(np.searchsorted(cum, rng.random(nodes), side="right"), C - 1)
    return comm.astype(np.int32)


def _nodes(seed: int, counts_t: np.ndarray, offsets: np.ndarray, comm: np.ndarray, C: int,
           text_fraction: float, missing_fraction: float):
    """Node types, their attribute tables, and the missing values per attribute."""
    node_types, tables, missing = [], {}, {}
    prog = Progress("synth/nodes", total=int(counts_t.sum()), unit="nodes")
    for t, n, off in zip(NODE_TYPES, counts_t, offsets[:-1], strict=True):
        node_types.append(NodeType(
            name=t.name, count=int(n), offset=int(off), description=t.description,
            attributes=[Attribute(a.name, a.kind, a.description) for a in t.attributes]))
        tables[t.name], miss = _node_table(seed, t, int(off), comm[off:off + n], C,
                                           text_fraction, missing_fraction)
        missing.update(miss)
        prog.update(int(n))
    prog.done()
    return node_types, tables, missing


def _edges(seed: int, counts_t: np.ndarray, offsets: np.ndarray, rel_m: np.ndarray,
           comm: np.ndarray, C: int, within: float, degree_alpha: float):
    """All edges as global (head, relation, tail) ids, the edges per relation, and how many
    candidates were drawn and redrawn."""
    names = [t.name for t in NODE_TYPES]
    all_edges = np.empty((int(rel_m.sum()), 3), dtype=np.int64)
    rel_counts, sampling = {}, {"sampled": 0, "self_loops_redrawn": 0, "duplicates_redrawn": 0}
    prog = Progress("synth/edges", total=len(all_edges), unit="edges")
    pools = {t.name: _Pool(_rng(seed, "weights", t.name), comm[off:off + n], C, degree_alpha)
             for t, n, off in zip(NODE_TYPES, counts_t, offsets[:-1], strict=True)}
    filled = 0
    for r, ((name, h, t, _, _), m) in enumerate(zip(RELATIONS, rel_m, strict=True)):
        hi, ti = names.index(h), names.index(t)
        hs, ts, st = _relation_edges(_rng(seed, "edges", name), int(m), pools[h], pools[t],
                                     comm[offsets[hi]:offsets[hi + 1]], within, no_self=h == t)
        k = len(hs)
        all_edges[filled:filled + k, 0] = hs + offsets[hi]
        all_edges[filled:filled + k, 1] = r
        all_edges[filled:filled + k, 2] = ts + offsets[ti]
        filled += k
        rel_counts[name] = k
        for key in sampling:
            sampling[key] += st[key]
        if k < m:
            log.warning("synth: relation %s reached %d of %d edges after %d rounds (the "
                        "pairs its communities allow are nearly used up)", name, k, m,
                        MAX_ROUNDS)
        prog.update(k, relation=name)
        del hs, ts
    prog.done()
    return all_edges[:filled], rel_counts, sampling


def generate(nodes: int, edges: int, seed: int = 0, **options: Any) -> KnowledgeGraph:
    """The synthetic graph only (see :func:`synthesize` for the options)."""
    return synthesize(nodes, edges, seed, **options).graph


def _community_edge_fractions(splits: dict[str, np.ndarray], comm: np.ndarray, C: int,
                              ) -> tuple[float, float]:
    """Share of edges inside one community, and what it would be if heads and tails kept their
    community sizes but paired up at random (sum over c of head share x tail share)."""
    inside, n, expected = 0, 0, 0.0
    for e in splits.values():
        if not len(e):
            continue
        hc, tc = comm[e[:, 0]], comm[e[:, 2]]
        inside += int(np.count_nonzero(hc == tc))
        n += len(e)
        expected += float(np.bincount(hc, minlength=C) @ np.bincount(tc, minlength=C)) / len(e)
    return round(inside / max(n, 1), 6), round(expected / max(n, 1), 6)


# --- command --------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    SynthConfig.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    synth(SynthConfig.from_args(args), force=args.force)
    return 0


def synth(config: SynthConfig, *, force: bool = False) -> dict:
    """The synth stage: generate, validate, write the graph and its true communities; returns
    the manifest (an import's: the graph is the import stage's artifact)."""
    from kg_ops.manifest import Stage

    C = default_communities(config.nodes) if config.communities is None else config.communities
    recorded = {"source": "synth", "nodes": config.nodes, "edges": config.edges,
                "seed": config.seed, "communities": C, "within": config.within,
                "text_fraction": config.text_fraction,
                "missing_fraction": config.missing_fraction}
    with Stage("import", config.out, config=recorded, force=force) as st:
        if st.reused:
            return st.manifest
        res = synthesize(config.nodes, config.edges, config.seed, communities=C,
                         within=config.within, text_fraction=config.text_fraction,
                         missing_fraction=config.missing_fraction, phase=st.phase)
        report = _validated(st, res.graph)
        _write(st, res)
        st.counts.update(res.counts)
        st.metrics.update(res.metrics)
        st.extra["validation"] = {"bad_rows": 0, **report.to_dict()}
        log.info("synth: %s nodes, %s edges (train/valid/test %s), %d moved to train, "
                 "within-community edges %.3f (random %.3f)", f"{config.nodes:,}",
                 f"{res.counts['edges_total']:,}", res.counts["edges"], res.counts["moved_to_train"],
                 res.metrics["within_community_edge_fraction"],
                 res.metrics["within_community_random_baseline"])
    return st.manifest


def _validated(st, graph: KnowledgeGraph):
    """The validation report; the generator building something inconsistent is a bug, not bad
    input."""
    from kg_ops.graph.validate import GraphInvalidError, validate_graph

    with st.phase("validate"):
        report = validate_graph(graph.schema, graph.edges, graph.nodes, where=st.out)
    if not report.ok:
        raise GraphInvalidError("the synthetic graph failed validation: "
                                + " | ".join(report.errors))
    return report


def _write(st, res: SynthResult) -> None:
    """The graph, then the true community of every node (truth/communities.parquet)."""
    from kg_ops.store import get_store

    with st.phase("write"):
        prog = Progress("synth/write", total=res.graph.schema.num_nodes, unit="nodes")
        st.outputs = res.graph.save(st.out)
        truth = st.uri("truth", "communities.parquet")
        get_store(st.out).write_parquet(truth, pa.table({
            "id": np.arange(len(res.communities), dtype=np.int64),
            "community": res.communities}))
        st.outputs["truth/communities"] = truth
        prog.update(res.graph.schema.num_nodes)
        prog.done()
