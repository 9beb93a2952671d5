#!/usr/bin/env bash
# Install condlora and run the main job: the paper's GLUE study (LoRA via real PEFT vs CondLoRA) on the real
# all-MiniLM-L6-v2 weights and the real GLUE files, at the CPU-sized settings recorded in docs/results.md:
# an Optuna grid over three learning rates per task x method (best on validation), then 3 seeds, paired t-tests,
# Tables 2, 3 and 4. Two worker processes share the work on disjoint tasks (WORKERS=1 for one); a last call
# reuses every finished run and writes the tables. Resumable: run it again after an interruption.
# Environment: CONDLORA_GLUE_DIR (default ../shared/data/glue), OUT (default runs/study), WORKERS (default 2),
# EXTRA (more flags for every call).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
GLUE=${CONDLORA_GLUE_DIR:-$(cd .. && pwd)/shared/data/glue}
OUT=${OUT:-runs/study}
study() {
  condlora study --methods lora,condlora --seeds 3 --lr-grid 1e-3,2e-3,5e-3 --model minilm --glue-dir "$GLUE" \
    --epochs 2 --max-train-samples 2500 --max-eval-samples 400 --max-length 96 --output-dir "$OUT" "$@" ${EXTRA:-}
}
if [ "${WORKERS:-2}" -ge 2 ]; then
  mkdir -p "$OUT"
  OMP_NUM_THREADS=1 study --tasks rte,cola --quiet >"$OUT/worker-rte-cola.log" 2>&1 & first=$!
  OMP_NUM_THREADS=1 study --tasks mrpc,stsb --quiet >"$OUT/worker-mrpc-stsb.log" 2>&1 & second=$!
  echo "two workers training (logs: $OUT/worker-*.log); this takes about 1.5-2 hours on 2 CPU cores"
  # progress line every 30 s (trainings done/planned, each worker's current run, ETA) until both workers end
  OMP_NUM_THREADS=1 condlora study --status --watch 30 --output-dir "$OUT" & watcher=$!
  trap 'kill "$watcher" 2>/dev/null || true' EXIT
  wait "$first" || { tail -n 5 "$OUT/worker-rte-cola.log"; exit 1; }
  wait "$second" || { tail -n 5 "$OUT/worker-mrpc-stsb.log"; exit 1; }
  kill "$watcher" 2>/dev/null || true
  wait "$watcher" 2>/dev/null || true
  condlora study --status --output-dir "$OUT"
fi
study --tasks rte,mrpc,stsb,cola
echo "tables: $OUT/table2.md $OUT/table3.md $OUT/table4.md"
