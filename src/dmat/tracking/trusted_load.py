"""Loading a logged sampler without running code someone put in the artifact store.

`mlflow.pyfunc.load_model` runs the code a model folder names: the file of `model_code_path` (dmat's
`serving_model.py`, copied into every logged model), modules on its `code` paths, pickled Python objects. Whoever
can write to the artifact store can change any of these. A dmat sampler needs none but its own copy of
`serving_model.py`, which is the same four lines in every model: so a model is loaded only when its folder holds
exactly the files a dmat sampler has, its serving code is byte for byte the installed dmat's, and its MLmodel
names no other loader and no code paths. The checkpoint it carries is loaded with weights_only=True anyway.

What is checked is a private copy, downloaded to a fresh folder of its own, and what is loaded or served is that
very copy: on a local store MLflow would otherwise hand back the store's live folder, which can change after the
check (code appended, a file swapped for a symlink to one outside). A copy holding a symlink is refused.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import mlflow
import yaml
from mlflow.exceptions import MlflowException

from dmat.errors import DmatError
from dmat.tracking.serving import MODEL_CODE

CODE_LOADER = "mlflow.pyfunc.loaders.code_model"  # MLflow's loader of "models from code"
# every file MLflow writes for a dmat sampler; anything else (a .pkl, a code folder) is refused
EXPECTED_FILES = {"MLmodel", "requirements.txt", "python_env.yaml", "conda.yaml", "input_example.json",
                  "serving_input_example.json", "registered_model_meta", MODEL_CODE.name, "artifacts/best.pt"}


def check_model_code(model_dir: str | Path, shown_as: str | None = None) -> None:
    """Refuse (DmatError, one line) a downloaded sampler model whose loading would run other code than the
    installed dmat's serving_model.py, or that holds a symlink (its target can change after any check)."""
    model_dir, name = Path(model_dir), shown_as or str(model_dir)
    entries = list(model_dir.rglob("*"))
    files = {str(p.relative_to(model_dir)) for p in entries if p.is_file() or p.is_symlink()}
    pyfunc = (yaml.safe_load((model_dir / "MLmodel").read_text()) or {}).get("flavors", {}).get("python_function", {}) \
        if "MLmodel" in files else {}
    if links := sorted(str(p.relative_to(model_dir)) for p in entries if p.is_symlink()):
        problem = f"it holds symbolic links ({', '.join(links[:3])})"
    elif not pyfunc:
        problem = "it is not an MLflow pyfunc model"
    elif unexpected := sorted(files - EXPECTED_FILES):
        problem = f"it holds files a dmat sampler does not ({', '.join(unexpected[:3])})"
    elif pyfunc.get("loader_module") != CODE_LOADER or pyfunc.get("code") \
            or Path(str(pyfunc.get("model_code_path"))).name != MODEL_CODE.name:
        problem = "its MLmodel names another loader or code path than a dmat sampler's"
    elif (model_dir / MODEL_CODE.name).read_bytes() != MODEL_CODE.read_bytes():
        problem = f"its {MODEL_CODE.name} differs from the installed dmat's (changed after it was logged?)"
    else:
        return
    raise _refused(name, problem)


def _refused(name: str, problem: str) -> DmatError:
    return DmatError(f"model {name} was not loaded: {problem}; load models only from a store you trust, "
                     f"or log the model again with `dmat teacher` or `dmat distill`")


def private_copy(model_uri: str, folder: str) -> str:
    """A copy of a dmat sampler (`models:/NAME@ALIAS`, `runs:/RUN_ID/sampler`, a folder) downloaded into the fresh
    `folder` (never the local store's own folder), that check_model_code passed: load or serve these very files."""
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=folder)
    except MlflowException as exc:  # MLflow refuses to copy a symlink that leads out of the model's folder
        if "outside the artifact directory" in str(exc):
            raise _refused(model_uri, "it holds a symbolic link to a file outside its folder") from None
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]  # a runs:/ URI's copy hides why
        raise DmatError(f"model {model_uri} was not loaded: it could not be copied to be checked ({why})") from None
    check_model_code(local, shown_as=model_uri)
    return local


def checked_copy(model_uri: str) -> str:
    """private_copy in a fresh private temp folder that is kept, for `mlflow models serve` (removed if refused)."""
    folder = tempfile.mkdtemp(prefix="dmat-model-")
    try:
        return private_copy(model_uri, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def load_sampler(model_uri: str, model_config: dict | None = None) -> mlflow.pyfunc.PyFuncModel:
    """mlflow.pyfunc.load_model for a dmat sampler, from its private checked copy (removed once loaded: the
    sampler reads its checkpoint when it loads, and no file after)."""
    with tempfile.TemporaryDirectory(prefix="dmat-model-") as folder:
        return mlflow.pyfunc.load_model(private_copy(model_uri, folder), model_config=model_config)
