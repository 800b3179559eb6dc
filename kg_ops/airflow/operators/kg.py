"""KG pipeline operators: each submits one ``kgops <stage>`` command as a Ray job.

They are thin: the command line *is* the contract between Airflow and Ray (DESIGN.md "The
bridge"). Everything about submission, re-attachment, deferral, timeouts, log streaming and
results comes from :class:`SubmitRayJobOperator`; the task's return value is the stage's manifest
URI with its headline metrics (XCom never carries data).

Reuse them in your own DAG::

    from kg_ops.airflow import PartitionGraphOperator, TrainEmbeddingsOperator, RayJobSensor

    parts = "s3://kg/runs/{{ ds_nodash }}/partitions"
    partition = PartitionGraphOperator(task_id="partition", graph_uri="s3://kg/graph",
                                       out_uri=parts, parts=8)
    train = TrainEmbeddingsOperator(task_id="train", partitions_uri=parts,
                                    out_uri="s3://kg/runs/{{ ds_nodash }}/model", workers=8,
                                    epochs=30, model="relgnn", wait_for_completion=False)

All URIs and options are templated.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any, ClassVar

from kg_ops.airflow.links import EvaluationReportLink, RayJobLink
from kg_ops.airflow.operators.ray import SubmitRayJobOperator
from kg_ops.config import (
    IMPORTERS,
    ConfigError,
    EncodeConfig,
    EvaluateConfig,
    ImportConfig,
    Option,
    PartitionConfig,
    StageConfig,
    SynthConfig,
    TrainConfig,
    TuneConfig,
    as_bool,
)
from kg_ops.config.tune import TRAIN_OPTIONS_NOT_TUNED
from kg_ops.store import join


def option_fields(config_class: type[StageConfig] | None,
                  uri_options: dict[str, str]) -> tuple[str, ...]:
    """The config options an operator takes under their own names (URIs excluded)."""
    if config_class is None:
        return ()
    return tuple(n for n in config_class.names() if n not in uri_options.values())


class KgStageOperator(SubmitRayJobOperator):
    """Base class: ``kgops [--force] <command...> --out <out_uri> [extra_args...]``.

    :param out_uri: where the stage writes its artifacts and ``_manifest.json`` (templated).
    :param extra_args: more ``kgops`` options, appended verbatim (templated).
    :param force: recompute even if this stage already finished with identical inputs
        (passes ``kgops --force`` and resubmits a job that already succeeded).
    """

    template_fields: Sequence[str] = (*SubmitRayJobOperator.template_fields, "out_uri",
                                      "extra_args")
    ui_color = "#e4f0e8"
    #: the stage's options (subclasses that take them as keyword arguments)
    config_class: ClassVar[type[StageConfig] | None] = None
    #: operator argument -> config option, for the URIs the operator names ``*_uri``
    uri_options: ClassVar[dict[str, str]] = {}

    #: CPUs reserved for the job's driver (``entrypoint_num_cpus`` overrides): 0 where the
    #: driver only coordinates Ray workers (encode, train), 1 where it computes itself
    #: (import, partition, evaluate), so Ray does not pile several of those onto one CPU.
    driver_cpus: ClassVar[float] = 1

    def __init__(self, *, out_uri: str, extra_args: Sequence[str] | None = None, **kwargs):
        kwargs.setdefault("entrypoint_num_cpus", self.driver_cpus)
        super().__init__(**kwargs)
        self.out_uri = out_uri
        self.extra_args = list(extra_args or [])

    def stage_command(self) -> list[str]:
        """The ``kgops`` sub-command and its options, without ``--out``."""
        raise TypeError(f"{type(self).__name__} must define stage_command()")

    @classmethod
    def take_options(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Pop the stage's options out of the operator's keyword arguments."""
        names = option_fields(cls.config_class, cls.uri_options)
        return {n: kwargs.pop(n) for n in names if n in kwargs}

    def set_options(self, options: dict[str, Any]) -> None:
        """One attribute per option (templated), the config's default where not given."""
        for name in option_fields(self.config_class, self.uri_options):
            setattr(self, name, options.get(name, self.config_class.option(name).default))

    def stage_config(self) -> StageConfig:
        """The rendered options as the stage's config: typed and checked before submitting."""
        values = {n: getattr(self, n) for n in option_fields(self.config_class,
                                                              self.uri_options)}
        values.update({opt: str(getattr(self, arg)) for arg, opt in self.uri_options.items()})
        return self.checked(self.config_class, **values)

    def checked(self, config_class: type[StageConfig], **values: Any) -> StageConfig:
        """``config_class(**values)``; a bad value fails the task before anything is submitted."""
        try:
            return config_class(**values)
        except ConfigError as exc:
            raise ValueError(f"{self.task_id}: {exc}") from exc

    def build_entrypoint(self, context: Any) -> str:
        args = ["kgops"]
        if as_bool(self.force):
            args.append("--force")
        args += [*self.stage_command(), "--out", str(self.out_uri), *map(str, self.extra_args)]
        return shlex.join(args)


