#!/usr/bin/env bash
# One short CUDA check of dmat, in one go: the UNet bench (dmat vs diffusers, fp32 and bf16, eager and
# torch.compile) and, in fp32 and in bf16, a tiny teacher, a pruned-init student and both evaluations
# through the CLI against a throwaway MLflow store, each step timed.
#
#   bench/gpu_smoke.sh [OUT_DIR]        # needs a CUDA GPU; ~5 minutes on one H200
#   BENCH=0 bench/gpu_smoke.sh          # the CLI part only
#   DEVICE=cpu TEACHER_EPOCHS=1 STUDENT_EPOCHS=1 NUM_SAMPLES=500 bench/gpu_smoke.sh /tmp/smoke   # the CLI part only
#
# Prints everything; OUT_DIR (default gpu-smoke/) keeps the MLflow store and a summary of the metrics.
set -euo pipefail
mkdir -p "${1:-gpu-smoke}"
out=$(cd "${1:-gpu-smoke}" && pwd)
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MLFLOW_TRACKING_URI="sqlite:///$out/mlflow.db"
python=${PYTHON:-python3}
device=${DEVICE:-cuda} teacher_epochs=${TEACHER_EPOCHS:-10} student_epochs=${STUDENT_EPOCHS:-5} samples=${NUM_SAMPLES:-2000}
if [ "$device" = cuda ] && [ "${BENCH:-1}" = 1 ]; then
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

$python - <<'EOF' | tee "$out/summary.md"
import mlflow
from dmat import tracking
print("| precision | role | size | best val loss | fid | fid floor | kid | latency ms/img | img/s sampling |")
print("|---|---|---|---|---|---|---|---|---|")
for precision in ("fp32", "bf16"):
    experiment = mlflow.get_experiment_by_name(f"gpu-smoke-{precision}")
    runs = tracking.find_runs(None, experiment_ids=[experiment.experiment_id]) if experiment else []
    evaluations = {r.data.tags.get(tracking.MODEL_RUN_ID): r.data.metrics for r in runs
                   if r.data.tags.get(tracking.ROLE) == tracking.EVALUATION}
    for r in runs:
        if r.data.tags.get(tracking.ROLE) in tracking.MODEL_ROLES:
            m, e = r.data.metrics, evaluations.get(r.info.run_id, {})
            get = lambda d, k: d.get(k, float("nan"))
            print(f"| {precision} | {r.data.tags[tracking.ROLE]} | {r.data.tags[tracking.SIZE_FACTOR]} | "
                  f"{get(m, 'best_val_loss'):.4f} | {get(e, 'fid'):.3f} | {get(e, 'fid_floor'):.3f} | "
                  f"{get(e, 'kid'):.4f} | {get(e, 'latency_ms_per_image'):.1f} | "
                  f"{get(e, 'throughput_images_per_s'):.0f} |")
EOF
