#!/usr/bin/env bash
# Copy the records of every finished training of a study folder into a folder that is committed: for each
# runs/<task>/<method>/seed<k> and search/<task>/<method>/trial<k> holding a results.json, its config.json,
# metrics.jsonl and results.json (no checkpoints, adapters only with ADAPTERS=1: kilobytes per run). Records
# already there are left as they are. frontier.sh and paper-scale.sh read such a folder back (RECORDS) and
# resume from it, so a fresh checkout does not train those runs again; for other studies the records are kept
# as evidence only.
#   bash scripts/save-records.sh runs/frontier docs/results/frontier [METHOD ...]
# METHODs (stored folder names) limit the copy to those rows; default: every row. ADAPTERS=1 also copies each
# finished seed's and LR trial's best_adapter/, for the analyses that read adapters (Table 3, Figure 1; a study's
# seed 0 is a copy of its chosen trial, adapter included), also into a record saved before without it:
# megabytes per run at the paper's scale. CHECKPOINTS=1 also carries every unfinished run that has written a
# checkpoint (its config, metrics and checkpoint/, replaced when the run has gone further), so that a run longer
# than one stay on a machine resumes on the next one from there; the run's finished records replace it.
# Prints what it copied: one line a finished run, "checkpoint <run> (step N)" a carried one.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 STUDY_DIR RECORDS_DIR [METHOD ...]" >&2; exit 2; }
src=${1%/}
dest=${2%/}
shift 2
[ -d "$src" ] || { echo "no study folder $src" >&2; exit 2; }
wanted() { [ $# -eq 1 ] && return 0; local m; for m in "${@:2}"; do [ "$m" = "$1" ] && return 0; done; return 1; }
copied=0
# step DIR: the optimizer step of the checkpoint in DIR (empty if none)
step() { [ -f "$1/checkpoint/state.json" ] && ${PYTHON:-python3} -c \
  'import json, sys; print(json.load(open(sys.argv[1]))["step"])' "$1/checkpoint/state.json" 2>/dev/null || true; }
# carry DIR OUT: DIR's config, metrics and checkpoint into OUT, unless OUT holds that step or a later one
carry() {
  local now old try
  now=$(step "$1")
  [ -n "$now" ] || return 0
  old=$(step "$2")
  [ -n "$old" ] && [ "$old" -ge "$now" ] && return 0
  for try in 1 2 3; do   # a checkpoint written meanwhile swaps the folder: copy again
    rm -rf "$2.tmp" && mkdir -p "$2.tmp"
    for f in config.json metrics.jsonl; do [ -f "$1/$f" ] && cp "$1/$f" "$2.tmp/$f"; done
    cp -R "$1/checkpoint" "$2.tmp/checkpoint" 2>/dev/null && [ "$(step "$1")" = "$now" ] &&
      [ "$(step "$2.tmp")" = "$now" ] && break
    now=$(step "$1")
    [ "$try" = 3 ] && { rm -rf "$2.tmp"; echo "skipped ${2#"$dest"/}: its checkpoint kept changing" >&2; return 0; }
  done
  rm -rf "$2" && mv "$2.tmp" "$2"
  echo "checkpoint ${2#"$dest"/} (step $now)"
}
for dir in "$src"/runs/*/*/seed* "$src"/search/*/*/trial*; do
  rel=${dir#"$src"/}
  method=$(basename "$(dirname "$rel")")
  wanted "$method" "$@" || continue
  out=$dest/$rel
  if [ ! -f "$dir/results.json" ]; then
    [ "${CHECKPOINTS:-0}" = 1 ] && carry "$dir" "$out"
    continue
  fi
  adapter=0
  [ "${ADAPTERS:-0}" = 1 ] && [ -d "$dir/best_adapter" ] && adapter=1
  if [ -f "$out/results.json" ]; then   # saved before: kept as it is, its adapter added where it lacks one
    if [ "$adapter" = 1 ] && [ ! -d "$out/best_adapter" ]; then
      rm -rf "$out/best_adapter.tmp" && cp -R "$dir/best_adapter" "$out/best_adapter.tmp" &&
        mv "$out/best_adapter.tmp" "$out/best_adapter" && echo "$rel/best_adapter"
    fi
    continue
  fi
  mkdir -p "$out.tmp"
  for f in config.json metrics.jsonl results.json; do
    [ -f "$dir/$f" ] && cp "$dir/$f" "$out.tmp/$f"
  done
  if [ "$adapter" = 1 ]; then cp -R "$dir/best_adapter" "$out.tmp/best_adapter"; fi
  rm -rf "$out" && mv "$out.tmp" "$out"   # a carried checkpoint gives way to the finished records
  echo "$rel"
  copied=$((copied + 1))
done
echo "copied $copied finished run(s) from $src to $dest" >&2
