#!/usr/bin/env bash
# One short CUDA check of dmat, in one go: the UNet bench (dmat vs diffusers, fp32 and bf16, eager and
# torch.compile) and, in fp32 and in bf16, a tiny teacher, a pruned-init student and both evaluations
# through the CLI against a throwaway MLflow store, each step timed.
#
#   bench/gpu_smoke.sh [OUT_DIR]        # needs a CUDA GPU; ~5 minutes on one H200
#   DEVICE=cpu TEACHER_EPOCHS=1 STUDENT_EPOCHS=1 NUM_SAMPLES=500 bench/gpu_smoke.sh /tmp/smoke   # the CLI part only
#
# Prints everything; OUT_DIR (default gpu-smoke/) keeps the MLflow store and a summary of the metrics.
set -euo pipefail
out=${1:-gpu-smoke}
mkdir -p "$out"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MLFLOW_TRACKING_URI="sqlite:///$PWD/$out/mlflow.db"
python=${PYTHON:-python3}
device=${DEVICE:-cuda} teacher_epochs=${TEACHER_EPOCHS:-10} student_epochs=${STUDENT_EPOCHS:-5} samples=${NUM_SAMPLES:-2000}
if [ "$device" = cuda ]; then
  $python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), flush=True)"
  for compile in "" --compile; do
    $python bench/bench_unet.py --device cuda --batch-size 256 --repeats 5 $compile
  done
fi

timed() {  # label, command...: runs it, prints its wall seconds, echoes the last "... run <id>" id
  local label=$1; shift
  local start=$SECONDS log="$out/$label.log"
  "$@" >"$log" 2>&1 || { tail -30 "$log"; exit 1; }
  echo "$label: $((SECONDS - start)) s" >&2
  grep -oE 'run [0-9a-f]{32}' "$log" | tail -1 | cut -d' ' -f2
}

for precision in fp32 bf16; do
  common=(--device "$device" --precision "$precision" --experiment "gpu-smoke-$precision")
  teacher=$(timed "teacher-$precision" $python -m dmat teacher "${common[@]}" --epochs "$teacher_epochs" --batch-size 256)
  student=$(timed "student-$precision" $python -m dmat distill "${common[@]}" --teacher-run-id "$teacher" \
    --size-factor 0.4 --init pruned --epochs "$student_epochs" --batch-size 256)
  for run in "$teacher" "$student"; do
    timed "evaluate-$precision-${run:0:8}" $python -m dmat evaluate "${common[@]}" --run-id "$run" \
      --num-samples "$samples" >/dev/null
  done
done

$python - "$out" <<'EOF' | tee "$out/summary.md"
import sys
import mlflow
print("| experiment | role | size | val_task_loss | fid | fid floor | kid | latency ms/img | img/s sampling |")
print("|---|---|---|---|---|---|---|---|---|")
for name in ("gpu-smoke-fp32", "gpu-smoke-bf16"):
    runs = mlflow.search_runs(experiment_names=[name])
    trained = runs[runs["tags.dmat.role"].isin(["teacher", "student"])]
    evals = runs[runs["tags.dmat.role"] == "evaluation"]
    for _, r in trained.iterrows():
        e = evals[evals["tags.dmat.model_run_id"] == r["run_id"]].iloc[0]
        get = lambda row, k: row.get(f"metrics.{k}", float("nan"))
        print(f"| {name} | {r['tags.dmat.role']} | {r['tags.dmat.size_factor']} | {get(r, 'best_val_loss'):.4f} | "
              f"{get(e, 'fid'):.3f} | {get(e, 'fid_floor'):.3f} | {get(e, 'kid'):.4f} | "
              f"{get(e, 'latency_ms_per_image'):.1f} | {get(e, 'throughput_images_per_s'):.0f} |")
EOF
