"""Every teacher and student is also an MLflow Model: a pyfunc sampler that loads in a fresh process and is
served by `mlflow models serve`, giving the images dmat's own sampler gives."""

from __future__ import annotations

import importlib.metadata
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
import torch
from mlflow.exceptions import MlflowException
from click.testing import CliRunner
from conftest import tiny_diffusion, tiny_unet
from test_server import free_port

from dmat import tracking
from dmat.cli.main import cli
from dmat.errors import DmatError
from dmat.model import checkpoint
from dmat.model.diffusion import GaussianDiffusion, sample
from dmat.model.unet import UNet
from dmat.tracking import registry, serving
from dmat.tracking.trusted_load import check_model_code, load_sampler

REQUESTS = [{"num_images": 2, "sampler": "ddim", "steps": 4, "seed": 1},
            {"num_images": 3, "sampler": "ddpm", "steps": 5, "seed": 2}]


@pytest.fixture(autouse=True)
def _mlflow_downloads_in_tmp_path(tmp_path, monkeypatch):
    """MLflow's model loaders (pyfunc.load_model, models.get_model_info) download the model into a fresh temp folder
    that they keep (a loaded pyfunc reads its files later): here it is tmp_path, in a fresh process too."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def dmat_samples(run_id: str) -> np.ndarray:
    """What dmat's own sampler gives for REQUESTS: noise, then the sampler's noise, from one seeded generator."""
    loaded, out = tracking.load_model(run_id), []
    c = loaded.model.config
    for r in REQUESTS:
        generator = torch.Generator().manual_seed(r["seed"])
        x_T = torch.randn((r["num_images"], c.in_channels, c.image_size, c.image_size), generator=generator)
        out.append(sample(loaded.model, loaded.diffusion, x_T, r["sampler"], r["steps"], generator=generator))
    return torch.cat(out).numpy()


def test_the_pyfunc_in_a_fresh_process_samples_what_dmat_samples(study, teacher_run_id, tmp_path):
    uri = f"runs:/{teacher_run_id}/{serving.MODEL_NAME}"
    script = ("import sys, mlflow, numpy, pandas\n"
              "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
              "numpy.save(sys.argv[2], model.predict(pandas.read_json(sys.argv[3], orient='records')))\n")
    table = tmp_path / "requests.json"
    pd.DataFrame(REQUESTS).to_json(table, orient="records")
    done = subprocess.run([sys.executable, "-c", script, uri, str(tmp_path / "out.npy"), str(table)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "MLFLOW_TRACKING_URI": study})
    assert done.returncode == 0, done.stderr[-3000:]
    images = np.load(tmp_path / "out.npy")
    assert images.shape == (5, 1, 8, 8) and images.dtype == np.float32
    np.testing.assert_allclose(images, dmat_samples(teacher_run_id), atol=1e-5)


def test_the_model_has_a_signature_an_input_example_and_a_registry_version(study, teacher_run_id):
    info = mlflow.models.get_model_info(f"runs:/{teacher_run_id}/{serving.MODEL_NAME}")
    assert info.signature.inputs.input_names() == ["num_images", "sampler", "steps", "seed"]
    assert info.signature.outputs.inputs[0].shape == (-1, 1, 8, 8)
    assert info.saved_input_example_info["type"] == "dataframe"
    [version] = mlflow.MlflowClient().search_model_versions(f"run_id = '{teacher_run_id}'")
    assert version.name == "dmat-digits-8px-teacher" and version.source == f"models:/{info.model_id}"
    assert version.tags[tracking.ROLE] == "teacher" and version.tags[tracking.SIZE_FACTOR] == "1.0"
    assert f"models:/dmat-digits-8px-teacher/{version.version}" in mlflow.get_run(teacher_run_id).data.tags[tracking.NOTE]


def test_defaults_fill_left_out_columns_and_a_bad_request_says_why(study, teacher_run_id):
    model = mlflow.pyfunc.load_model(f"runs:/{teacher_run_id}/{serving.MODEL_NAME}")
    params = mlflow.get_run(teacher_run_id).data.params
    alone = model.predict(pd.DataFrame([{"num_images": 2}]))  # the run's own sampler and steps, seed 0
    loaded = tracking.load_model(teacher_run_id)
    from dmat.model.diffusion import sample_from_seed

    expected = sample_from_seed(loaded.model, loaded.diffusion, 2, params["sampler"], int(params["sample_steps"]), 0)
    np.testing.assert_allclose(alone, expected.numpy(), atol=1e-5)
    with pytest.raises(MlflowException, match="num_images must be between 1 and 256.*steps must be between 1 and"):
        model.predict(pd.DataFrame([{"num_images": 0, "steps": 21}]))


@pytest.mark.slow
def test_mlflow_models_serve_answers_from_a_registry_alias(study, teacher_run_id, tmp_path, project_env):
    name = registry.registered_name("digits", 8, "teacher")
    port, log = free_port(), open(tmp_path / "serve.log", "w")
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "mlflow"), "models", "serve", "-m",
                               f"models:/{name}@latest", "--env-manager", "local", "--host", "127.0.0.1",
                               "--port", str(port)], env={**project_env, "MLFLOW_TRACKING_URI": study},
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while not _up(url):
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        body = {"dataframe_split": pd.DataFrame(REQUESTS).to_dict(orient="split", index=False)}
        answer = requests.post(url + "/invocations", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        images = np.array(answer.json()["predictions"], dtype=np.float32)
        assert images.shape == (5, 1, 8, 8) and images.min() >= -1 and images.max() <= 1
        newest = registry.run_id_of(f"models:/{name}@latest")
        np.testing.assert_allclose(images, dmat_samples(newest), atol=1e-5)
        bad = requests.post(url + "/invocations", json={"dataframe_records": [{"num_images": 0}]}, timeout=60)
        assert bad.status_code == 400 and "num_images must be between" in bad.text
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it started
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()


def _up(url: str) -> bool:
    try:
        return requests.get(url + "/ping", timeout=2).ok
    except requests.ConnectionError:
        return False


def test_requirements_pin_what_is_installed_and_name_dmat_when_it_runs_from_its_source_tree(monkeypatch):
    installed = importlib.metadata.version

    def version(name):
        if name == "dmat":  # as under `PYTHONPATH=src python -m dmat` (the MLproject entry points)
            raise importlib.metadata.PackageNotFoundError(name)
        return installed(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert serving.requirements() == [f"mlflow=={installed('mlflow')}", f"torch=={installed('torch')}",
                                      f"numpy=={installed('numpy')}", f"pandas=={installed('pandas')}", "dmat"]


def test_a_model_whose_serving_code_was_changed_is_refused_before_any_of_it_runs(study, teacher_run_id, tmp_path):
    """Whoever can write to the artifact store can change the code a model's loading runs: dmat loads a sampler
    only when that code is byte for byte its own."""
    uri = f"runs:/{teacher_run_id}/{serving.MODEL_NAME}"
    np.testing.assert_allclose(load_sampler(uri).predict(pd.DataFrame(REQUESTS)), dmat_samples(teacher_run_id), atol=1e-5)

    genuine = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / "genuine"))
    check_model_code(genuine)
    marker = tmp_path / "the appended line ran"
    tampered = tmp_path / "tampered"
    subprocess.run(["cp", "-r", genuine, str(tampered)], check=True)
    with open(tampered / serving.MODEL_CODE.name, "a") as code:
        code.write(f"open({str(marker)!r}, 'w').close()\n")
    with pytest.raises(DmatError, match=r"was not loaded: its serving_model.py differs from the installed dmat's"):
        load_sampler(str(tampered))
    assert not marker.exists()

    pickled = tmp_path / "pickled"
    subprocess.run(["cp", "-r", genuine, str(pickled)], check=True)
    (pickled / "python_model.pkl").write_bytes(b"not loaded")
    with pytest.raises(DmatError, match=r"holds files a dmat sampler does not \(python_model.pkl\)"):
        check_model_code(pickled)


def test_check_model_prints_the_checked_copy_to_serve_or_one_line_why_not(study, teacher_run_id, tmp_path):
    ok = CliRunner().invoke(cli, ["check-model", f"runs:/{teacher_run_id}/{serving.MODEL_NAME}"])
    assert ok.exit_code == 0 and "runs only dmat's own serving code" in ok.output and "mlflow models serve -m" in ok.output
    (tmp_path / "MLmodel").write_text("flavors: {}\n")
    refused = CliRunner().invoke(cli, ["check-model", str(tmp_path)])
    assert refused.exit_code == 2, refused.output
    assert refused.output.strip().splitlines()[-1].endswith("it is not an MLflow pyfunc model; load models only from a "
                                                            "store you trust, or log the model again with `dmat teacher` "
                                                            "or `dmat distill`")


def _sampler_run() -> tuple[str, str, Path]:
    """A model run (random tiny weights) with its pyfunc sampler logged as training logs it, in this test's own store
    (the session's teacher is shared: its files are not changed here): its `runs:/` URI, its `models:/` URI (what a
    registry alias stands for) and the store's own folder of it, which MLflow hands back for that URI."""
    with tracking.tracked_run("sampler", {tracking.ROLE: "teacher", tracking.DATASET: "digits"}) as run:
        model = UNet(tiny_unet(image_size=8, in_channels=1))
        tracking.save_checkpoint(checkpoint.model_checkpoint(model, GaussianDiffusion(tiny_diffusion()),
                                                             model.state_dict()), checkpoint.BEST)
        info = serving.log_sampler(run.info.run_id, "ddim", 4)
    logged = f"models:/{info.model_id}"
    live = Path(mlflow.artifacts.download_artifacts(artifact_uri=logged))
    assert live.is_relative_to(Path("mlruns").resolve())  # the store's folder itself (the test's working folder)
    return f"runs:/{run.info.run_id}/{serving.MODEL_NAME}", logged, live


