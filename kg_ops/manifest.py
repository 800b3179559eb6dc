"""Stage manifests: the commit marker of every stage.

A stage writes all its files first and ``_manifest.json`` last; the manifest's presence means the
stage is complete. A stage starting over first removes any old manifest, so a crash half-way
never leaves a directory that looks complete. A complete manifest with the same input hashes and
config lets the stage be skipped (unless forced): retrying is always safe.

Usage::

    with Stage("encode", out_uri, config={...}, inputs={"graph": graph_uri}) as st:
        if st.reused:
            return st.manifest
        with st.phase("fit"):
            ...
        st.counts["nodes"] = n
        st.metrics["nodes_per_s"] = ...

``kgops --force <stage>`` (every stage function takes ``force=``) recomputes even when a
complete identical run exists.

The manifest lists every file of the stage with its size (and the SHA-256 of small files) and
carries a checksum of its own content. Reuse and every consumer (:func:`require_manifest`)
verify both, so an output deleted or truncated after the stage ran, or a manifest edited by
hand, is caught with a message naming the file and the stage to rerun.

On leaving the block without an exception the manifest is written and a line
``KGOPS_MANIFEST <uri>`` is printed to stdout: that is how an Airflow operator watching the Ray
job finds the stage's result without data travelling through XCom.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from typing import Any

from kg_ops.errors import KGOpsError
from kg_ops.store import ArtifactStore, LocalStore, StoreError, get_store, join, normalize

log = logging.getLogger(__name__)

MANIFEST_NAME = "_manifest.json"
MARKER = "KGOPS_MANIFEST"
FORMAT = "kgops-manifest/1"
_VERSIONED = ("kg_ops", "numpy", "pandas", "pyarrow", "torch", "torch-geometric", "ray",
              "scikit-learn", "transformers", "pymetis")


class StageInputError(KGOpsError):
    """An input artifact is missing or incomplete; the message says which and what to run."""


def manifest_uri(out: str) -> str:
    return join(out, MANIFEST_NAME)


def read_manifest(uri: str, store: ArtifactStore | None = None) -> dict | None:
    """The manifest of the artifact directory ``uri`` (or the manifest file itself), or None."""
    target = uri if uri.endswith(MANIFEST_NAME) else manifest_uri(uri)
    store = store or get_store(target)
    if not store.exists(target):
        return None
    return store.read_json(target)


_DESCRIBE = {"import": "a graph (kgops import / synth)", "encode": "features (kgops encode)",
             "partition": "partitions (kgops partition)", "train": "a model (kgops train)",
             "evaluate": "an evaluation (kgops evaluate)", "validate": "a validation report",
             "tune": "a recipe search (kgops tune)"}


def require_manifest(uri: str, stage: str | None = None) -> dict:
    """The verified manifest of a finished input, or a clear error saying what to run: missing
    or incomplete, another stage's artifact, edited by hand, or files missing/changed."""
    manifest = read_manifest(uri)
    if manifest is None:
        what = f"the '{stage}' stage" if stage else "the stage that produces it"
        raise StageInputError(
            f"{uri} has no {MANIFEST_NAME}: it does not exist or is incomplete (an interrupted "
            f"run). Run {what} into {uri} first."
        )
    if stage and manifest.get("stage") != stage:
        found = manifest.get("stage")
        raise StageInputError(f"{uri} holds {_DESCRIBE.get(str(found), repr(found))}, not "
                              f"{_DESCRIBE.get(stage, stage)}: check the path")
    problem = verify(uri, manifest)
    if problem:
        raise StageInputError(f"{problem}. Rerun the '{manifest.get('stage')}' stage into "
                              f"{uri} (with `kgops --force`)")
    return manifest


HASH_MAX_BYTES = 256 << 10   # files up to this size are hashed too (cheap); larger: size only
_CHECK_FILES: contextvars.ContextVar[bool] = contextvars.ContextVar("kgops_check_files",
                                                                     default=True)


@contextlib.contextmanager
def files_unchecked() -> Iterator[None]:
    """Consumers in this block skip the per-file checks (the manifest's own checksum still
    counts): for ``kgops validate``, which inspects the files' content itself and reports
    each problem precisely."""
    token = _CHECK_FILES.set(False)
    try:
        yield
    finally:
        _CHECK_FILES.reset(token)


def manifest_checksum(manifest: dict) -> str:
    """SHA-256 of the manifest's content without its own ``checksum`` field."""
    body = {k: v for k, v in json.loads(_canonical(manifest)).items() if k != "checksum"}
    return hashlib.sha256(_canonical(body).encode()).hexdigest()


def list_files(store: ArtifactStore, out: str) -> dict[str, dict[str, Any]]:
    """{relative path: {"size", ["sha256"]}} of every file of a stage's output."""
    files = {}
    for uri, size in store.sizes(out).items():
        rel = uri[len(out.rstrip("/")) + 1:]
        if rel and rel != MANIFEST_NAME:
            files[rel] = {"size": size}
            if size <= HASH_MAX_BYTES:
                files[rel]["sha256"] = store.sha256(uri)
    return files


