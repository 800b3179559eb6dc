"""The tune report: one self-contained HTML page (the trials' table, the best recipe) and a plot
of the trials, written beside it as ``trials.png`` (the evaluation report's conventions)."""

from __future__ import annotations

import html
from typing import Any

from kg_ops.evaluate.report import CSS, _compact, _img, _png, _table
from kg_ops.store import get_store, join

STATUS_COLOURS = {"completed": "#2a7f3f", "ASHA": "#c77c1a", "budget": "#7a7a7a",
                  "error": "#b22222"}


def _colour(status: str) -> str:
    key = ("completed" if status.startswith("completed") else "ASHA" if "ASHA" in status
           else "error" if status == "error" else "budget")
    return STATUS_COLOURS[key]


def trials_png(trials: list[dict], best_id: str) -> bytes | None:
    """Validation MRR per epoch of every trial (the best in bold), and each trial's best
    validation MRR coloured by how it ended."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    ran = [t for t in trials if t["history"]]
    if not ran:
        return None
    fig = Figure(figsize=(11, 3.8))
    ax = fig.add_subplot(1, 2, 1)
    for t in ran:
        is_best = t["trial_id"] == best_id
        ax.plot([h["epoch"] for h in t["history"]], [h["valid_mrr"] for h in t["history"]],
                color=_colour(t["status"]), linewidth=2.5 if is_best else 1,
                alpha=1 if is_best else 0.6, marker="o", markersize=2,
                label=f"best: {best_id}" if is_best else None)
    ax.set_title("validation MRR per epoch (sampled, filtered)")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax = fig.add_subplot(1, 2, 2)
    order = sorted(ran, key=lambda t: -(t["best_valid_mrr"] or 0))
    bars = ax.barh(range(len(order)), [t["best_valid_mrr"] or 0 for t in order],
                   color=[_colour(t["status"]) for t in order])
    ax.bar_label(bars, labels=[f"{t['best_valid_mrr'] or 0:.3f} ({t['epochs']} ep)"
                               for t in order], padding=2, fontsize=7)
    ax.set_yticks(range(len(order)), [t["trial_id"] for t in order], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, min(1.0, max(t["best_valid_mrr"] or 0 for t in order) * 1.3 + 0.02))
    ax.set_title("best validation MRR per trial (green completed, orange stopped by ASHA, "
                 "grey time budget)", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def write_report(out: str, trials: list[dict], best: dict,
                 context: dict[str, Any]) -> dict[str, str]:
    """Write ``report.html`` and ``trials.png`` under ``out``; returns their URIs."""
    store = get_store(out)
    written: dict[str, str] = {}
    names = sorted({k for t in trials for k in t["options"]})
    rows = [[t["trial_id"], t["status"], t["epochs"], t["best_valid_mrr"], t["best_epoch"],
             *[_compact(t["options"].get(n)) for n in names]]
            for t in sorted(trials, key=lambda t: -(t["best_valid_mrr"] or -1))]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>kg_ops tune: "
             f"{html.escape(out)}</title><style>{CSS}</style></head><body>"
             "<h1>Training recipe search (Ray Tune)</h1>",
             _table(None, [[k, v] for k, v in context.items()]),
             "<h2>Best trial</h2>",
             _table(None, [["trial", best["trial_id"]], ["validation MRR", best["valid_mrr"]],
                           ["epochs", best["epochs"]], ["status", best["status"]],
                           ["model (a kgops train output)", best["model"]]]),
             "<h3>Its recipe (<code>kgops train --tuned</code> applies it)</h3>",
             _table(["option", "value"], [[k, _compact(v)] for k, v in best["config"].items()]),
             "<h2>Trials</h2>"]
    png = trials_png(trials, best["trial_id"])
    if png is not None:
        written["plot"] = join(out, "trials.png")
        store.write_bytes(written["plot"], png)
        parts.append(_img(png, "trials"))
    parts.append("<p class='note'>Validation MRR here is the training loop's per-epoch "
                 "filtered MRR against sampled type-constrained candidates: it ranks trials, "
                 "and is not comparable with `kgops evaluate`'s full ranking.</p>")
    parts.append(_table(["trial", "status", "epochs", "best valid MRR", "best epoch", *names],
                        rows))
    parts.append("</body></html>")
    written["report"] = join(out, "report.html")
    store.write_bytes(written["report"], "\n".join(parts).encode())
    return written
