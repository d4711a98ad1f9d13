"""Everything dmat says to MLflow, in one package: the vocabulary of roles and tags, the store a command uses,
a run's lifecycle, params, checkpoints as artifacts, the training recorder, and run search; beside them dataset
lineage, the Model Registry, the served pyfunc model and run descriptions.

Callers write `tracking.find_runs`, `tracking.ROLE`: the names below are the package's public face."""

from dmat.config.codec import config_from_params, decode_param, encode_param, param_value
from dmat.tracking.artifacts import LoadedModel, has_checkpoint, load_checkpoint, load_model, save_checkpoint
from dmat.tracking.chatter import mlflow_chatter
from dmat.tracking.params import log_params
from dmat.tracking.runs import (
    kept_alive,
    owner_tags,
    readable_name,
    system_metrics_for,
    tag_report_path,
    tracked_run,
    unmarked_status,
)
from dmat.tracking.search import find_runs, require_role, search_filter
from dmat.tracking.store import (
    check_tracking_reachable,
    check_writable,
    experiment_name,
    get_run,
    mark_model_development,
    tracking_uri,
    use_experiment,
)
from dmat.tracking.vocabulary import (
    MISSING_CLASSES,
    ANSWER,
    BEST_STUDENT_RUN_ID,
    CHECKPOINT_DIR,
    COMMAND_OF,
    COST,
    DATASET,
    DEFAULT_EXPERIMENT,
    ENTRY_POINT,
    EVAL_SETTINGS,
    EVALUATION,
    EVALUATION_RUN_ID,
    EXPERIMENT_KIND,
    FEATURE_EXTRACTOR,
    FEATURE_EXTRACTOR_RUN_ID,
    GIT_COMMIT,
    HEARTBEAT,
    HEARTBEAT_SECONDS,
    IMAGE_SIZE,
    INIT,
    METHOD,
    MODEL_DEVELOPMENT,
    MODEL_ROLE,
    MODEL_ROLES,
    MODEL_RUN_ID,
    NOTE,
    OWNER_HOST,
    OWNER_PID,
    OWNER_STARTED,
    OWNER_WORKER,
    PARENT_RUN_ID,
    LAUNCHED_BY,
    PIPELINE,
    REPORT,
    REPORT_PATH,
    ROLE,
    RUN_NAME,
    SENSITIVITY,
    SENSITIVITY_TABLE,
    SETTINGS_KEY,
    SIDE_BY_SIDE_TABLE,
    SIZE_FACTOR,
    SOURCE_DIRTY,
    STOPPED_BY_PRUNER,
    STOPPED_BY_SIGNAL,
    STUDENT,
    STUDENTS_LOOP,
    STUDY_NAME,
    SWEEP,
    SYSTEM_METRICS_ROLES,
    TEACHER,
    TEACHER_RUN_ID,
    TRIAL,
)

__all__ = ['SIDE_BY_SIDE_TABLE', 'DEFAULT_EXPERIMENT', 'CHECKPOINT_DIR', 'TEACHER', 'STUDENT', 'STUDENTS_LOOP', 'EVALUATION', 'FEATURE_EXTRACTOR', 'REPORT', 'PIPELINE', 'SWEEP', 'COST', 'SENSITIVITY', 'SENSITIVITY_TABLE', 'MODEL_ROLES', 'COMMAND_OF', 'ROLE', 'DATASET', 'IMAGE_SIZE', 'SIZE_FACTOR', 'TEACHER_RUN_ID', 'MODEL_RUN_ID', 'METHOD', 'INIT', 'STUDY_NAME', 'TRIAL', 'STOPPED_BY_PRUNER', 'STOPPED_BY_SIGNAL', 'SETTINGS_KEY', 'MODEL_ROLE', 'FEATURE_EXTRACTOR_RUN_ID', 'BEST_STUDENT_RUN_ID', 'MISSING_CLASSES', 'ANSWER', 'REPORT_PATH', 'OWNER_HOST', 'OWNER_PID', 'OWNER_WORKER', 'OWNER_STARTED', 'HEARTBEAT', 'HEARTBEAT_SECONDS', 'RUN_NAME', 'PARENT_RUN_ID', 'LAUNCHED_BY', 'ENTRY_POINT', 'GIT_COMMIT', 'SOURCE_DIRTY', 'NOTE', 'EXPERIMENT_KIND', 'MODEL_DEVELOPMENT', 'EVALUATION_RUN_ID', 'EVAL_SETTINGS', 'SYSTEM_METRICS_ROLES', 'mlflow_chatter', 'tracking_uri', 'check_tracking_reachable', 'check_writable', 'experiment_name', 'use_experiment', 'mark_model_development', 'get_run', 'tracked_run', 'tag_report_path', 'unmarked_status', 'kept_alive', 'system_metrics_for', 'readable_name', 'owner_tags', 'log_params', 'save_checkpoint', 'has_checkpoint', 'load_checkpoint', 'LoadedModel', 'load_model', 'require_role', 'search_filter', 'find_runs', 'config_from_params', 'decode_param', 'encode_param', 'param_value']
