"""Deterministic Ray submission ids for Airflow task instances.

The id is a pure function of (dag_id, run_id, task_id, map_index): a retried or re-run task
instance finds the Ray job its earlier try submitted instead of starting a duplicate. Ray ids
must not contain ``/`` and break when very long, so the readable part is sanitised and capped and
a hash of the exact identifiers keeps ids distinct after sanitising. A resubmission after a failed
or stopped attempt gets a ``-rN`` suffix.
"""

from __future__ import annotations

import hashlib
import json
import re

MAX_LEN = 96
_HASH_LEN = 12
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def submission_id_for(dag_id: str, run_id: str, task_id: str, map_index: int | None = -1,
                      prefix: str = "af") -> str:
    """``af-<dag>-<task>[-<map>]-<run>-<hash12>``, at most ``MAX_LEN`` characters."""
    mi = -1 if map_index is None else int(map_index)
    digest = hashlib.sha256(json.dumps([dag_id, run_id, task_id, mi]).encode()).hexdigest()
    parts = [prefix, dag_id, task_id] + ([str(mi)] if mi >= 0 else []) + [run_id]
    readable = _UNSAFE.sub("_", "-".join(parts)).strip("._-")
    # Room for "-<hash>" and a later "-rNN" attempt suffix.
    readable = readable[: MAX_LEN - _HASH_LEN - 1 - 4].rstrip("._-")
    return f"{readable}-{digest[:_HASH_LEN]}"


def attempt_id(base: str, attempt: int) -> str:
    """The id of the ``attempt``-th submission (1 = the base id itself)."""
    return base if attempt <= 1 else f"{base}-r{attempt}"


def sanitize_submission_id(value: str) -> str:
    """Make a user-given id safe for Ray (no ``/``; hashed when too long)."""
    clean = _UNSAFE.sub("_", value).strip("._-")
    if clean == value and len(value) <= MAX_LEN - 4:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:_HASH_LEN]
    return f"{clean[: MAX_LEN - _HASH_LEN - 5].rstrip('._-')}-{digest}"
