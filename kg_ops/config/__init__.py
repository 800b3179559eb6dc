"""One typed config per stage: the single home of every option (see :mod:`.options`).

Standard library only: DAG files import it, and must parse in milliseconds.
"""

from kg_ops.config.encode import EncodeConfig
from kg_ops.config.evaluate import EvaluateConfig
from kg_ops.config.importers import (
    IMPORTERS,
    CodexImportConfig,
    DebianImportConfig,
    ImportConfig,
    TriplesImportConfig,
)
from kg_ops.config.options import ConfigError, Option, StageConfig, as_bool, option
from kg_ops.config.partition import PartitionConfig
from kg_ops.config.synth import SynthConfig
from kg_ops.config.train import TrainConfig
from kg_ops.config.tune import TuneConfig

__all__ = ["IMPORTERS", "CodexImportConfig", "ConfigError", "DebianImportConfig", "EncodeConfig",
           "EvaluateConfig", "ImportConfig", "Option", "PartitionConfig", "StageConfig",
           "SynthConfig", "TrainConfig", "TriplesImportConfig", "TuneConfig", "as_bool",
           "option"]
