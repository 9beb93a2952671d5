#!/usr/bin/env bash
# The GPU table of docs/performance.md: a training step of the floor, base (head only), PEFT LoRA, this
# library's LoRA and condlora, and merged / unmerged inference, in five regimes on one CUDA GPU, roberta-base
# shape with random weights (built from its config: no download), query+value, r=8, 3 interleaved repeats.
# Runs from the source tree without installing (PYTHONPATH=src; needs torch with CUDA, transformers, peft).
# About 4 minutes on an H200; each regime is cut at the time left of a 330 s budget (GPU_BENCH_BUDGET_S);
# what time is left then runs the tests marked gpu (where pytest is installed).
# Prints each regime's `condlora bench` table, then the markdown summary; the JSON, logs and summary.md go
# to $OUT if set, else runs/gpu-bench.
# GPU_BENCH_ONLY=1,3: run only those regimes (numbered as below).
# GPU_BENCH_PLAN=1: print the commands and stop.
# GPU_BENCH_DRY=1: the same on CPU with a tiny config-built RoBERTa (seconds per regime; no --compile).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
dest=${OUT:-runs/gpu-bench}
budget=${GPU_BENCH_BUDGET_S:-330}
dry=${GPU_BENCH_DRY:-0}

# number | flags | steps warmup (short steps get more) | seconds cap
REGIMES=(  # the compiled regime first: it takes longest (compiling), and the budget must not cut it
  "5|--precision bf16 --batch-size 16 --max-length 128 --compile|20 5|120"
  "1|--precision bf16 --batch-size 16 --max-length 128|20 5|75"
  "2|--precision fp32 --batch-size 16 --max-length 128|20 5|75"
  "3|--precision bf16 --batch-size 64 --max-length 256|10 3|75"
  "4|--precision fp32 --batch-size 64 --max-length 256|8 3|90"
)
EAGER_METHODS=base,lora,native-lora,condlora,infer-base,infer-merged,infer-condlora
COMPILED_METHODS=base,lora,condlora
model=roberta-base-random
device=cuda
if [ "$dry" = 1 ]; then
  device=cpu
  tiny=$(mktemp -d)
  trap 'rm -rf "$tiny"' EXIT
  model=$tiny/tiny-roberta
  EAGER_METHODS=lora,condlora,infer-merged
  COMPILED_METHODS=lora,condlora
fi

command_of() {  # the `condlora bench` command line of regime "$1"
  IFS='|' read -r n flags steps _cap <<< "$1"
  read -r s w <<< "$steps"
  methods=$EAGER_METHODS
  if [[ $flags == *--compile* ]]; then methods=$COMPILED_METHODS; fi
  if [ "$dry" = 1 ]; then
    flags=$(sed -e 's/--batch-size [0-9]*/--batch-size 2/' -e 's/--max-length [0-9]*/--max-length 8/' \
      -e 's/ --compile//' <<< "$flags")
    flags="$flags --threads 1"; s=1; w=0
  fi
  echo "$PY -m condlora bench --model $model --device $device $flags --methods $methods --floor" \
    "--steps $s --warmup $w --repeats ${GPU_BENCH_REPEATS:-3} --r 8 --quiet --json $dest/regime$n.json"
}

selected() { [ -z "${GPU_BENCH_ONLY:-}" ] || [[ ",$GPU_BENCH_ONLY," == *",$1,"* ]]; }

if [ "${GPU_BENCH_PLAN:-0}" = 1 ]; then
  for r in "${REGIMES[@]}"; do selected "${r%%|*}" && command_of "$r"; done
  exit 0
fi

mkdir -p "$dest"
start=$SECONDS
echo "== gpu-bench (condlora $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
if [ "$dry" = 1 ]; then
  "$PY" -c "
import sys, torch
from transformers import RobertaConfig, RobertaForSequenceClassification
torch.manual_seed(0)
RobertaForSequenceClassification(RobertaConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2,
    num_attention_heads=2, intermediate_size=64, max_position_embeddings=40)).save_pretrained(sys.argv[1])
" "$model" || exit 1
else
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null \
    || echo "(nvidia-smi not available)"
fi
"$PY" - <<'PY' || exit 1
import torch
import transformers
try:
    import peft
    peft_version = peft.__version__
except ImportError:
    peft_version = "(not installed)"
cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
      f"peft {peft_version}; {cuda}")
PY

jsons=()
for r in "${REGIMES[@]}"; do
  n=${r%%|*}
  selected "$n" || continue
  cap=${r##*|}
  left=$((start + budget - SECONDS))
  jsons+=("$dest/regime$n.json")
  if [ "$left" -lt 20 ]; then
    echo "== regime $n skipped: ${left} s left of the ${budget} s budget"
    continue
  fi
  cmd=$(command_of "$r")
  echo "== regime $n ($(( SECONDS - start )) s): $cmd"
  rm -f "$dest/regime$n.json"
  timeout --kill-after=5 "$(( cap < left ? cap : left ))" $cmd 2>"$dest/regime$n.err" | tee "$dest/regime$n.log"
  rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    echo "== regime $n failed (exit $rc; 124 = out of time); stderr tail:"
    tail -n 5 "$dest/regime$n.err"
  fi
done
echo "== summary ($(( SECONDS - start )) s)"
mapfile -t jsons < <(printf '%s\n' "${jsons[@]}" | sort)   # the summary in regime order
"$PY" scripts/gpu_bench_table.py "${jsons[@]}" | tee "$dest/summary.md"
left=$((start + budget - SECONDS))
if [ "$dry" != 1 ] && [ "$left" -ge 40 ] && "$PY" -c "import pytest" 2>/dev/null; then
  echo "== the tests marked gpu (${left} s left)"
  timeout --kill-after=5 "$left" "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_ops.py tests/test_train.py \
    2>&1 | tail -n 5
fi