def import_options() -> dict[str, Option]:
    """The importers' options the import operator takes by name: every option of every
    :data:`~kg_ops.config.IMPORTERS` config but those it derives from ``source``,
    ``datasets_root``, ``triples`` and ``out_uri``. Options of several importers (``seed``,
    ``on_bad_rows``) are one option with one default."""
    derived = ("out", "root", "size", "train", "valid", "test")
    options: dict[str, Option] = {}
    for config_class in IMPORTERS.values():
        for opt in config_class.options():
            if opt.name not in derived:
                options.setdefault(opt.name, opt)
    return options


IMPORT_OPTIONS = import_options()


class ImportGraphOperator(KgStageOperator):
    """Import (and validate) the graph into the canonical Parquet + schema.json format.

    Takes the options of ``kgops import codex|debian|triples`` by their
    :mod:`kg_ops.config.importers` names (``on_bad_rows``, ``seed``, ``header``, ``split``,
    ``relations``, ``entities``, ``name``, ``from_apt``) with their defaults; all templated and
    checked before the job is submitted by the chosen source's config. An option the source
    does not read, given a value other than its default, is refused.

    :param source: ``synth`` | ``codex-s`` | ``codex-m`` | ``debian`` | ``triples`` | ``graph``.
        ``graph`` validates an already-imported graph at ``graph_uri`` in place.
    :param datasets_root: folder with the raw ``codex/`` and ``debian/`` datasets; empty:
        ``codex-s`` reads the CoDEx-S copy shipped in kg_ops (``debian`` then needs
        ``from_apt=True``).
    :param triples: for ``triples``: ``{"train": uri, "valid": uri, "test": uri}``.
    :param synth_nodes / synth_edges / synth_seed: for ``synth`` (:class:`SynthConfig`).
    """

    template_fields: Sequence[str] = (*KgStageOperator.template_fields, "source", "graph_uri",
                                      "datasets_root", "synth_nodes", "synth_edges",
                                      "synth_seed", "triples", *IMPORT_OPTIONS)

    def __init__(self, *, source: str = "synth", graph_uri: str = "", datasets_root: str = "",
                 synth_nodes: int | str = 3000, synth_edges: int | str = 24000,
                 synth_seed: int | str = 0, triples: dict[str, str] | None = None, **kwargs):
        options = {n: kwargs.pop(n) for n in IMPORT_OPTIONS if n in kwargs}
        super().__init__(**kwargs)
        self.source = source
        self.graph_uri = graph_uri
        self.datasets_root = datasets_root
        self.synth_nodes, self.synth_edges, self.synth_seed = synth_nodes, synth_edges, synth_seed
        self.triples = triples or {}
        for name, opt in IMPORT_OPTIONS.items():
            setattr(self, name, options.get(name, opt.default))

    def stage_command(self) -> list[str]:
        source = str(self.source)
        if source == "synth":
            self._refuse_unread(source, ("on_bad_rows",))   # synth writes no bad rows
            config = self.checked(SynthConfig, nodes=self.synth_nodes, edges=self.synth_edges,
                                  seed=self.synth_seed, out=str(self.out_uri))
            return ["synth", *config.to_args(exclude=("out",))]
        config = self.import_config()
        return ["import", config.importer, *config.to_args(exclude=("out",))]

    def import_config(self) -> ImportConfig:
        """The rendered options as the config of ``source``'s importer, checked."""
        source = str(self.source)
        importer, derived = self._derived(source)
        config_class = IMPORTERS[importer]
        self._refuse_unread(source, config_class.names())
        values = {n: getattr(self, n) for n in config_class.names() if n in IMPORT_OPTIONS}
        return self.checked(config_class, **values, **derived, out=str(self.out_uri))

    def _derived(self, source: str) -> tuple[str, dict[str, Any]]:
        """The importer of ``source`` and the options that follow from ``source``,
        ``datasets_root`` and ``triples``."""
        root = str(self.datasets_root or "")
        root = "" if root == "None" else root
        if source in ("codex-s", "codex-m"):   # without a root: the CoDEx-S copy in kg_ops
            return "codex", {"size": source[-1], "root": join(root, "codex") if root else ""}
        if source == "debian":
            if as_bool(self.from_apt):
                return "debian", {}
            if not root:
                raise ValueError(f"{self.task_id}: source='debian' needs datasets_root (the "
                                 "folder holding debian/) or from_apt=True")
            return "debian", {"root": join(root, "debian")}
        if source == "triples":
            unknown = sorted(set(self.triples) - {"train", "valid", "test"})
            if unknown or not self.triples.get("train"):
                raise ValueError(f"{self.task_id}: source='triples' needs triples={{'train': "
                                 f"uri[, 'valid': uri, 'test': uri]}}; got {self.triples!r}")
            return "triples", {k: v for k, v in self.triples.items() if v}
        raise ValueError(f"{self.task_id}: unknown source {source!r}; expected synth, codex-s, "
                         "codex-m, debian, triples or graph")

    def _refuse_unread(self, source: str, read: Sequence[str]) -> None:
        """An importer option set for a source that does not read it is a mistake: say so."""
        for name, opt in IMPORT_OPTIONS.items():
            if name in read:
                continue
            try:
                value = opt.coerce(getattr(self, name))
            except ConfigError as exc:
                raise ValueError(f"{self.task_id}: {exc}") from exc
            if value != opt.default:
                takers = [s for s, c in IMPORTERS.items() if name in c.names()]
                raise ValueError(f"{self.task_id}: {opt.flag} is not read by source "
                                 f"{source!r} (only by {', '.join(takers)}); got {value!r}")

    def build_entrypoint(self, context: Any) -> str:
        if str(self.source) == "graph":
            if not self.graph_uri:
                raise ValueError(f"{self.task_id}: source='graph' needs graph_uri")
            self._refuse_unread("graph", ("on_bad_rows",))
            bad = IMPORT_OPTIONS["on_bad_rows"]
            try:
                mode = bad.coerce(self.on_bad_rows)
                bad.check(mode)
            except ConfigError as exc:
                raise ValueError(f"{self.task_id}: {exc}") from exc
            return shlex.join(["kgops", "validate", str(self.graph_uri), bad.flag, mode])
        return super().build_entrypoint(context)


