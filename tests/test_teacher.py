"""Teacher training through the library, the CLI and `mlflow run`, and the run's bookkeeping."""

import subprocess
from pathlib import Path

import mlflow
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_CLI_ARGS, tiny_diffusion, tiny_unet

from dmat import tracking
from dmat.cli.main import cli
from dmat.model import checkpoint
from dmat.model.diffusion import GaussianDiffusion
from dmat.model.unet import UNet

ROOT = Path(__file__).resolve().parents[1]


def test_checkpoint_from_a_run_rebuilds_an_identical_model(store):
    torch.manual_seed(0)
    model = UNet(tiny_unet(image_size=8)).eval()
    diffusion = GaussianDiffusion(tiny_diffusion(schedule="linear", timesteps=50))  # linear needs T > 20
    with tracking.tracked_run("ckpt", {tracking.ROLE: "teacher"}) as run:
        tracking.save_checkpoint(checkpoint.model_checkpoint(model, diffusion, model.state_dict()), checkpoint.BEST)
    loaded = tracking.load_model(run.info.run_id)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0, 7, 19])
    with torch.no_grad():
        assert torch.equal(loaded.model(x, t), model(x, t))
    assert loaded.diffusion.config == diffusion.config
    assert torch.equal(loaded.diffusion.alphas_cumprod, diffusion.alphas_cumprod)


def test_teacher_run_has_lineage_curves_checkpoints_and_samples(study, teacher_run_id):
    run = mlflow.get_run(teacher_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.ROLE] == "teacher" and run.data.tags[tracking.DATASET] == "digits"
    assert run.data.tags[tracking.IMAGE_SIZE] == "8"
    assert run.data.params["timesteps"] == "20" and run.data.params["base_channels"] == "8"
    client = mlflow.MlflowClient()
    assert [m.step for m in client.get_metric_history(teacher_run_id, "val_loss")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(teacher_run_id, "checkpoints")}
    assert artifacts == {"checkpoints/best.pt", "checkpoints/last.pt"}
    assert [a.path for a in client.list_artifacts(teacher_run_id, "samples")] == ["samples/grid.png"]
    last = tracking.load_checkpoint(teacher_run_id, checkpoint.LAST)
    assert last["epoch"] == 2 and set(last["train_state"]) >= {"optimizer", "ema", "model", "torch_rng"}
    loaded = tracking.load_model(teacher_run_id)
    assert loaded.model.config.size_factor == 1.0 and loaded.diffusion.timesteps == 20


def test_unknown_run_id_and_non_model_run_are_clear_errors(store):
    from dmat.errors import DmatError

    with pytest.raises(DmatError, match="no MLflow run with id 'deadbeef'"):
        tracking.load_model("deadbeef")
    with tracking.tracked_run("report", {tracking.ROLE: "report"}) as run:
        pass
    with pytest.raises(DmatError, match="not a model"):
        tracking.load_model(run.info.run_id)


@pytest.mark.parametrize("exc,status", [(KeyboardInterrupt, "KILLED"), (RuntimeError, "FAILED")])
def test_interrupted_runs_are_marked(store, exc, status):
    with pytest.raises(exc):
        with tracking.tracked_run("x", {tracking.ROLE: "teacher"}) as run:
            raise exc()
    assert mlflow.get_run(run.info.run_id).info.status == status


@pytest.mark.parametrize(
    "args,message",
    [
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["--image-size", "18"], "image size 18 cannot be halved"),
        (["--epochs", "0"], "epochs must be a positive integer"),
        (["--device", "cuda:0"], "CUDA is not available"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(store, args, message):
    if torch.cuda.is_available() and args[0] == "--device":
        pytest.skip("this machine has CUDA")
    result = CliRunner().invoke(cli, ["teacher", *args])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_unreachable_tracking_server_is_one_line_and_writes_nothing(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    mlflow.set_tracking_uri("http://127.0.0.1:9")
    result = CliRunner().invoke(cli, ["teacher", "--epochs", "1"])
    assert result.exit_code == 2 and "tracking server http://127.0.0.1:9 is unreachable" in result.stderr
    assert result.stderr.strip().count("\n") == 0


@pytest.mark.slow
def test_mlflow_run_teacher_entry_point(store, project_env, tmp_path):
    cmd = ["mlflow", "run", str(ROOT), "-e", "teacher", "--env-manager", "local", "--experiment-name", "e2e",
           "--storage-dir", str(tmp_path),
           "-P", "epochs=2", "-P", "image_size=8", "-P", "base_channels=8", "-P", "timesteps=20",
           "-P", "sample_steps=2", "-P", "device=cpu", "-P", "batch_size=256"]
    proc = subprocess.run(cmd, env=project_env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = mlflow.search_runs(experiment_names=["e2e"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED" and run["tags.dmat.role"] == "teacher"
    assert run["tags.mlflow.runName"] == "teacher-digits-8px"  # dmat's name, not MLflow's random one
    assert run["params.epochs"] == "2" and run["params.timesteps"] == "20"
    assert run["params.image_size"] == "8" and run["params.base_channels"] == "8"
    assert run["metrics.epochs_run"] == 2 and run["metrics.val_loss"] > 0
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run["run_id"], "checkpoints")}
    assert "checkpoints/best.pt" in artifacts
    assert tracking.load_model(run["run_id"]).model.config.image_size == 8


def test_cli_teacher_trains_a_tiny_run(store):
    result = CliRunner().invoke(cli, ["teacher", *TINY_CLI_ARGS, "--epochs", "1"])
    assert result.exit_code == 0, result.output
    runs = mlflow.search_runs(search_all_experiments=True)
    assert list(runs["status"]) == ["FINISHED"] and runs.iloc[0]["metrics.epochs_run"] == 1
