# dmat: every target that runs code depends on `setup`, which builds .venv once (stamp file).
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.stamp-setup
export PATH := $(BIN):$(PATH)
export MLFLOW_EXPERIMENT_NAME ?= dmat
HOST ?= 127.0.0.1
PORT ?= 5000
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup test test-other-cpu test-slow teacher ui clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[dev,fidelity,server,ray]'
	touch $@

## test: every test but the slow end-to-end ones, over 2 processes (minutes); CI runs it, then test-slow
test: setup
	$(BIN)/python -m pytest -q -m "not slow" -n 2 --dist worksteal $(PYTEST_ARGS)

## test-other-cpu: the fast tier as the other kind of CPU (`--precision auto` sees bf16 where this CPU has none, and
## none where it has it: DMAT_CPU_BF16), so the precision-dependent tests run both ways on one machine; CI runs it
test-other-cpu: setup
	DMAT_CPU_BF16=$$($(BIN)/python -c "from dmat import runtime; print(0 if runtime.cpu_has_bf16() else 1)") \
	  $(BIN)/python -m pytest -q -m "not slow" -n 2 --dist worksteal $(PYTEST_ARGS)

## test-slow: the slow end-to-end tests (each a real tiny study), one at a time: each uses every core, and two at
## once only slow each other down
test-slow: setup
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

## teacher: train the default teacher on the bundled digits (ARGS="--epochs 5" to override)
teacher: setup
	$(BIN)/dmat teacher $(ARGS)

## ui: the MLflow UI on $(HOST):$(PORT) over the local store
ui: setup
	@echo "MLflow 3.17's UI opens in its GenAI view whatever the experiment's kind: click 'Model training' (top left) once,"
	@echo "or open http://$(HOST):$(PORT)/#/experiments/EXPERIMENT_ID?workflowType=machine_learning"
	$(BIN)/mlflow ui --host $(HOST) --port $(PORT) --backend-store-uri sqlite:///mlflow.db

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache reports

.PHONY: students
SIZES ?=
## students: one distilled student per size factor against the latest teacher (SIZES="0.05 0.1 0.3" overrides 0.2 0.4 0.5 0.6 0.8 1.0)
students: setup
	$(BIN)/dmat students $(if $(strip $(SIZES)),--sizes "$(SIZES)") $(ARGS)

.PHONY: report
## report: the cross-size HTML report from the tracking store into reports/<timestamp>/, logged as a run (ARGS="--full-mse")
report: setup
	$(BIN)/dmat report --all $(ARGS)

.PHONY: pipeline study sweep
SEEDS ?=
WORKERS ?=
## pipeline: the quick study on the bundled digits (teacher, students, evaluations, timings, report) in about 15 minutes on a laptop CPU; reruns reuse finished stages
pipeline: setup
	$(BIN)/dmat pipeline --preset quick $(if $(strip $(SEEDS)),--seeds "$(SEEDS)") $(if $(strip $(WORKERS)),--workers $(WORKERS)) $(ARGS)

## study: the full, converged study (every model until its validation loss stops improving, both inits and methods, three seeds, the steps grid); WORKERS=4 on a GPU box
study: setup
	$(BIN)/dmat pipeline --preset full $(if $(strip $(SEEDS)),--seeds "$(SEEDS)") $(if $(strip $(WORKERS)),--workers $(WORKERS)) $(ARGS)

N_TRIALS ?= 20
STUDY ?= dmat-sweep
OPTUNA_STORAGE ?= sqlite:///optuna.db
## sweep: an Optuna study over distillation settings and size (N_TRIALS, STUDY, OPTUNA_STORAGE, ARGS="--workers 2 --multi-objective")
sweep: setup
	$(BIN)/dmat sweep --n-trials $(N_TRIALS) --study-name $(STUDY) --storage $(OPTUNA_STORAGE) $(ARGS)

.PHONY: evaluate
## evaluate: every teacher and student run not yet evaluated with these settings (ARGS="--num-samples 500 --steps 20")
evaluate: setup
	$(BIN)/dmat evaluate --all $(ARGS)

.PHONY: server
BACKEND ?= sqlite:///mlflow.db
ARTIFACTS ?= ./mlartifacts
## server: a shared tracking server on $(HOST):$(PORT) (BACKEND=postgresql://user@host:5432/db, ARTIFACTS=dir); then export MLFLOW_TRACKING_URI=http://$(HOST):$(PORT)
server: setup
	$(BIN)/mlflow server --host $(HOST) --port $(PORT) --backend-store-uri $(BACKEND) --artifacts-destination $(ARTIFACTS) --serve-artifacts

.PHONY: results
DATASET ?= digits
RESULTS_NAME ?= $(notdir $(patsubst folder:%,%,$(DATASET)))
## results: the full study on DATASET (digits, mnist5k or folder:PATH) in experiment study-<name>, then results/<name>/
## (report, tables, STUDY.md) and the README's Results block from it; reruns reuse the finished stages
results: setup
	MLFLOW_EXPERIMENT_NAME=study-$(RESULTS_NAME) $(BIN)/dmat pipeline --preset full --dataset $(DATASET) $(ARGS)
	MLFLOW_EXPERIMENT_NAME=study-$(RESULTS_NAME) $(BIN)/dmat results --out results/$(RESULTS_NAME)
