# Shared by scripts/main.sh, asymmetry.sh, frontier.sh and paper-scale.sh: the study's protocol, the GLUE source,
# the workers, the committed records read back.
# shellcheck shell=bash
GLUE=${CONDLORA_GLUE_DIR:-$(cd .. && pwd)/shared/data/glue}
if [ -d "$GLUE" ]; then
  DATA=(--glue-dir "$GLUE")
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
  echo "GLUE data: the local TSV files in $GLUE"
else
  DATA=()
  [ "${SKIP_INSTALL:-0}" = 1 ] ||   # SKIP_INSTALL=1: installs nothing (then `datasets` must be there already)
    ${PYTHON:-python3} -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[data]"
  echo "GLUE data: no folder at $GLUE; reading nyu-mll/glue from the Hugging Face hub (datasets)"
fi
ALL_TASKS=rte,mrpc,stsb,cola,sst2
# worker 1 and worker 2 take disjoint tasks of about equal cost (tokens per epoch); WORKER_TASKS="a,b c,d"
# sets another split or order (one comma-separated list of tasks a worker)
read -r -a WORKER_TASKS <<<"${WORKER_TASKS:-rte,cola,sst2 mrpc,stsb}"
PROTOCOL=(--model minilm --head dense --epochs 8 --patience 2 --group-by-length --max-length 128
          --batch-size 16 --max-train-samples 8000 --max-eval-samples 2000 --lr-grid 1e-3,2e-3,5e-3)

# --skip-unlearned: per task, LoRA (the reference) trains first; the other rows only where it learned the task
study() {
  condlora study "${PROTOCOL[@]}" "${DATA[@]}" --skip-unlearned --output-dir "$OUT" "$@" ${EXTRA:-}
}

# run_part METHODS SEEDS: every task on two workers, one study call each (with --skip-unlearned a worker
# finishes its tasks one after the other, so each task's runs finish together, and its plan is the whole
# part, for the progress line every 30 s until both are done). SHARE=1: every worker is given every task
# (--share), and each task x method pair goes to the first worker free to take it, so neither idles while the
# other has a long task left.
run_part() {
  local methods=$1 seeds=$2 jobs=() w
  if [ "${SHARE:-0}" = 1 ]; then
    for ((w = 0; w < ${WORKERS:-2}; w++)); do jobs+=("--tasks $ALL_TASKS --methods $methods --share"); done
    run_jobs "$methods" "$seeds" "${jobs[@]}"
    return
  fi
  for w in "${!WORKER_TASKS[@]}"; do
    [ "${WORKERS:-2}" -ge 2 ] || [ "$w" -eq 0 ] || break
    local tasks=${WORKER_TASKS[$w]}
    [ "${WORKERS:-2}" -ge 2 ] || tasks=$ALL_TASKS
    jobs+=("--tasks $tasks --methods $methods")
  done
  run_jobs "$methods" "$seeds" "${jobs[@]}"
}

# run_jobs LABEL SEEDS JOB...: one worker per JOB (the study arguments it adds, e.g. "--tasks mrpc --methods
# lora"; several study calls separated by ';' are that worker's queue, one after the other), all at once with
# THREADS threads each (one after the other with WORKERS=1), worker k logging to $OUT/worker-k.log; a progress
# line and $OUT/partial.md every 30 s until all are done.
run_jobs() {
  local label=$1 seeds=$2 pids=() w job
  shift 2
  if [ "${WORKERS:-2}" -lt 2 ] && [ $# -gt 1 ]; then
    for job in "$@"; do run_jobs "$label" "$seeds" "$job"; done
    return
  fi
  mkdir -p "$OUT"
  w=0
  for job in "$@"; do
    run_queue "$job" "$seeds" >>"$OUT/worker-$w.log" 2>&1 &
    pids+=($!)
    w=$((w + 1))
  done
  echo "training $label, seeds 0-$((seeds - 1)) (logs: $OUT/worker-*.log)"
  # every 30 s: a progress line here, and $OUT/partial.md with every training finished so far
  OMP_NUM_THREADS=1 condlora study --status --watch 30 --report "$OUT/partial.md" --output-dir "$OUT" &
  local watcher=$! start=$SECONDS
  local failed=0
  for w in "${!pids[@]}"; do
    wait "${pids[$w]}" || { failed=1; tail -n 5 "$OUT/worker-$w.log"; }
  done
  kill "$watcher" 2>/dev/null || true
  wait "$watcher" 2>/dev/null || true
  condlora study --status --report "$OUT/partial.md" --output-dir "$OUT"
  echo "$label, seeds 0-$((seeds - 1)): $(( (SECONDS - start) / 60 )) min"
  [ "$failed" -eq 0 ] || exit 1
}

# run_queue JOB SEEDS: JOB's study calls (';'-separated lists of arguments) one after the other; stops at a failure
run_queue() {
  local calls call
  IFS=';' read -r -a calls <<<"$1"
  for call in "${calls[@]}"; do
    [ -n "${call// /}" ] || continue   # an empty call (a stray ';') is not a study of every default task
    # shellcheck disable=SC2086  # a call is a list of arguments
    OMP_NUM_THREADS=${THREADS:-1} study $call --seeds "$2" --quiet || return 1
  done
}

# restore_records RECORDS: every finished run and LR trial saved under RECORDS by scripts/save-records.sh (its
# records, and its best adapter where saved) copied into $OUT where $OUT lacks it or holds it unfinished, so the
# study reuses it; an unfinished run carried there (CHECKPOINTS=1) where $OUT lacks it, so the study resumes it
restore_records() {
  local records=${1%/} dir dest
  for dir in "$records"/runs/*/*/seed* "$records"/search/*/*/trial*; do
    dest=$OUT/${dir#"$records"/}
    if [ -f "$dir/results.json" ]; then
      [ -f "$dest/results.json" ] && continue
      rm -rf "$dest"
    else
      [ -f "$dir/checkpoint/state.json" ] && [ ! -e "$dest" ] || continue
    fi
    mkdir -p "$(dirname "$dest")"
    rm -rf "$dest.tmp" && cp -R "$dir" "$dest.tmp" && mv "$dest.tmp" "$dest"
  done
}

# condlora_better_form OUT: the CondLoRA form with the higher average test score over the tasks both forms ran,
# as --methods names it: condlora (general form, stored as condlora-general/) or condlora-paper (stored as condlora/)
condlora_better_form() {
  ${PYTHON:-python3} - "$1" <<'PY'
import json, sys
from pathlib import Path
from statistics import mean

scores = {}
for path in Path(sys.argv[1], "runs").glob("*/*/seed*/results.json"):
    if not path.parent.name[4:].isdigit():  # seed<k>-lr<old>: moved aside, at an LR the study no longer uses
        continue
    r = json.loads(path.read_text())
    scores.setdefault(r["method"], {}).setdefault(r["task"], []).append(r["test_score"])
forms = {m: by_task for m, by_task in scores.items() if m in ("condlora", "condlora-general")}
common = set.intersection(*(set(by_task) for by_task in forms.values())) if forms else set()
avg = {m: mean(mean(by_task[t]) for t in common) for m, by_task in forms.items() if common}
user = {"condlora-general": "condlora", "condlora": "condlora-paper"}  # stored folder name -> --methods name
print(user[max(avg, key=avg.get)] if avg else "condlora-paper")
PY
}
