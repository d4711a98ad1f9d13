"""Every default in one place, one module per concern: data sets, training and distillation, evaluation,
the whole study. Plain dataclasses that the CLI and the MLproject entry points (both generated from them
by `dmat.config.options`) override by name."""

from dmat.config.datasets import DATASET_PRESETS, DatasetPreset, dataset_kind, preset_for
from dmat.config.evaluation import STUDENT_STEPS, EvalConfig
from dmat.config.study import STUDENT_BUDGETS, CostConfig, PipelineConfig, SweepConfig
from dmat.config.training import (
                                  DEFAULT_SIZE_FACTORS,
                                  INITS,
                                  MAX_SIZE_FACTOR,
                                  METHODS,
                                  MIN_SIZE_FACTOR,
                                  PRUNE_IMPORTANCES,
                                  STUDENT_TRAIN,
                                  DistillConfig,
                                  TrainConfig,
                                  flat_params,
                                  parse_size_factor,
                                  parse_sizes,
                                  with_overrides,
)
from dmat.runtime import PRECISIONS, check_precision

__all__ = ["DATASET_PRESETS", "DatasetPreset", "dataset_kind", "preset_for", "PRECISIONS", "STUDENT_STEPS",
           "EvalConfig", "check_precision", "STUDENT_BUDGETS", "CostConfig", "PipelineConfig", "SweepConfig",
           "DEFAULT_SIZE_FACTORS", "INITS", "MAX_SIZE_FACTOR", "METHODS", "MIN_SIZE_FACTOR", "PRUNE_IMPORTANCES",
           "STUDENT_TRAIN", "DistillConfig", "TrainConfig", "flat_params", "parse_size_factor", "parse_sizes",
           "with_overrides"]
