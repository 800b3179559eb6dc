"""Version history semantics of the refresh DAG (kg_ops.airflow.runs): a version is dated by its
run's logical date; a backfilled past date never becomes a newer date's gate baseline and is
never announced on the asset downstream DAGs consume; the gate's failure is a clean message.

The context here is the part of Airflow's task context these functions read (params, XCom, the
dag run, inlet/outlet event accessors), built by hand; the whole DAG is exercised for real in
test_kg_embedding_refresh.py and tests/system/."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from kg_ops.airflow.runs import _previous_release, check_quality_gate, publish_version

CURRENT, PAST, ALIAS = "kg_embeddings", "kg_embeddings_past", "alias"


def event(date: str, mrr: float, run_id: str | None = None):
    return SimpleNamespace(extra={"logical_date": date, "mrr": mrr,
                                  "run_id": run_id or f"scheduled__{date}"},
                           timestamp=datetime(2026, 12, 1, tzinfo=UTC))


def day(d: int) -> str:
    return datetime(2026, 11, d, 2, tzinfo=UTC).isoformat(timespec="seconds")


class Outlet:
    def __init__(self):
        self.added = []

    def add(self, asset, extra=None):
        self.added.append((asset, extra))


def test_baseline_is_the_newest_current_version_before_this_date():
    events = {CURRENT: [event(day(5), 0.30), event(day(7), 0.35), event(day(3), 0.20)]}
    assert _previous_release(events, CURRENT, "r", day(8))["mrr"] == 0.35
    assert _previous_release(events, CURRENT, "r", day(6))["mrr"] == 0.30   # a backfill of 11-06
    assert _previous_release(events, CURRENT, "r", day(2)) is None          # nothing older
    # A re-run of 11-07 never compares with its own earlier publish.
    assert _previous_release(events, CURRENT, "scheduled__" + day(7), day(7))["mrr"] == 0.30


def test_publish_routes_past_dates_to_history_only():
    inlet = {CURRENT: [event(day(7), 0.35)]}
    for date, expected in ((day(8), CURRENT), (day(7), CURRENT), (day(1), PAST)):
        outlets = {ALIAS: Outlet()}
        record = publish_version({"inlet_events": inlet, "outlet_events": outlets},
                                 {"logical_date": date, "mrr": 0.3}, CURRENT, PAST, ALIAS)
        assert outlets[ALIAS].added == [(expected, record)]
        assert record["current"] is (expected == CURRENT)


def gate_context(min_mrr: float):
    run = SimpleNamespace(run_id="manual__1", logical_date=datetime(2026, 11, 1, 2, tzinfo=UTC))
    return {"params": {"min_mrr": min_mrr, "max_mrr_drop": 0.05, "model": "rgcn"},
            "dag_run": run, "inlet_events": {}}


def evaluated(mrr: float) -> dict:
    """The evaluate task's result and the run's plan, as the gate receives them."""
    return {"result": {"metrics": {"mrr": mrr}, "outputs": {"report": "/r/report.html"}},
            "plan": {"run_key": "20261101T020000Z"}}


def test_gate_failure_raises_without_a_deprecation_warning():
    """The gate's message is the first thing in the log: no deprecation warning before it."""
    from airflow.sdk.exceptions import AirflowFailException

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AirflowFailException, match="MRR 0.0310 is below min_mrr 0.2000"):
            check_quality_gate(gate_context(0.2), CURRENT, **evaluated(0.031))
        record = check_quality_gate(gate_context(0.2), CURRENT, **evaluated(0.31))
    assert record["logical_date"] == day(1) and record["mrr"] == 0.31
