#!/usr/bin/env bash
# Install condlora and run the main job: the paper's GLUE study (LoRA via real PEFT vs CondLoRA) on the real
# all-MiniLM-L6-v2 weights and the real GLUE files, at the CPU-sized settings recorded in docs/results.md.
# Resumable: run it again after an interruption and finished runs are skipped.
# Environment: CONDLORA_GLUE_DIR (default ../shared/data/glue), OUT (default runs/study), EXTRA (more flags).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
GLUE=${CONDLORA_GLUE_DIR:-$(cd .. && pwd)/shared/data/glue}
OUT=${OUT:-runs/study}
condlora study --tasks rte,mrpc,stsb,cola --methods lora,condlora --seeds 3 --lr 2e-3 \
  --model minilm --glue-dir "$GLUE" --epochs 3 --max-train-samples 600 --max-eval-samples 300 --max-length 96 \
  --output-dir "$OUT" ${EXTRA:-}
echo "tables: $OUT/table2.md $OUT/table4.md"
