"""The words dmat writes into MLflow: roles, tag keys, artifact folders. Every reader and writer of the
store uses these names, so a tag is spelled once."""

from __future__ import annotations

DEFAULT_EXPERIMENT = "dmat"
SIDE_BY_SIDE_TABLE = "cost/side_by_side.json"  # a cost run's timings (evaluation.side_by_side), read by report.speed
SENSITIVITY_TABLE = "sensitivity/table.json"  # a sensitivity run's table, read by report.sensitivity
FLOOR_DRAWS_FILE = "floor/draws.json"  # a floor run's per-draw real-vs-real values (dmat.evaluation.floor)
CHECKPOINT_DIR = "checkpoints"  # the artifact folder of a run's checkpoints (checkpoint.BEST, checkpoint.LAST)

# Roles: the value of the ROLE tag, one per kind of run.
TEACHER, STUDENT = "teacher", "student"
EVALUATION = "evaluation"
FEATURE_EXTRACTOR = "feature-extractor"
REPORT, PIPELINE, SWEEP = "report", "pipeline", "sweep"
STUDENTS_LOOP = "students-loop"  # a pipeline stage that trains several students in one loop (their parent run)
COST = "cost"  # models of a study timed side by side (dmat.evaluation.side_by_side)
SENSITIVITY = "sensitivity"  # which corruptions each metric detects (dmat.evaluation.sensitivity)
FLOOR = "floor"  # the real-vs-real floor of one reference, space, N and seed, cached (dmat.evaluation.floor)
MODEL_ROLES = (TEACHER, STUDENT)
# The `dmat` command that makes a run of each role: a run's "Reproduce" line (dmat.tracking.notes) and, for the roles
# that train, its `--resume` (dmat.stages.resume)
COMMAND_OF = {TEACHER: "teacher", STUDENT: "distill", EVALUATION: "evaluate"}

# Lineage tags: the MLflow UI filters on them and the report rebuilds its tables from them.
ROLE = "dmat.role"
DATASET = "dmat.dataset"
IMAGE_SIZE = "dmat.image_size"
SIZE_FACTOR = "dmat.size_factor"
TEACHER_RUN_ID = "dmat.teacher_run_id"
MODEL_RUN_ID = "dmat.model_run_id"
CLAIM = "dmat.claim"  # the work a run does, as a key that two processes about to do the same work share
METHOD = "dmat.method"
INIT = "dmat.init"  # a student's starting weights: random or pruned (from its teacher)
STUDY_NAME = "dmat.study_name"  # an Optuna sweep's study, on its parent run and its trials' students
TRIAL = "dmat.trial"  # the Optuna trial number of a sweep's student run
SETTINGS_KEY = "dmat.settings_key"  # on a student: its settings, teacher and commit hashed; a students loop continues a
# stopped student with the same key instead of training it again
STOPPED_BY_SIGNAL = "dmat.stopped_by"  # SIGINT or SIGTERM: kept when `mlflow run` then marks the run FAILED
STOPPED_BY_PRUNER = "dmat.pruned"  # a sweep student stopped early by Optuna's pruner (the epoch); not channel pruning
MODEL_ROLE = "dmat.model_role"  # on an evaluation run: the role of the model it evaluates
FEATURE_EXTRACTOR_RUN_ID = "dmat.feature_extractor_run_id"
FLOOR_KEY = "dmat.floor_key"  # on a floor run: the digest of what its floor is a function of
FLOOR_RUN_ID = "dmat.floor_run_id"  # on an evaluation: `<prefix>.<space>.<reference>` names the floor run it used
BEST_STUDENT_RUN_ID = "dmat.best_student_run_id"  # on a sweep run
MISSING_CLASSES = "dmat.missing_classes"  # on an evaluation: the classes its model hardly makes ("3,5"; "": none)
ANSWER = "dmat.answer"  # on a report run: the study's answer in one sentence (its first screen's)
REPORT_PATH = "dmat.report_path"  # on a report run: the absolute path of the report.html it wrote
# Who runs a run, for `dmat runs --stale` (a run left RUNNING by a process that is gone)
OWNER_HOST = "dmat.host"
OWNER_PID = "dmat.pid"
OWNER_WORKER = "dmat.worker"  # the pipeline worker slot (or Ray node) a stage ran in: $DMAT_WORKER
OWNER_STARTED = "dmat.pid_started"  # the process's start time: a reused pid is another process
HEARTBEAT = "dmat.heartbeat"  # unix time, renewed every HEARTBEAT_SECONDS while the run's process lives
HEARTBEAT_SECONDS = 60
# MLflow's own tags
RUN_NAME = "mlflow.runName"
PARENT_RUN_ID = "mlflow.parentRunId"
# On a teacher or student a pipeline trained: the run that launched it (the pipeline, or its students loop). Models
# are top-level runs, not nested ones: the MLflow UI lists a nested run only under its expanded parent, search filter
# or not, so a study's models would not be rows of its runs table and chart view (bookkeeping runs stay nested)
LAUNCHED_BY = "dmat.launched_by"
ENTRY_POINT = "mlflow.project.entryPoint"
# MLflow-native models and lineage (dmat.tracking.serving, dmat.tracking.registry, dmat.tracking.lineage, dmat.tracking.notes)
GIT_COMMIT = "mlflow.source.git.commit"  # MLflow's: the commit a project run (a pipeline stage) ran at
SOURCE_DIRTY = "dmat.source_dirty"  # on a pipeline stage: "true" if the checkout had uncommitted changes
NOTE = "mlflow.note.content"  # MLflow's run description (markdown), shown on the run page
EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow's experiment tag choosing the UI's view
MODEL_DEVELOPMENT = "custom_model_development"  # its value for a model-training study (not the GenAI view)
EVALUATION_RUN_ID = "dmat.evaluation_run_id"  # on a model version: the evaluation its score tags come from
EVAL_SETTINGS = "dmat.eval_settings"  # on a model version: how its scores were measured (like compared with like)
SYSTEM_METRICS_ROLES = (TEACHER, STUDENT, FEATURE_EXTRACTOR, EVALUATION)  # runs that log system/* metrics