def verify(uri: str, manifest: dict, store: ArtifactStore | None = None) -> str | None:
    """What is wrong with a complete artifact (None when nothing): its manifest edited after
    it was written, or a listed file missing or changed. Manifests written before these
    records existed pass."""
    uri = normalize(uri)
    if "checksum" in manifest and manifest["checksum"] != manifest_checksum(manifest):
        return (f"{manifest_uri(uri)} was edited after the stage wrote it (its checksum does not "
                "match its content), so the artifact cannot be trusted")
    store = store or get_store(uri)
    files = (manifest.get("files") or {}) if _CHECK_FILES.get() else {}
    present = store.sizes(uri) if files else {}
    for rel, rec in files.items():
        f_uri = join(uri, rel)
        size = present.get(f_uri)
        if size is None:
            return f"{f_uri} is listed in {manifest_uri(uri)} but missing"
        if size != rec.get("size"):
            return (f"{f_uri} has {size} bytes but {manifest_uri(uri)} records "
                    f"{rec.get('size')}: it changed after the stage wrote it")
        if "sha256" in rec and store.sha256(f_uri) != rec["sha256"]:
            return (f"{f_uri}: content differs from the SHA-256 {manifest_uri(uri)} records: it "
                    "changed after the stage wrote it")
    return None


def library_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in _VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def input_fingerprint(uri: str) -> dict[str, str]:
    """URI plus a hash identifying its content: the manifest's hash for stage artifacts, the file's
    own hash for a plain file, and for a directory without a manifest a hash of its listing."""
    uri = normalize(uri)
    store = get_store(uri)
    m_uri = manifest_uri(uri)
    if store.exists(m_uri):
        return {"uri": uri, "manifest_sha256": store.sha256(m_uri)}
    files = store.list(uri)
    if files == [uri]:
        return {"uri": uri, "sha256": store.sha256(uri)}
    if not files:
        raise StageInputError(f"input not found: {uri}")
    digest = hashlib.sha256("\n".join(files).encode()).hexdigest()
    return {"uri": uri, "listing_sha256": digest}


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


class Stage:
    """One run of one stage into ``out``; see the module docstring."""

    def __init__(self, name: str, out: str, *, config: dict[str, Any] | None = None,
                 inputs: dict[str, str] | None = None, force: bool = False,
                 announce: bool = True):
        self.name = name
        self.out = normalize(out)
        self.store = get_store(self.out)
        self.config = dict(config or {})
        self.input_uris = dict(inputs or {})
        self.force = force
        self.announce = announce
        self.inputs: dict[str, dict[str, str]] = {}
        self.outputs: dict[str, Any] = {}
        self.counts: dict[str, Any] = {}
        self.metrics: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self.extra: dict[str, Any] = {}
        self.manifest: dict | None = None
        self.reused = False
        self._t0 = 0.0

    # --- context protocol -------------------------------------------------------------------
    def __enter__(self) -> Stage:
        self._t0 = time.perf_counter()
        if isinstance(self.store, LocalStore) and LocalStore.path(self.out).is_file():
            raise StoreError(f"{self.out} is an existing file: a stage writes a folder there. "
                             "Choose another output path, or remove the file")
        self.inputs = {k: input_fingerprint(v) for k, v in self.input_uris.items()}
        existing = read_manifest(self.out, self.store)
        problem = verify(self.out, existing, self.store) if existing else None
        if problem and not self.force:
            log.warning("%s: not reusing %s: %s; recomputing", self.name, self.out, problem)
        if existing and not self.force and not problem and self._same_work(existing):
            log.info("%s: complete manifest with identical inputs and config at %s; reusing it "
                     "(pass --force to recompute)", self.name, self.out)
            self.manifest, self.reused = existing, True
            self._announce()
            return self
        if existing:
            # Uncommit first: from here on the directory is a work in progress.
            self.store.delete(manifest_uri(self.out))
        log.info("%s: writing to %s", self.name, self.out)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self.reused:
            if exc_type is not None:
                log.error("%s failed; no manifest written at %s", self.name, self.out)
            return
        self.timings.setdefault("total_s", round(time.perf_counter() - self._t0, 3))
        self.manifest = {
            "format": FORMAT,
            "stage": self.name,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "uri": self.out,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "config": self.config,
            "counts": self.counts,
            "metrics": self.metrics,
            "timings": self.timings,
            "versions": library_versions(),
            "ray_job_id": os.environ.get("KGOPS_RAY_SUBMISSION_ID")
            or os.environ.get("RAY_JOB_SUBMISSION_ID"),
            **self.extra,
            "files": list_files(self.store, self.out),
        }
        self.manifest["checksum"] = manifest_checksum(self.manifest)
        self.store.write_json(manifest_uri(self.out), self.manifest)
        self._announce()

    # --- helpers ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase; the duration lands in ``timings[f"{name}_s"]``."""
        t = time.perf_counter()
        log.info("%s: phase %s started", self.name, name)
        try:
            yield
        finally:
            took = time.perf_counter() - t
            self.timings[f"{name}_s"] = round(self.timings.get(f"{name}_s", 0.0) + took, 3)
            log.info("%s: phase %s took %.2fs", self.name, name, took)

    def uri(self, *parts: str) -> str:
        return join(self.out, *parts)

    def _same_work(self, existing: dict) -> bool:
        return (existing.get("stage") == self.name
                and _canonical(existing.get("inputs")) == _canonical(self.inputs)
                and _canonical(existing.get("config")) == _canonical(self.config))

    def _announce(self) -> None:
        if self.announce:
            print(f"{MARKER} {manifest_uri(self.out)}", flush=True)