class EncodeAttributesOperator(KgStageOperator):
    """Fit the attribute encoders over all nodes and encode them on Ray workers.

    Takes every ``kgops encode`` option by its :class:`kg_ops.config.EncodeConfig` name
    (``workers``, ``text_model``, ``encoders``, ...) with its default; all templated and
    checked before the job is submitted.

    :param enabled: ``False`` skips encoding (the model then learns an embedding per entity);
        the task still succeeds and returns ``{"skipped": True}``.
    """

    config_class = EncodeConfig
    uri_options = {"graph_uri": "graph", "out_uri": "out"}
    driver_cpus = 0   # the transform runs on Ray workers
    template_fields: Sequence[str] = (*KgStageOperator.template_fields, "graph_uri", "enabled",
                                      *option_fields(EncodeConfig, uri_options))

    def __init__(self, *, graph_uri: str, enabled: bool | str = True, **kwargs):
        options = self.take_options(kwargs)
        super().__init__(**kwargs)
        self.graph_uri = graph_uri
        self.enabled = enabled
        self.set_options(options)

    def stage_command(self) -> list[str]:
        return ["encode", *self.stage_config().to_args(exclude=("out",))]

    def execute(self, context: Any) -> dict[str, Any]:
        if not as_bool(self.enabled):
            self.log.info("attribute encoding disabled: entities get learned embeddings")
            return {"skipped": True}
        return super().execute(context)


