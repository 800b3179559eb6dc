"""A servable model version: the output of ``kgops evaluate``.

The evaluate stage is where a model becomes a version: it holds the exported embeddings
(``embeddings.parquet``), the metrics the quality gate judged, and (in its manifest) the
training artifact whose decoder scores them and the graph they embed. Serving that directory,
rather than a bare training output, means what answers queries is exactly what was measured.
Light module (no torch): the deployer and the Airflow side read versions too.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from kg_ops.errors import KGOpsError
from kg_ops.manifest import manifest_uri, require_manifest
from kg_ops.store import get_store, normalize

HEADLINE = ("mrr", "hits@1", "hits@3", "hits@10", "auc", "auc_hard_negatives")


class VersionError(KGOpsError):
    pass


@dataclass
class ModelVersion:
    """Where a version's parts live and what it measured. ``id`` is a short hash of the
    evaluation manifest: the same evaluation is the same version wherever it is served."""

    uri: str
    id: str
    model_uri: str
    graph_uri: str
    embeddings_uri: str
    created_at: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelVersion:
        return cls(**d)


def open_version(uri: str) -> ModelVersion:
    """The model version at ``uri`` (a ``kgops evaluate`` output), or a clear error."""
    uri = normalize(uri)
    manifest = require_manifest(uri)
    if manifest.get("stage") == "train":
        raise VersionError(f"{uri} is a training output; serve its evaluation (embeddings + "
                           f"metrics): `kgops evaluate --model {uri} --graph G --out E`, then "
                           "`kgops serve --model E`")
    if manifest.get("stage") != "evaluate":
        raise VersionError(f"{uri} holds a '{manifest.get('stage')}' artifact; `kgops serve "
                           "--model` takes the output directory of `kgops evaluate`")
    try:
        model_uri = manifest["inputs"]["model"]["uri"]
        graph_uri = manifest["inputs"]["graph"]["uri"]
        embeddings = manifest["outputs"]["embeddings"]
    except KeyError as exc:
        raise VersionError(f"{manifest_uri(uri)}: no {exc} entry; it was written by an older "
                           "kg_ops: rerun `kgops --force evaluate`") from exc
    digest = hashlib.sha256(get_store(uri).read_bytes(manifest_uri(uri))).hexdigest()
    metrics = {k: manifest.get("metrics", {}).get(k) for k in HEADLINE
               if manifest.get("metrics", {}).get(k) is not None}
    return ModelVersion(uri=uri, id=digest[:12], model_uri=model_uri, graph_uri=graph_uri,
                        embeddings_uri=embeddings, created_at=manifest.get("created_at", ""),
                        metrics=metrics)