def _appends_a_marker(code: Path, marker: Path) -> None:
    with open(code, "a") as file:
        file.write(f"open({str(marker)!r}, 'w').close()\n")


def test_check_model_checks_and_serves_a_private_copy_that_later_changes_to_the_store_do_not_reach(store, tmp_path):
    """Issue 31: the "checked copy" was the local store's live folder, so code appended to its serving_model.py after
    the check ran when the printed path was served."""
    _, uri, live = _sampler_run()
    ok = CliRunner().invoke(cli, ["check-model", uri])
    assert ok.exit_code == 0, ok.output
    copy = Path(re.search(r"mlflow models serve -m (\S+) --env-manager local", ok.output).group(1))
    [folder] = tmp_path.glob("dmat-model-*")  # a fresh folder, the user's alone, outside the store
    assert copy.is_relative_to(folder) and folder.stat().st_mode & 0o077 == 0
    assert not copy.resolve().is_relative_to(Path("mlruns").resolve())
    marker = tmp_path / "the appended line ran"
    _appends_a_marker(live / serving.MODEL_CODE.name, marker)  # after the check, in the store
    served = mlflow.pyfunc.load_model(str(copy))  # what `mlflow models serve -m COPY` loads
    assert served.predict(pd.DataFrame(REQUESTS[:1])).shape == (2, 1, 8, 8) and not marker.exists()
    copies = set(tmp_path.glob("dmat-model-*"))
    refused = CliRunner().invoke(cli, ["check-model", uri])  # the store's changed model: refused, no copy kept
    assert refused.exit_code == 2 and "its serving_model.py differs from the installed dmat's" in refused.output
    assert set(tmp_path.glob("dmat-model-*")) == copies and not marker.exists()


