"""Every teacher and student is also an MLflow Model: a pyfunc sampler that loads in a fresh process and is
served by `mlflow models serve`, giving the images dmat's own sampler gives."""

from __future__ import annotations

import importlib.metadata
import os
import signal
import subprocess
import sys
import tempfile
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
import torch
from mlflow.exceptions import MlflowException
from test_server import free_port

from dmat import tracking
from dmat.model.diffusion import sample
from dmat.tracking import registry, serving

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
    from dmat.errors import DmatError
    from dmat.tracking.trusted_load import check_model_code, load_sampler

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
    from click.testing import CliRunner

    from dmat.cli.main import cli

    ok = CliRunner().invoke(cli, ["check-model", f"runs:/{teacher_run_id}/{serving.MODEL_NAME}"])
    assert ok.exit_code == 0 and "runs only dmat's own serving code" in ok.output and "mlflow models serve -m" in ok.output
    (tmp_path / "MLmodel").write_text("flavors: {}\n")
    refused = CliRunner().invoke(cli, ["check-model", str(tmp_path)])
    assert refused.exit_code == 2, refused.output
    assert refused.output.strip().splitlines()[-1].endswith("it is not an MLflow pyfunc model; load models only from a "
                                                            "store you trust, or log the model again with `dmat teacher` "
                                                            "or `dmat distill`")
