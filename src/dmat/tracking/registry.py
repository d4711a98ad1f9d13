"""The Model Registry: every finished teacher and student is a version of a registered model, and every
option that takes a model's run id also takes `models:/NAME@ALIAS` or `models:/NAME/VERSION`.

One registered model per kind of model: the teacher of a data set and resolution, `dmat-digits-16px-teacher`, and
each student kind (size factor, method, init), `dmat-digits-16px-student-0.4-distill-pruned`. A version is one
finished training of that model (another seed, a rerun at a new commit, a sweep trial), so "v3" means "the third
training", and a model's version list is the history of that one job. A version's tags are its run's lineage
(size factor, method, init, teacher run, ...) and, once evaluated, its scores (fid, kid, ...) with the settings
they were measured under. Aliases:

- `best`: moved by every evaluation to the version with the lowest FID among those evaluated with the same
  settings (a score is compared with like scores only).
- `@latest` (or `/latest`) is MLflow's own: the newest version, i.e. the newest model to have finished
  training. MLflow reserves the name (no alias can be called that) and resolves it itself, as dmat does.

A store from before (one `dmat-<dataset>-<size>px-student` for every student, a size being a version) keeps its
versions and their aliases `best-0_4`, `best-0_4-distill` (students of size factor 0.4, of any method and of that
method; an alias cannot hold a dot); new students register under their own kind's name.
"""

from __future__ import annotations

import re

from mlflow.entities import LoggedModelStatus
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from dmat import tracking
from dmat.config.metrics import HEADLINE, METRICS
from dmat.errors import DmatError
from dmat.tracking import notes, serving

SCHEME = "models:/"
LATEST = "latest"
# the run tags a version carries, so the registry can be filtered and read without opening the runs
LINEAGE_TAGS = (tracking.ROLE, tracking.DATASET, tracking.IMAGE_SIZE, tracking.SIZE_FACTOR, tracking.METHOD,
                tracking.INIT, tracking.TEACHER_RUN_ID, tracking.STUDY_NAME, tracking.TRIAL)
SCORES = HEADLINE  # an evaluation's headline metrics, as version tags
RANKED_BY = "fid"  # the score the best aliases follow (dmat.config.metrics says which way is better)


def registered_name(dataset: str, image_size: int | str, role: str, *kind: str) -> str:
    """`dmat-digits-16px-teacher`, `dmat-digits-16px-student-0.4-distill-pruned` (`kind`: a student's size factor,
    method and init); a folder data set's path becomes dashes (names hold no / or :)."""
    return "-".join(["dmat", re.sub(r"[^\w.]+", "-", dataset).strip("-"), f"{image_size}px", role,
                     *(str(k) for k in kind if k)])


def name_of(tags: dict[str, str]) -> str:
    """The registered model a run's model is a version of, from its tags: its data set, resolution, role and, for a
    student, its kind (size factor, method, init)."""
    kind = (tags.get(tracking.SIZE_FACTOR), tags.get(tracking.METHOD), tags.get(tracking.INIT))
    return registered_name(tags[tracking.DATASET], tags[tracking.IMAGE_SIZE], tags[tracking.ROLE],
                           *(kind if tags[tracking.ROLE] == tracking.STUDENT else ()))


def _description(tags: dict[str, str]) -> str:
    what = f"dmat {tags[tracking.ROLE]}s"
    if tags[tracking.ROLE] == tracking.STUDENT:
        kind = ", ".join(f"{k.split('.')[-1]} {tags[k]}" for k in (tracking.METHOD, tracking.INIT) if k in tags)
        what = f"dmat students of size factor {tags.get(tracking.SIZE_FACTOR)}" + (f" ({kind})" if kind else "")
    return (f"{what} trained on {tags[tracking.DATASET]} at {tags[tracking.IMAGE_SIZE]}px: one version per finished "
            "training (a seed, a rerun)")


def publish(run_id: str, sampler: str, steps: int) -> ModelVersion:
    """Log the active run's model as an MLflow Model (dmat.tracking.serving) and register it as a new version."""
    _drop_unfinished_models(run_id)  # left by a publish that a kill -9 stopped: the resumed run logs its own
    try:
        info = serving.log_sampler(run_id, sampler, steps)
    except BaseException:  # Ctrl-C, SIGTERM, a failed upload: no half-logged model stays in the run
        _drop_unfinished_models(run_id)
        raise
    run = tracking.get_run(run_id)
    tags = run.data.tags
    name = name_of(tags)
    client = MlflowClient()
    try:
        kind = (tracking.ROLE, tracking.DATASET, tracking.IMAGE_SIZE, tracking.SIZE_FACTOR, tracking.METHOD, tracking.INIT)
        client.create_registered_model(name, tags={k: tags[k] for k in kind if k in tags}, description=_description(tags))
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):  # another process was first: fine
            raise
    version_tags = {k: tags[k] for k in LINEAGE_TAGS if k in tags}
    if "num_parameters" in run.data.metrics:
        version_tags["num_parameters"] = str(int(run.data.metrics["num_parameters"]))
    version = client.create_model_version(name, source=f"{SCHEME}{info.model_id}", run_id=run_id, tags=version_tags,
                                          model_id=info.model_id)
    notes.append(run_id, f"MLflow Model: `{SCHEME}{name}/{version.version}` (pyfunc: a table of num_images, sampler, "
                         f"steps, seed in; images out)")
    return version


