"""The HTML report on its own: sections, escaping, many relations, missing history."""

from __future__ import annotations

import math

from kg_ops.evaluate.report import MAX_BARS, write_report


def rows(n: int) -> list[dict]:
    return [{"relation_id": i, "relation": f"rel<{i}>", "label": "", "queries": 0 if i == 0 else 4,
             "mrr": None if i == 0 else i / n, "hits@1": math.nan if i == 0 else 0.5}
            for i in range(n)]


def test_many_relations_show_best_and_worst_and_every_row_in_the_table(tmp_path):
    written = write_report(str(tmp_path), metrics={"mrr": 0.25, "auc": 0.75},
                           protocol={"ties": "a < b & c"}, per_relation=rows(80),
                           history=[], context={"model": "m<1>"},
                           model_config={"training": {"lr": 0.01}})
    page = (tmp_path / "report.html").read_text()
    assert set(written) == {"report", "per_relation_png"}
    assert f"best {MAX_BARS // 2} and worst {MAX_BARS // 2} of 79 relations" in page
    assert page.count("<tr><td>rel&lt;") == 80          # the full table, escaped
    assert "a &lt; b &amp; c" in page and "m&lt;1&gt;" in page and "<1>" not in page
    assert "{&quot;lr&quot;: 0.01}" in page               # nested settings as compact JSON
    assert "<td class=\"n\">0.2500</td>" in page
    assert "recorded no per-epoch history" in page
    assert (tmp_path / "per_relation_mrr.png").read_bytes().startswith(b"\x89PNG")


def test_no_relation_with_queries_gives_a_note_not_a_plot(tmp_path):
    written = write_report(str(tmp_path), metrics={}, protocol={}, per_relation=rows(1),
                           history=[{"epoch": 1, "loss": None}], context={})
    page = (tmp_path / "report.html").read_text()
    assert "no relation has evaluation triples" in page
    assert "per_relation_png" not in written and "curves_png" not in written


def test_per_relation_axis_follows_low_values_and_long_labels_are_whole():
    """Low MRRs (0.01-0.04) fill the axis instead of a fixed 0-1 one, each bar carries its
    value, and a long relation label is wrapped in full, not cut."""
    from kg_ops.evaluate.report import per_relation_figure

    long_label = "located in the administrative territorial entity of the country"
    data = [{"relation": "P131", "label": long_label, "queries": 5, "mrr": 0.04},
            {"relation": "P17", "label": "country", "queries": 3, "mrr": 0.01}]
    fig, note = per_relation_figure(data)
    ax = fig.axes[0]
    low, high = ax.get_xlim()
    assert low == 0 and 0.04 < high <= 0.05
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert ticks[0].replace("\n", " ") == f"{long_label} (P131, n=5)"
    assert ticks[1] == "country (P17, n=3)"
    assert [t.get_text() for t in ax.texts] == ["0.040", "0.010"]   # value beside each bar
    assert note == "all 2 relations with evaluation triples"