class PartitionGraphOperator(KgStageOperator):
    """Partition training edges (METIS) and expand each part to a self-sufficient K-hop
    neighbourhood.

    Takes every ``kgops partition`` option by its :class:`kg_ops.config.PartitionConfig` name
    (``parts`` required; ``hops``, ``fanout``, ``method``, ``seed``, ...) with its default; all
    templated and checked before the job is submitted.

    :param features_uri: the encode stage's output; ignored if that stage was skipped.
    """

    config_class = PartitionConfig
    uri_options = {"graph_uri": "graph", "out_uri": "out", "features_uri": "features"}
    template_fields: Sequence[str] = (*KgStageOperator.template_fields, "graph_uri",
                                      "features_uri",
                                      *option_fields(PartitionConfig, uri_options))

    def __init__(self, *, graph_uri: str, features_uri: str = "", **kwargs):
        options = self.take_options(kwargs)
        super().__init__(**kwargs)
        self.graph_uri, self.features_uri = graph_uri, features_uri
        self.set_options(options)

    def stage_command(self) -> list[str]:
        config = self.stage_config()
        if config.features and not self._features_exist():
            config = config.replace(features=None)
        return ["partition", *config.to_args(exclude=("out",))]

    def _features_exist(self) -> bool:
        from kg_ops.manifest import read_manifest

        return read_manifest(str(self.features_uri)) is not None


class TrainEmbeddingsOperator(KgStageOperator):
    """Ray Train data-parallel training, one worker per partition.

    Takes every ``kgops train`` option as a keyword argument (``epochs=20``, ``model="relgnn"``,
    ...), with :class:`kg_ops.config.TrainConfig`'s names, types and defaults; all templated.
    Values are checked before the job is submitted. Usually run with
    ``wait_for_completion=False`` and followed by a ``RayJobSensor`` so no worker slot is held
    for hours.
    """

    config_class = TrainConfig
    uri_options = {"partitions_uri": "partitions", "out_uri": "out"}
    driver_cpus = 0   # Ray Train workers compute; the driver coordinates
    template_fields: Sequence[str] = (*KgStageOperator.template_fields, "partitions_uri",
                                      *option_fields(TrainConfig, uri_options))

    def __init__(self, *, partitions_uri: str, **kwargs):
        options = self.take_options(kwargs)
        super().__init__(**kwargs)
        self.partitions_uri = partitions_uri
        self.set_options(options)

    def stage_command(self) -> list[str]:
        return ["train", *self.stage_config().to_args(exclude=("out",))]


class TuneEmbeddingsOperator(KgStageOperator):
    """Search the training recipe with Ray Tune (``kgops tune``): each trial a Ray Train run on
    the same partitions, ASHA early stopping, within ``budget_s`` and ``trials``.

    Takes every ``kgops tune`` option by its :class:`kg_ops.config.TuneConfig` name
    (``budget_s``, ``trials``, ``space``, ...); ``train_options`` is the recipe trials start
    from (``kgops train`` options by name, e.g. ``{"model": "complex", "epochs": 30}``). All
    templated and checked before the job is submitted. The result's ``outputs.model`` is the
    best trial's train output; ``TrainEmbeddingsOperator(tuned=<this out_uri>)`` trains with
    the best recipe.

    :param enabled: ``False`` skips the search (the task succeeds with ``{"skipped": True}``).
    """

    config_class = TuneConfig
    uri_options = {"partitions_uri": "partitions", "out_uri": "out"}
    driver_cpus = 0   # the trials' Ray Train workers compute
    template_fields: Sequence[str] = (*KgStageOperator.template_fields, "partitions_uri",
                                      "train_options", "enabled",
                                      *option_fields(TuneConfig, uri_options))

    def __init__(self, *, partitions_uri: str, train_options: dict[str, Any] | None = None,
                 enabled: bool | str = True, **kwargs):
        options = self.take_options(kwargs)
        super().__init__(**kwargs)
        self.partitions_uri = partitions_uri
        self.train_options = dict(train_options or {})
        self.enabled = enabled
        self.set_options(options)

    def stage_command(self) -> list[str]:
        config = self.stage_config()
        own = set(TuneConfig.names()) | set(TRAIN_OPTIONS_NOT_TUNED)
        not_taken = sorted(set(self.train_options) & own)
        if not_taken:
            raise ValueError(f"{self.task_id}: train_options {', '.join(not_taken)}: options "
                             "of the tune run or of each trial, not of the recipe; give tune "
                             "options to the operator itself")
        try:
            recipe = TrainConfig.from_dict({**self.train_options,
                                            "partitions": config.partitions, "out": config.out})
        except ConfigError as exc:
            raise ValueError(f"{self.task_id}: train_options: {exc}") from exc
        return ["tune", *config.to_args(exclude=("out",)), *recipe.to_args(exclude=own)]

    def execute(self, context: Any) -> dict[str, Any]:
        if not as_bool(self.enabled):
            self.log.info("recipe search disabled")
            return {"skipped": True}
        return super().execute(context)


