#!/usr/bin/env bash
# Install condlora and run the main job: the converged GLUE study on the real all-MiniLM-L6-v2 weights.
# Rows: PEFT LoRA (the reference), CondLoRA in the paper's form and in the general form, the same head for
# every method (--head dense: MiniLM's pooler + classifier, like roberta-base's classification head).
# Tasks: RTE, MRPC, STS-B, CoLA, SST-2 (SST-2 on a fixed 8,000-example subsample of its training part).
# Every run trains up to 8 epochs with early stopping on validation (patience 2 epochs), length-grouped
# batches; the learning rate is chosen per task x method on validation from a grid.
#   part (a): the three rows, 3 seeds;  part (b): LoRA and the better CondLoRA form extended to 5 seeds.
# Then Table 2 (mean ± 95% CI, paired Δ with CI, t and Wilcoxon p, verdicts), Tables 3 and 4, plots and
# Figure 1 on the LoRA adapters. Two worker processes share the tasks; a progress line every 30 s.
# Resumable: run it again after an interruption; finished runs are reused.
# Environment: CONDLORA_GLUE_DIR (default ../shared/data/glue; without that folder GLUE comes from the hub),
# OUT (default runs/converged), WORKERS (default 2), EXTRA (more flags for every call).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
source scripts/study-common.sh
OUT=${OUT:-runs/converged}
METHODS=lora,condlora-paper,condlora   # stored as runs/<task>/lora, condlora, condlora-general

run_part "$METHODS" 3                                 # part (a)
better=$(condlora_better_form "$OUT")                 # condlora (general) or condlora-paper, by Table 2's average
echo "the better CondLoRA form on these tasks: $better; extending it and LoRA to 5 seeds"
run_part "lora,$better" 5                             # part (b)
study --tasks "$ALL_TASKS" --methods "$METHODS" --seeds 3 --quiet   # tables over every seed on disk
echo "tables: $OUT/table2.md $OUT/table3.md $OUT/table4.md $OUT/figure1.md"
