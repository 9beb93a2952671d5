#!/usr/bin/env bash
# The tiny-budget study: CondLoRA against what users would pick at the same adapter budget, all real PEFT,
# with the converged study's protocol (scripts/study-common.sh: same dense head, ≤ 8 epochs with early
# stopping, SST-2 on its 8,000-example subsample) on MRPC, STS-B, CoLA and SST-2, 3 seeds. Rows (trainable
# adapter parameters on all-MiniLM-L6-v2, query + value; the head is counted apart):
#   condlora-general 12,288 (the reference of the paired comparisons), condlora 12,288, lora (r 8) 73,728,
#   lora-r1 9,216, lora-r2 18,432 (alpha = r), vera (r 256) 7,680, vera-r1024 16,896, fourierft (1000
#   frequencies) 12,000.
# Each row searches its own LR grid (--lr-grid auto): LoRA and CondLoRA 1e-3,2e-3,5e-3, VeRA 4e-3,1e-2,2.5e-2,
# FourierFT 2e-2,5e-2,1.25e-1 (extended past an edge where the best LR sits); VeRA's head trains at 4e-3 and
# FourierFT's at 6e-3, as in their papers (see src/condlora/runner/method_defaults.py).
# LoRA r 8 and CondLoRA's runs and LR trials of the converged study are reused, not trained again: their
# records (config.json, metrics.jsonl, results.json; no adapters) are copied from MAIN. Resumable: run it
# again after an interruption; finished runs and trials are reused. Part (b): every row whose average lies
# within 1.5 points of CondLoRA (general form) is extended to 5 seeds; then Table 2, Table 4 and the frontier
# (frontier.md/.csv/.png: score against adapter size; EXTRA_RUNS, default docs/results/asymmetry, adds the
# frozen-factor rows where measured). The frontier alone, from the runs finished so far:
#   python -m condlora.study.frontier runs/frontier --tasks mrpc,stsb,cola,sst2 \
#       --extra-runs docs/results/asymmetry --output runs/frontier
# Environment: as scripts/main.sh; MAIN (default docs/results/converged) is the converged study's folder,
# OUT (default runs/frontier) this study's; RECORDS (default docs/results/frontier) its committed records;
# SKIP_INSTALL=1 skips scripts/install.sh; PART=a stops after part (a) (then the tables and the frontier), so
# that another study can have the cores before part (b) (default: all). To commit the finished new-row runs
# (records only) for a later resume:
#   bash scripts/save-records.sh runs/frontier docs/results/frontier lora-r1 lora-r2 vera vera-r1024 fourierft
set -euo pipefail
cd "$(dirname "$0")/.."
PART=${PART:-all}
case $PART in all | a) ;; *) echo "PART must be a or all; got '$PART'" >&2; exit 2 ;; esac
[ "${SKIP_INSTALL:-0}" = 1 ] || bash scripts/install.sh
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"   # this checkout's code, installed or not
WORKER_TASKS=${WORKER_TASKS:-cola,sst2 mrpc,stsb}   # no RTE: not learned at this budget
SHARE=${SHARE:-1}   # both workers take the next free task x method pair (study --share); SHARE=0: WORKER_TASKS
source scripts/study-common.sh
MAIN=${MAIN:-docs/results/converged}
OUT=${OUT:-runs/frontier}
ALL_TASKS=mrpc,stsb,cola,sst2
PROTOCOL=("${PROTOCOL[@]/#1e-3,2e-3,5e-3/auto}")   # every row its own LR grid
REUSED=(lora condlora condlora-general)   # stored folders: lora, condlora-paper, condlora
mkdir -p "$OUT"
for t in ${ALL_TASKS//,/ }; do        # the converged study's finished runs and trials, copied once
  for m in "${REUSED[@]}"; do
    for kind in runs search; do
      if [ -d "$MAIN/$kind/$t/$m" ] && [ ! -e "$OUT/$kind/$t/$m" ]; then
        mkdir -p "$OUT/$kind/$t"
        cp -R "$MAIN/$kind/$t/$m" "$OUT/$kind/$t/$m.tmp" && mv "$OUT/$kind/$t/$m.tmp" "$OUT/$kind/$t/$m"
      fi
    done
  done
done
# finished runs and trials of this study committed under RECORDS (scripts/save-records.sh) come back first,
# so a fresh checkout resumes where the committed records end
restore_records "${RECORDS:-docs/results/frontier}"
METHODS=condlora,lora,condlora-paper,lora-r1,lora-r2,vera,vera-r1024,fourierft
PY=${PYTHON:-python3}
run_part "$METHODS" 3                                   # part (a)
# part (b): the reference and every row whose average (Table 2's, over the learned tasks) lies within 1.5 points
# of it go to 5 seeds. The rows are chosen once, after part (a), and kept in $OUT/part-b-methods: a re-run
# extends the same rows.
near=
if [ "$PART" = all ]; then
  if [ ! -s "$OUT/part-b-methods" ]; then
    near=$($PY -m condlora.study.frontier "$OUT" --tasks "$ALL_TASKS" --near 1.5)
    [ -z "$near" ] || { echo "$near" >"$OUT/part-b-methods.tmp" && mv "$OUT/part-b-methods.tmp" "$OUT/part-b-methods"; }
  fi
  near=$(cat "$OUT/part-b-methods" 2>/dev/null || true)   # stored names (run folders): condlora-general, ...
fi
if [ -n "$near" ] && [ "$near" != condlora-general ]; then
  near=$(echo ",$near," | sed -e 's/,condlora,/,condlora-paper,/g' -e 's/,condlora-general,/,condlora,/g' \
    -e 's/^,//' -e 's/,$//')   # as --methods names them (runner/names.py)
  echo "within 1.5 points of CondLoRA (general form) on average: $near; extending to 5 seeds"
  run_part "$near" 5                                    # part (b)
fi
study --tasks "$ALL_TASKS" --methods "$METHODS" --seeds 3 --quiet   # tables over every seed on disk
# the frontier (score against adapter size, with the asymmetry study's frozen-factor rows where measured):
# frontier.md/.csv/.png; run alone, it redraws them from the runs finished so far
EXTRA_RUNS=${EXTRA_RUNS:-docs/results/asymmetry}
[ -d "$EXTRA_RUNS" ] || EXTRA_RUNS=
$PY -m condlora.study.frontier "$OUT" --tasks "$ALL_TASKS" ${EXTRA_RUNS:+--extra-runs "$EXTRA_RUNS"} --output "$OUT"
echo "tables: $OUT/table2.md $OUT/table4.md $OUT/frontier.md $OUT/frontier.png"