def _drop_unfinished_models(run_id: str) -> None:
    """Delete the run's logged models still PENDING: MLflow creates one before uploading its files, and one whose
    upload was interrupted would stay PENDING beside the model the resumed run logs."""
    client = MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    for model in client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'"):
        if model.status == LoggedModelStatus.PENDING:
            client.delete_logged_model(model.model_id)


def run_id_of(ref: str | None) -> str | None:
    """The run id behind `models:/NAME@ALIAS`, `models:/NAME/VERSION`, `models:/NAME/latest` (or `@latest`) or
    `models:/MODEL_ID`; anything else is taken to be a run id already. A reference that leads nowhere is one
    clear error, raised before anything is written."""
    if not ref or not ref.startswith(SCHEME):
        return ref
    client, rest = MlflowClient(), ref[len(SCHEME):]
    name, alias = rest.rsplit("@", 1) if "@" in rest else (rest, None)
    name, number = name.split("/", 1) if "/" in name else (name, None)
    if alias is None and number is None:  # models:/MODEL_ID, a logged model of MLflow 3
        run_id = _logged_model_run(client, ref, name)
    else:
        run_id = _version(client, ref, name, alias, number).run_id
    if not run_id:
        raise DmatError(f"{ref} names no MLflow run: give a model that a dmat run logged")
    return run_id


def _logged_model_run(client: MlflowClient, ref: str, model_id: str) -> str | None:
    try:
        return client.get_logged_model(model_id).source_run_id
    except MlflowException:
        raise _unknown(client, ref, model_id) from None


def _version(client: MlflowClient, ref: str, name: str, alias: str | None, number: str | None) -> ModelVersion:
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise _unknown(client, ref, name) from None
    if (alias or number).lower() == LATEST:  # MLflow's own meaning: the newest version
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise DmatError(f"{ref}: registered model {name} has no versions yet: train a model first")
        return max(versions, key=lambda v: int(v.version))
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)
    except MlflowException:
        aliases = ", ".join(sorted(client.get_registered_model(name).aliases)) or "none yet"
        what = f"no alias @{alias}" if alias else f"no version {number}"
        raise DmatError(f"{ref}: registered model {name} has {what} (aliases: {aliases}; @latest is the newest "
                        "version)") from None


def _unknown(client: MlflowClient, ref: str, name: str) -> DmatError:
    known = ", ".join(m.name for m in client.search_registered_models(max_results=20)) or "none"
    return DmatError(f"{ref}: no registered model (or logged model id) {name!r} in {tracking.tracking_uri()} "
                     f"(registered models: {known})")


def best_aliases(name: str, tags: dict[str, str]) -> list[str]:
    """The aliases a version of registered model `name` competes for: `best`; in an older store's one registered
    model for every student (its name ends in -student), `best-0_4` and `best-0_4-METHOD`."""
    if tags.get(tracking.ROLE) != tracking.STUDENT or not name.endswith(f"-{tracking.STUDENT}"):
        return ["best"]
    size = "best-" + tags.get(tracking.SIZE_FACTOR, "").replace(".", "_")
    return [size, f"{size}-{tags[tracking.METHOD]}"] if tracking.METHOD in tags else [size]


def record_evaluation(model_run_id: str, evaluation_run_id: str, setting_names: tuple[str, ...]) -> list[str]:
    """Tag the model's versions with an evaluation's scores and the settings they were measured with (its params
    `setting_names`), and move their `best` alias(es) to the lowest FID among versions evaluated with the same
    settings; returns the aliases set. A model never registered (an older store) is left alone."""
    client = MlflowClient()
    evaluation = client.get_run(evaluation_run_id).data
    settings = " ".join(f"{k}={tracking.param_value(evaluation.params, k)}" for k in setting_names)
    scores = {k: tracking.encode_param(evaluation.metrics[k]) for k in SCORES if k in evaluation.metrics}
    moved = []
    for version in client.search_model_versions(f"run_id = '{model_run_id}'"):
        tags = {**scores, tracking.EVALUATION_RUN_ID: evaluation_run_id, tracking.EVAL_SETTINGS: settings}
        for key, value in tags.items():
            client.set_model_version_tag(version.name, version.version, key, value)
        if RANKED_BY in scores:
            moved += _move_best(client, version.name, {**version.tags, **tags})
    return moved


def _move_best(client: MlflowClient, name: str, tags: dict[str, str]) -> list[str]:
    """Point each alias the version (with these tags) competes for at its lowest-FID entrant."""
    settings = tags[tracking.EVAL_SETTINGS]
    rivals = [v for v in client.search_model_versions(f"name = '{name}'")
              if v.tags.get(tracking.EVAL_SETTINGS) == settings and RANKED_BY in v.tags]
    pick = min if METRICS[RANKED_BY].lower_is_better else max
    for alias in best_aliases(name, tags):
        best = pick((v for v in rivals if alias in best_aliases(name, v.tags)), key=lambda v: float(v.tags[RANKED_BY]))
        client.set_registered_model_alias(name, alias, best.version)
    return best_aliases(name, tags)
