"""The sampler as MLflow "models from code": MLflow copies this file into every logged sampler model and
runs it when the model is loaded, so no pickled Python object is stored (dmat.tracking.serving has the model)."""

import mlflow

from dmat.tracking.serving import DiffusionSampler

mlflow.models.set_model(DiffusionSampler())
