#!/usr/bin/env bash
# Run README.md's examples as a new user would, in a fresh temporary folder, after the README's install lines:
# the quick start and the Trainer example (python blocks), the own-data block exactly as written, then the
# command-line block of GLUE commands. Those train for hours as written (3 epochs of RTE, LR grids over four
# tasks); QUICK=1 (the default) appends `--max-train-samples 48 --max-eval-samples 24 --epochs 1 --tasks rte
# --seeds 1` (study) or the first three (train) so that the block runs in minutes; QUICK=0 runs it verbatim.
# Needs $CONDLORA_GLUE_DIR (the README's export line is kept as the environment sets it). Prints each command
# and stops at the first that fails.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
: "${CONDLORA_GLUE_DIR:?set CONDLORA_GLUE_DIR to your GLUE folder (see README, Command line)}"
WORK=$(mktemp -d)
cd "$WORK"
echo "working in $WORK"
block() { $PY "$ROOT/scripts/readme_blocks.py" "$1" "$2"; }
for i in 0 1; do
  echo "== python block $i"
  block python "$i" > "block$i.py"
  $PY "block$i.py"
done
n=$(block count bash)
for ((i = 0; i < n; i++)); do
  text=$(block bash "$i")
  case "$text" in
    *"--train-file reviews.csv"*)   # the own-data block: exactly as written
      echo "== bash block $i (as written)"; printf '%s\n' "$text"; bash -euo pipefail -c "$text" ;;
    *"torchrun --nproc_per_node"*)  # the GLUE command-line block
      block commands "$i" | while IFS= read -r cmd; do
        if [ "${QUICK:-1}" = 1 ] && [[ "$cmd" != *--status* ]]; then
          case "$cmd" in
            "condlora study"*) cmd="$cmd --max-train-samples 48 --max-eval-samples 24 --epochs 1 --tasks rte --seeds 1" ;;
            *train*) cmd="$cmd --max-train-samples 48 --max-eval-samples 24 --epochs 1" ;;
          esac
        fi
        echo "== $cmd"
        bash -euo pipefail -c "$cmd" < /dev/null
      done ;;
  esac
done
echo "README examples: all ran (in $WORK)"
