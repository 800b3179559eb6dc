"""Airflow side of kg_ops: Ray job hook, operators, sensor, trigger, links.

Imports here are light (Airflow, requests; aiohttp only when a trigger runs): DAG files import
this package and must parse fast.
"""

from kg_ops.airflow.hooks.ray import RayHook
from kg_ops.airflow.links import RayJobLink
from kg_ops.airflow.operators.kg import (
    DeployLinkPredictionServiceOperator,
    EncodeAttributesOperator,
    EvaluateEmbeddingsOperator,
    ImportGraphOperator,
    KgStageOperator,
    PartitionGraphOperator,
    TrainEmbeddingsOperator,
    TuneEmbeddingsOperator,
)
from kg_ops.airflow.operators.ray import SubmitRayJobOperator
from kg_ops.airflow.sensors.ray import RayJobSensor
from kg_ops.airflow.triggers.ray import RayJobTrigger

__all__ = [
    "DeployLinkPredictionServiceOperator",
    "EncodeAttributesOperator",
    "EvaluateEmbeddingsOperator",
    "ImportGraphOperator",
    "KgStageOperator",
    "PartitionGraphOperator",
    "RayHook",
    "RayJobLink",
    "RayJobSensor",
    "RayJobTrigger",
    "SubmitRayJobOperator",
    "TrainEmbeddingsOperator",
    "TuneEmbeddingsOperator",
]
