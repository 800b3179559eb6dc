"""The evaluation report a person reads: one self-contained HTML file plus its PNG plots.

Sections: headline metrics, protocol, training curves (from the training run's ``history.json``),
per-relation MRR plot and table. Plots are embedded as data URIs (the HTML opens anywhere, e.g.
straight from S3) and also written next to it. Every piece of text is HTML-escaped: relation
names and URIs come from user data.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import textwrap
from typing import Any

from kg_ops.store import get_store, join

HEADLINE = ("mrr", "hits@1", "hits@3", "hits@10", "auc", "mean_rank", "mrr_tail", "mrr_head",
            "mrr_optimistic", "mrr_pessimistic", "tc_mrr", "tc_hits@1", "tc_hits@3",
            "tc_hits@10", "auc_hard_negatives", "cold_mrr", "cold_hits@1", "cold_hits@10",
            "cold_queries", "queries")
LABELS = {
    "mrr": "MRR (filtered, realistic ties)", "mean_rank": "mean rank",
    "mrr_tail": "MRR, tail queries (h, r, ?)", "mrr_head": "MRR, head queries (?, r, t)",
    "mrr_optimistic": "MRR with optimistic ties (bound)",
    "mrr_pessimistic": "MRR with pessimistic ties (bound)",
    "auc": "ROC-AUC vs sampled type-constrained negatives (seeded; see protocol)",
    "queries": "ranking queries",
    "cold_mrr": "MRR, cold triples (an entity with <= 3 training edges; see protocol)",
    "cold_queries": "ranking queries on cold triples",
    "auc_hard_negatives": "ROC-AUC vs the dataset's shipped negatives",
    "tc_mrr": "MRR, type-constrained candidates", "tc_hits@1": "Hits@1, type-constrained",
    "tc_hits@3": "Hits@3, type-constrained", "tc_hits@10": "Hits@10, type-constrained",
}
MAX_BARS = 60

CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%}code{background:#f3f3f3;padding:0 .2em}.note{color:#666}
"""


def fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.4f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt(x) for x in v)
    if isinstance(v, dict):
        return "; ".join(f"{k}: {fmt(x)}" for k, x in v.items())
    return str(v)


def _cell(v: Any) -> str:
    cls = ' class="n"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
    return f"<td{cls}>{html.escape(fmt(v))}</td>"


def _table(header: list[str] | None, rows: list[list[Any]]) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" \
        if header else ""
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _compact(v: Any) -> Any:
    """Nested settings as one-line JSON; scalars as they are."""
    return json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list)) else v


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def curves_png(history: list[dict]) -> bytes | None:
    """Loss, sampled validation MRR and edges/s per epoch; None without history."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot global state
    from matplotlib.ticker import MaxNLocator

    panels = [("loss", "training loss"), ("valid_mrr_sampled", "validation MRR (per epoch)"),
              ("edges_per_s", "edges/s")]
    panels = [(k, t) for k, t in panels if any(h.get(k) is not None for h in history)]
    if not panels:
        return None
    fig = Figure(figsize=(4.2 * len(panels), 3.2))
    for i, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        pts = [(h.get("epoch", j), h[key]) for j, h in enumerate(history)
               if h.get(key) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def per_relation_figure(rows: list[dict], key: str = "mrr"):
    """Horizontal bars of per-relation MRR, best first, each labelled with its value; the axis
    follows the data (low MRRs stay visible) and relation labels are wrapped, never cut. With
    many relations the best and worst MAX_BARS/2 are shown and the caption says so.
    Returns (figure or None, caption)."""
    from matplotlib.figure import Figure

    rows = sorted((r for r in rows if r["queries"] and r[key] is not None
                   and not math.isnan(r[key])),
                  key=lambda r: -r[key])
    if not rows:
        return None, "no relation has evaluation triples"
    note = f"all {len(rows)} relations with evaluation triples"
    if len(rows) > MAX_BARS:
        half = MAX_BARS // 2
        note = (f"best {half} and worst {half} of {len(rows)} relations (full table below)")
        rows = rows[:half] + rows[-half:]
    labels = ["\n".join(textwrap.wrap(f"{r.get('label') or r['relation']} ({r['relation']}, "
                                      f"n={r['queries']})", 42)) for r in rows]
    lines = sum(label.count("\n") + 1 for label in labels)
    fig = Figure(figsize=(9, 0.8 + 0.17 * lines + 0.08 * len(rows)))
    ax = fig.add_subplot(1, 1, 1)
    values = [r[key] for r in rows]
    bars = ax.barh(range(len(rows)), values, color="#4878a8")
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], padding=2, fontsize=7)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, min(1.0, max(max(values) * 1.15, 0.02)))
    ax.set_xlabel("filtered MRR (realistic ties)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig, note


def per_relation_png(rows: list[dict], key: str = "mrr") -> tuple[bytes | None, str]:
    fig, note = per_relation_figure(rows, key)
    return (_png(fig) if fig is not None else None), note


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def write_report(out: str, *, metrics: dict, protocol: dict, per_relation: list[dict],
                 history: list[dict], context: dict, model_config: dict | None = None,
                 ) -> dict[str, str]:
    """Write ``report.html`` (+ PNGs) under ``out``; returns the written URIs by name."""
    store = get_store(out)
    written: dict[str, str] = {}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>"
             f"{html.escape('kg_ops evaluation: ' + str(context.get('model', '')))}</title>"
             f"<style>{CSS}</style></head><body><h1>Link-prediction evaluation</h1>",
             _table(None, [[k, v] for k, v in context.items()]),
             "<h2>Metrics</h2>",
             _table(["metric", "value"],
                    [[LABELS.get(k, k), metrics[k]] for k in HEADLINE if k in metrics])]

    parts.append("<h2>Protocol</h2>")
    parts.append(_table(["item", "setting"], [[k, v] for k, v in protocol.items()]))

    if model_config:
        parts.append("<h2>Model</h2>")
        parts.append(_table(["setting", "value"],
                            [[k, _compact(v)] for k, v in sorted(model_config.items())]))

    parts.append("<h2>Training curves</h2>")
    curves = curves_png(history)
    if curves is None:
        parts.append("<p class='note'>The training run recorded no per-epoch history.</p>")
    else:
        written["curves_png"] = join(out, "training_curves.png")
        store.write_bytes(written["curves_png"], curves)
        parts.append(_img(curves, "training curves"))
        parts.append("<p class='note'>Validation MRR during training is computed against sampled "
                     "negatives and is not comparable with the filtered MRR above.</p>")

    parts.append("<h2>Per-relation MRR</h2>")
    bars, note = per_relation_png(per_relation)
    if bars is not None:
        written["per_relation_png"] = join(out, "per_relation_mrr.png")
        store.write_bytes(written["per_relation_png"], bars)
        parts.append(_img(bars, "per-relation MRR"))
    parts.append(f"<p class='note'>{html.escape(note)}</p>")
    if per_relation:
        cols = [c for c in per_relation[0] if c != "relation_id"]
        parts.append(_table(cols, [[r[c] for c in cols] for r in per_relation]))
    parts.append("</body></html>")

    written["report"] = join(out, "report.html")
    store.write_bytes(written["report"], "\n".join(parts).encode())
    return written