def test_load_sampler_loads_the_copy_it_checked_never_the_store_again(store, tmp_path, monkeypatch):
    _, uri, live = _sampler_run()
    marker, load_model = tmp_path / "the appended line ran", mlflow.pyfunc.load_model

    def changed_between_check_and_load(path, **kwargs):
        _appends_a_marker(live / serving.MODEL_CODE.name, marker)
        return load_model(path, **kwargs)

    monkeypatch.setattr(mlflow.pyfunc, "load_model", changed_between_check_and_load)
    model = load_sampler(uri)
    assert model.predict(pd.DataFrame(REQUESTS[:1])).shape == (2, 1, 8, 8) and not marker.exists()
    assert list(tmp_path.glob("dmat-model-*")) == []  # the private copy is removed once loaded


def test_a_serving_file_that_is_a_symlink_is_refused_in_one_line_and_nothing_runs(store, tmp_path):
    """Issue 31: a serving_model.py that was a symlink to an outside file passed the check, and later edits to that
    file ran."""
    runs_uri, uri, live = _sampler_run()
    genuine = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / "genuine"))
    outside, marker = tmp_path / "outside.py", tmp_path / "the appended line ran"
    outside.write_bytes(serving.MODEL_CODE.read_bytes())  # the same bytes as dmat's, for now
    (live / serving.MODEL_CODE.name).unlink()
    (live / serving.MODEL_CODE.name).symlink_to(outside)
    refused = CliRunner().invoke(cli, ["check-model", uri])
    assert refused.exit_code == 2, refused.output
    assert refused.output.strip().splitlines()[-1] == (
        f"error: model {uri} was not loaded: it holds a symbolic link to a file outside its folder; load models only "
        "from a store you trust, or log the model again with `dmat teacher` or `dmat distill`")
    refused = CliRunner().invoke(cli, ["check-model", runs_uri])  # MLflow's copy of a runs:/ URI does not say why
    assert refused.exit_code == 2 and refused.output.strip().splitlines()[-1].startswith(
        f"error: model {runs_uri} was not loaded: it could not be copied to be checked (")
    _appends_a_marker(outside, marker)
    for each in (uri, runs_uri):
        with pytest.raises(DmatError, match="was not loaded: it"):
            load_sampler(each)
    assert not marker.exists() and list(tmp_path.glob("dmat-model-*")) == []
    linked = Path(genuine)  # a copy that holds a symlink (one that stays inside its folder, say) is refused too
    (linked / serving.MODEL_CODE.name).unlink()
    (linked / serving.MODEL_CODE.name).symlink_to(linked / "MLmodel")
    with pytest.raises(DmatError, match=r"was not loaded: it holds symbolic links \(serving_model.py\)"):
        check_model_code(linked)
