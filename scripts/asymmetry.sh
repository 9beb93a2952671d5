#!/usr/bin/env bash
# The asymmetry study (Zhu et al., ICML 2024) with the main job's protocol (scripts/study-common.sh):
# PEFT LoRA (both A and B train) against LoRA with A frozen (B trains), LoRA with B frozen (A trains), and
# CondLoRA with Θ_A frozen (Θ_B trains), on RTE, MRPC and STS-B, 3 seeds. LoRA's runs and LR trials of the
# main job (runs/converged) are reused, not trained again. Resumable. CondLoRA takes the library's default
# form, the general one (COND_FORM=paper for the paper's form, into another OUT).
# Environment: as scripts/main.sh; MAIN (default runs/converged) is the main job's folder, OUT (default
# runs/asymmetry) this study's.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
source scripts/study-common.sh
MAIN=${MAIN:-runs/converged}
OUT=${OUT:-runs/asymmetry}
ALL_TASKS=rte,mrpc,stsb
WORKER_TASKS=(rte,stsb mrpc)
mkdir -p "$OUT"
for t in ${ALL_TASKS//,/ }; do        # the reference's finished runs, shared with the main job
  for kind in runs search; do
    if [ -d "$MAIN/$kind/$t/lora" ] && [ ! -e "$OUT/$kind/$t/lora" ]; then
      mkdir -p "$OUT/$kind/$t"
      ln -s "$(cd "$MAIN/$kind/$t/lora" && pwd)" "$OUT/$kind/$t/lora"
    fi
  done
done
METHODS=lora,lora-frozen-a,lora-frozen-b,condlora-frozen-a
EXTRA="--cond-form ${COND_FORM:-general} ${EXTRA:-}"
run_part "$METHODS" 3
study --tasks "$ALL_TASKS" --methods "$METHODS" --seeds 3 --quiet
echo "tables: $OUT/table2.md $OUT/table4.md"
