"""A teacher or student as an MLflow Model: a pyfunc that samples images on request.

`predict` takes a table with one request per row: `num_images` and, optionally, `sampler` (ddim,
ddpm or dpmpp2m), `steps` and `seed` (defaults: the model's own sampling settings, seed 0). It returns the images
of every row, in row order, as one float32 array [N, C, H, W] in [-1, 1]: for the same seed and steps
exactly what dmat's own sampler gives (`diffusion.sample_from_seed`). The run's best.pt travels inside
the model, so `mlflow.pyfunc.load_model` and `mlflow models serve` need only dmat installed, not the
run. Checkpoints still load with weights_only=True.
"""

from __future__ import annotations

import importlib.metadata
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec

from dmat import tracking
from dmat.model import checkpoint
from dmat.model.diffusion import SAMPLERS, sample_from_seed
from dmat.model.unet import UNetConfig

MODEL_NAME = "sampler"  # the logged model's name in its run: runs:/RUN_ID/sampler
MODEL_CODE = Path(__file__).with_name("serving_model.py")  # models from code: nothing pickled
MAX_IMAGES = 256  # per request row, so that one request is answered in seconds, not minutes


class DiffusionSampler(mlflow.pyfunc.PythonModel):
    """The pyfunc: the checkpoint is rebuilt in `load_context`; `model_config` holds the defaults
    (sampler, steps) and the device (cpu unless `load_model(..., model_config={"device": "cuda"})`)."""

    def load_context(self, context):
        config = context.model_config or {}
        self.device = torch.device(config.get("device", "cpu"))
        self.defaults = {"sampler": config.get("sampler", "ddim"), "steps": int(config.get("steps", 50)), "seed": 0}
        model, self.diffusion = checkpoint.build(checkpoint.load(context.artifacts["checkpoint"], "the model's checkpoint"))
        self.model = model.to(self.device).eval()

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        rows = [self._request(row) for row in pd.DataFrame(model_input).to_dict("records")]
        images = [sample_from_seed(self.model, self.diffusion, *row, device=self.device).cpu() for row in rows]
        return torch.cat(images).numpy().astype(np.float32)

    def _request(self, row: dict) -> tuple[int, str, int, int]:
        """(num_images, sampler, steps, seed) of one row, with defaults for what it leaves out; a bad value
        is an MlflowException, which a server answers with status 400 and the message."""
        value = {k: row.get(k) if row.get(k) is not None and not pd.isna(row.get(k)) else default
                 for k, default in {"num_images": None, **self.defaults}.items()}
        problems = []
        if value["num_images"] is None or not 1 <= int(value["num_images"]) <= MAX_IMAGES:
            problems.append(f"num_images must be between 1 and {MAX_IMAGES}, got {value['num_images']}")
        if value["sampler"] not in SAMPLERS:
            problems.append(f"sampler must be one of {', '.join(SAMPLERS)}, got {value['sampler']!r}")
        if not 1 <= int(value["steps"]) <= self.diffusion.timesteps:
            problems.append(f"steps must be between 1 and the model's {self.diffusion.timesteps} timesteps, got {value['steps']}")
        if problems:
            raise MlflowException.invalid_parameter_value("; ".join(problems))
        return int(value["num_images"]), value["sampler"], int(value["steps"]), int(value["seed"])


def signature(unet: UNetConfig) -> ModelSignature:
    """Requests in, images out: the table `predict` reads and the array it returns."""
    inputs = Schema([ColSpec("long", "num_images"), ColSpec("string", "sampler", required=False),
                     ColSpec("long", "steps", required=False), ColSpec("long", "seed", required=False)])
    shape = (-1, unet.in_channels, unet.image_size, unet.image_size)
    return ModelSignature(inputs=inputs, outputs=Schema([TensorSpec(np.dtype(np.float32), shape)]))


EXAMPLE_STEPS = 10  # at most: MLflow samples the example when it logs the model, so it is kept cheap


def input_example(sampler: str, steps: int) -> pd.DataFrame:
    """Two images with the model's sampler and at most EXAMPLE_STEPS steps: every column shown, and MLflow's
    check that the example serves (it predicts on it when the model is logged) costs a fraction of a second."""
    return pd.DataFrame([{"num_images": 2, "sampler": sampler, "steps": min(steps, EXAMPLE_STEPS), "seed": 0}])


def requirements() -> list[str]:
    """Pinned from this environment, so MLflow need not load the model in a subprocess to infer them;
    dmat itself is the project (pip install it from its checkout)."""
    return [_pinned(name) for name in ("mlflow", "torch", "numpy", "pandas", "dmat")]


def _pinned(name: str) -> str:
    """`name==version`, or the bare name where it is not installed as a package: dmat run from its source
    tree (`PYTHONPATH=src python -m dmat`, as the MLproject entry points do) has no version to pin."""
    try:
        return f"{name}=={importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return name


def log_sampler(run_id: str, sampler: str, steps: int) -> mlflow.models.model.ModelInfo:
    """Log the run's best EMA weights as the pyfunc `sampler` of the active run (which must be `run_id`)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{tracking.CHECKPOINT_DIR}/{checkpoint.BEST}",
                                                   dst_path=tmp)
        unet = UNetConfig.from_dict(checkpoint.load(path, f"{checkpoint.BEST} of run {run_id}")["unet_config"])
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME, python_model=str(MODEL_CODE), artifacts={"checkpoint": path},
            # MLflow logs model_config as params of the run: no "device" (the run's own device param, "auto" say);
            # the pyfunc loads on the cpu unless `load_model(..., model_config={"device": "cuda"})`
            model_config={"sampler": sampler, "steps": int(steps)}, signature=signature(unet),
            input_example=input_example(sampler, steps), pip_requirements=requirements())