class EvaluateEmbeddingsOperator(KgStageOperator):
    """Filtered ranking (MRR, Hits@k), ROC-AUC, HTML report and Parquet embeddings export.

    Takes every ``kgops evaluate`` option by its :class:`kg_ops.config.EvaluateConfig` name
    (``split``, ``max_queries``, ``inductive``, ...) with its default; all templated and
    checked before the job is submitted.
    """

    config_class = EvaluateConfig
    uri_options = {"model_uri": "model", "graph_uri": "graph", "out_uri": "out"}
    template_fields: Sequence[str] = (*KgStageOperator.template_fields, "model_uri",
                                      "graph_uri", *option_fields(EvaluateConfig, uri_options))

    operator_extra_links = (RayJobLink(), EvaluationReportLink())

    def __init__(self, *, model_uri: str, graph_uri: str, **kwargs):
        options = self.take_options(kwargs)
        super().__init__(**kwargs)
        self.model_uri, self.graph_uri = model_uri, graph_uri
        self.set_options(options)

    def stage_command(self) -> list[str]:
        return ["evaluate", *self.stage_config().to_args(exclude=("out",))]


class DeployLinkPredictionServiceOperator(KgStageOperator):
    """Make a model version (a ``kgops evaluate`` output) the live version of a link-prediction
    service on the Ray cluster (``kgops serve`` as a Ray job): the new version replaces the
    old one only once it answers health; the old one is recorded for ``kgops serve
    --rollback``.

    :param version_uri: the evaluate stage's output directory.
    :param name: service name (one Serve application per name; default ``kg``).
    :param route_prefix: HTTP route prefix of the service (default ``/kg``).
    :param enabled: ``False`` skips the task (nothing is deployed, the live version stays).
    :param http_host / http_port: where Serve's HTTP proxy binds if Serve is not yet running
        on the cluster (a running Serve keeps the cluster's config).
    :param replicas / num_cpus: model replicas and CPUs per replica.

    The task returns the deployment manifest's URI and outputs (URL, live and previous
    version); every asset in ``outlets`` gets an event whose ``extra`` names the live version
    (the plugin's versions page shows it).
    """

    template_fields: Sequence[str] = (*KgStageOperator.template_fields, "version_uri", "name",
                                      "route_prefix", "enabled", "http_host", "http_port",
                                      "replicas", "num_cpus")

    def __init__(self, *, version_uri: str, name: str = "kg", route_prefix: str = "/kg",
                 enabled: bool | str = True, http_host: str = "", http_port: int | str = "",
                 replicas: int | str = 1, num_cpus: float | str = 1, **kwargs):
        super().__init__(**kwargs)
        self.version_uri, self.name, self.route_prefix = version_uri, name, route_prefix
        self.enabled, self.http_host, self.http_port = enabled, http_host, http_port
        self.replicas, self.num_cpus = replicas, num_cpus

    def stage_command(self) -> list[str]:
        cmd = ["serve", "--model", str(self.version_uri), "--name", str(self.name),
               "--route-prefix", str(self.route_prefix), "--replicas", str(self.replicas),
               "--num-cpus", str(self.num_cpus)]
        if self.http_host:
            cmd += ["--http-host", str(self.http_host)]
        if str(self.http_port):
            cmd += ["--http-port", str(self.http_port)]
        return cmd

    def execute(self, context: Any) -> dict[str, Any]:
        if not as_bool(self.enabled):
            from airflow.exceptions import AirflowSkipException

            raise AirflowSkipException(f"not deploying (enabled={self.enabled!r}): the live "
                                       "version of the service is unchanged")
        return super().execute(context)

    def finish(self, context: Any, sid: str, info: dict, log_tail: str | None = None
               ) -> dict[str, Any]:
        result = super().finish(context, sid, info, log_tail=log_tail)
        outputs = result.get("outputs") or {}
        record = {k: outputs.get(k) for k in ("service", "url", "version", "version_uri",
                                              "previous_version", "previous_version_uri")}
        record["run_id"] = context["dag_run"].run_id
        for asset in self.outlets or []:
            context["outlet_events"][asset].extra = record
        return result
