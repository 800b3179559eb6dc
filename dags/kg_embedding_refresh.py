"""Refresh knowledge-graph embeddings: import -> encode -> partition -> train -> evaluate -> publish
-> deploy.

Runs daily, and also whenever the graph-source asset is updated. Every heavy stage is a ``kgops``
command submitted as a Ray job; XCom carries only artifact URIs and headline metrics. Artifacts go
to ``{artifact_root}/{dag_id}/{run_key}/{stage}`` so a backfill of one date never touches another
date's tree, and a re-run of the same run reuses every stage that already finished.

Trigger a manual run or a backfill from the UI form (Params) or the CLI::

    airflow dags trigger kg_embedding_refresh --conf '{"source": "codex-s", "epochs": 20}'
    airflow backfill create --dag-id kg_embedding_refresh --from-date 2026-11-01 --to-date 2026-11-07
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import (
    DAG,
    Asset,
    AssetAlias,
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    Param,
    get_current_context,
    task,
)

from kg_ops.airflow import (
    DeployLinkPredictionServiceOperator,
    EncodeAttributesOperator,
    EvaluateEmbeddingsOperator,
    ImportGraphOperator,
    PartitionGraphOperator,
    TrainEmbeddingsOperator,
    TuneEmbeddingsOperator,
)
from kg_ops.airflow.params import option_param, stage_params
from kg_ops.airflow.published import (
    EMBEDDINGS_ASSET_NAME,
    EMBEDDINGS_ASSET_URI,
    GRAPH_SOURCE_ASSET_NAME,
    PAST_EMBEDDINGS_ASSET_NAME,
    PAST_EMBEDDINGS_ASSET_URI,
    PUBLISH_ALIAS_NAME,
    SERVICE_ASSET_NAME,
    SERVICE_ASSET_URI,
)
from kg_ops.airflow.runs import (
    check_quality_gate,
    plan_run,
    publish_version,
    warm_start_source,
)
from kg_ops.config import SynthConfig, TrainConfig, TuneConfig

DAG_ID = "kg_embedding_refresh"
ARTIFACT_ROOT = os.environ.get("KGOPS_ARTIFACT_ROOT", "/tmp/kgops-artifacts")
# Empty: CoDEx-S comes from the copy shipped in kg_ops (MIT licence beside it); codex-m and
# debian need a folder holding the raw codex/ and debian/ datasets.
DATASETS_ROOT = os.environ.get("KGOPS_DATASETS", "")
RAY_CONN_ID = os.environ.get("KGOPS_RAY_CONN_ID", "ray_default")
TRAIN_PARAMS = ("model", "epochs", "loss", "max_drift", "retrain_every")  # on the trigger form

graph_source = Asset(name=GRAPH_SOURCE_ASSET_NAME,
                     uri=os.environ.get("KGOPS_GRAPH_SOURCE_URI",
                                        "kgops://graph-source/enterprise-kg"))
embeddings = Asset(name=EMBEDDINGS_ASSET_NAME, uri=EMBEDDINGS_ASSET_URI)
past_embeddings = Asset(name=PAST_EMBEDDINGS_ASSET_NAME, uri=PAST_EMBEDDINGS_ASSET_URI)
published = AssetAlias(name=PUBLISH_ALIAS_NAME)
service = Asset(name=SERVICE_ASSET_NAME, uri=SERVICE_ASSET_URI)
SERVICE_NAME = os.environ.get("KGOPS_SERVICE_NAME", "kg")

with DAG(
    dag_id=DAG_ID,
    description="Nightly refresh of knowledge-graph embeddings on a Ray cluster",
    # No start_date and run_immediately=0: unpausing (the trigger form does it) waits for the
    # next 02:00 instead of starting a scheduled run ahead of the user's own. Backfills take
    # their own dates.
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 2 * * *", timezone="UTC",
                                       run_immediately=timedelta(0)),
        assets=[graph_source]),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=2)},
    tags=["kg_ops", "embeddings"],
    params={
        "source": Param("codex-s", enum=["codex-s", "codex-m", "debian", "synth", "graph"],
                        description="Graph to embed: CoDEx-S (shipped with kg_ops), a raw "
                                    "dataset under datasets_root, a synthetic KG (scale tests), "
                                    "or an already-imported graph (graph_uri)."),
        "graph_uri": Param(None, type=["null", "string"],
                           description="Only with source=graph: URI of an imported kgops "
                                       "graph."),
        "datasets_root": Param(DATASETS_ROOT or None, type=["null", "string"],
                               description="Folder holding the raw codex/ and debian/ datasets "
                                           "(codex-m, debian). Empty: CoDEx-S shipped in "
                                           "kg_ops."),
        "synth_nodes": option_param(SynthConfig, "nodes", default=3000),
        "synth_edges": option_param(SynthConfig, "edges", default=24000),
        "encode_attributes": Param(True, type="boolean",
                                   description="Encode node attributes (BERT for text)."),
        "workers": Param(2, type="integer", minimum=1, maximum=64,
                         description="Ray Train workers = graph partitions."),
        # Training options: type, default, allowed values and help from kg_ops.config.
        **stage_params(TrainConfig, *TRAIN_PARAMS),
        "warm_start": Param(True, type="boolean",
                            description="Start training from the last published version's "
                                        "model (entities matched by key, its encoders "
                                        "reused); a full retrain past max_drift or every "
                                        "retrain_every runs, or when nothing usable was "
                                        "published. On by default: it held quality on "
                                        "CoDEx-M and Debian in a quarter of the time, not "
                                        "quite on CoDEx-S (see README). Off: every run "
                                        "trains from scratch."),
        "tune": Param(False, type="boolean",
                      description="Search the training recipe first (kgops tune with Ray "
                                  "Tune on this run's partitions, about tune_budget_s); "
                                  "train then uses the best recipe. Off by default: re-tune "
                                  "now and then (e.g. monthly) and give nightly runs the "
                                  "winner through tuned_recipe."),
        "tune_budget_s": option_param(TuneConfig, "budget_s"),
        "tune_trials": option_param(TuneConfig, "trials"),
        "tuned_recipe": Param(os.environ.get("KGOPS_TUNED_RECIPE") or None,
                              type=["null", "string"],
                              description="URI of a kgops tune output (a tune run's "
                                          "<artifact_root>/<dag>/<run>/tune): train with its "
                                          "best recipe; options on this form left at their "
                                          "defaults take the recipe's values. Ignored when "
                                          "tune is on (this run's search wins)."),
        "artifact_root": Param(ARTIFACT_ROOT, type="string",
                               description="Local path or s3:// prefix for all artifacts."),
        "force": Param(False, type="boolean",
                       description="Recompute stages even if identical results exist."),
        # Measured on `make run` (CoDEx-S, the default recipe, 8 epochs, 2 workers, attributes):
        # filtered test MRR 0.39; bench_train's default rows 0.41-0.44, the paper preset 0.175.
        # A broken or random model is far below (random ranking ~0.004, the synthetic graph
        # 0.03 by construction).
        "min_mrr": Param(0.15, type="number", minimum=0,
                         description="Gate: fail the run below this filtered test MRR (the "
                                     "default CoDEx-S run measures 0.28; set ~0.01 for "
                                     "source=synth)."),
        "max_mrr_drop": Param(0.05, type="number", minimum=0,
                              description="Gate: fail if MRR drops more than this below the "
                                          "last published version."),
        "deploy": Param(True, type="boolean",
                        description="Deploy the published version as the live version of the "
                                    "link-prediction service (Ray Serve); off: the live "
                                    "version stays."),
    },
    doc_md=__doc__,
) as dag:

    @task(multiple_outputs=True)
    def plan() -> dict:
        """Resolve params into this run's artifact URIs (see kg_ops.airflow.runs)."""
        return plan_run(get_current_context())

    planned = plan()   # planned["graph"] etc.: XComArgs, resolved when each task runs

    common = {"ray_conn_id": RAY_CONN_ID, "force": "{{ params.force }}"}

    @task(inlets=[embeddings], multiple_outputs=True)
    def previous_version() -> dict:
        """The last published version's model and features, when warm_start is on."""
        return warm_start_source(get_current_context(), embeddings)

    previous = previous_version()   # previous["model_uri"] etc.: XComArgs ("" when off)

    import_graph = ImportGraphOperator(
        task_id="import_graph",
        source="{{ params.source }}",
        out_uri=planned["graph"],
        graph_uri="{{ params.graph_uri or '' }}",
        datasets_root="{{ params.datasets_root or '' }}",
        synth_nodes="{{ params.synth_nodes }}",
        synth_edges="{{ params.synth_edges }}",
        **common,
    )
    encode = EncodeAttributesOperator(
        task_id="encode_attributes",
        graph_uri=planned["graph"],
        out_uri=planned["features"],
        enabled="{{ params.encode_attributes }}",
        workers="{{ params.workers }}",
        encoders=previous["features_uri"],
        **common,
    )
    partition = PartitionGraphOperator(
        task_id="partition_graph",
        graph_uri=planned["graph"],
        features_uri=planned["features"],
        out_uri=planned["partitions"],
        parts="{{ params.workers }}",
        **common,
    )
    tune = TuneEmbeddingsOperator(
        task_id="tune",
        partitions_uri=planned["partitions"],
        out_uri=planned["tune"],
        enabled="{{ params.tune }}",
        budget_s="{{ params.tune_budget_s }}",
        trials="{{ params.tune_trials }}",
        train_options={name: "{{ params." + name + " }}" for name in ("model", "epochs", "loss")},
        deferrable=True,
        poll_interval=5,
        job_timeout=6 * 3600,
        **common,
    )
    # `train` owns its Ray job and waits for it in the triggerer: the task shows the training's
    # real state and duration, its log follows the training, and marking or clearing it stops
    # the job (a cleared train runs again; no sensor is left waiting for a stopped job). README:
    # "Backfills and manual runs".
    train = TrainEmbeddingsOperator(
        task_id="train",
        partitions_uri=planned["partitions"],
        out_uri=planned["model"],
        workers="{{ params.workers }}",
        **{name: "{{ params." + name + " }}" for name in TRAIN_PARAMS},
        init_from=previous["model_uri"],
        tuned=planned["tuned"],
        deferrable=True,
        poll_interval=5,
        job_timeout=6 * 3600,
        **common,
    )
    evaluate = EvaluateEmbeddingsOperator(
        task_id="evaluate",
        model_uri=planned["model"],
        graph_uri=planned["graph"],
        out_uri=planned["evaluation"],
        **common,
    )

    @task(inlets=[embeddings])
    def quality_gate(result: dict, run_plan: dict, warm: dict) -> dict:
        """Fail the run if MRR is below the floor or fell too far below the last release."""
        return check_quality_gate(get_current_context(), embeddings, result, run_plan, warm)

    @task(inlets=[embeddings, past_embeddings], outlets=[published])
    def publish(gate: dict) -> dict:
        """Emit the version record (metrics + URIs): on ``kg_embeddings`` when it is the newest
        date, on ``kg_embeddings_past`` when a backfill fills in an older date."""
        return publish_version(get_current_context(), gate, embeddings, past_embeddings,
                               published)

    deploy = DeployLinkPredictionServiceOperator(
        task_id="deploy",
        version_uri=planned["evaluation"],
        out_uri=planned["deploy"],
        name=SERVICE_NAME,
        # Off by the DAG param, and for a backfilled past date (published as history only).
        enabled="{{ params.deploy and (ti.xcom_pull(task_ids='publish') or {}).get('current', "
                "True) }}",
        outlets=[service],
        **common,
    )

    gate = quality_gate(evaluate.output, planned, previous)
    import_graph >> encode >> partition >> tune >> train >> evaluate
    # Only a version that passed the gate and was published as the newest date is served.
    publish(gate) >> deploy
