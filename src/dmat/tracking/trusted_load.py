"""Loading a logged sampler without running code someone put in the artifact store.

`mlflow.pyfunc.load_model` runs the code a model folder names: the file of `model_code_path` (dmat's
`serving_model.py`, copied into every logged model), modules on its `code` paths, pickled Python objects. Whoever
can write to the artifact store can change any of these. A dmat sampler needs none but its own copy of
`serving_model.py`, which is the same four lines in every model: so a model is loaded only when its folder holds
exactly the files a dmat sampler has, its serving code is byte for byte the installed dmat's, and its MLmodel
names no other loader and no code paths. The checkpoint it carries is loaded with weights_only=True anyway.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import yaml

from dmat.errors import DmatError
from dmat.tracking.serving import MODEL_CODE

CODE_LOADER = "mlflow.pyfunc.loaders.code_model"  # MLflow's loader of "models from code"
# every file MLflow writes for a dmat sampler; anything else (a .pkl, a code folder) is refused
EXPECTED_FILES = {"MLmodel", "requirements.txt", "python_env.yaml", "conda.yaml", "input_example.json",
                  "serving_input_example.json", "registered_model_meta", MODEL_CODE.name, "artifacts/best.pt"}


def check_model_code(model_dir: str | Path, shown_as: str | None = None) -> None:
    """Refuse (DmatError, one line) a downloaded sampler model whose loading would run other code than the
    installed dmat's serving_model.py."""
    model_dir, name = Path(model_dir), shown_as or str(model_dir)
    files = {str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file() or p.is_symlink()}
    pyfunc = (yaml.safe_load((model_dir / "MLmodel").read_text()) or {}).get("flavors", {}).get("python_function", {}) \
        if "MLmodel" in files else {}
    if not pyfunc:
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
    raise DmatError(f"model {name} was not loaded: {problem}; load models only from a store you trust, "
                    f"or log the model again with `dmat teacher` or `dmat distill`")


def checked_copy(model_uri: str) -> str:
    """A local copy of a dmat sampler (`models:/NAME@ALIAS`, `runs:/RUN_ID/sampler`, a folder) that
    check_model_code passed: load or serve these very files, not a second download."""
    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri)  # a folder MLflow keeps, as load_model does
    check_model_code(local, shown_as=model_uri)
    return local


def load_sampler(model_uri: str, model_config: dict | None = None) -> mlflow.pyfunc.PyFuncModel:
    """mlflow.pyfunc.load_model for a dmat sampler, from its checked copy."""
    return mlflow.pyfunc.load_model(checked_copy(model_uri), model_config=model_config)
