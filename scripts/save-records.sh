#!/usr/bin/env bash
# Copy the records of every finished training of a study folder into a folder that is committed: for each
# runs/<task>/<method>/seed<k> and search/<task>/<method>/trial<k> holding a results.json, its config.json,
# metrics.jsonl and results.json (no checkpoints, adapters only with ADAPTERS=1: kilobytes per run). Records
# already there are left as they are. frontier.sh and paper-scale.sh read such a folder back (RECORDS) and
# resume from it, so a fresh checkout does not train those runs again; for other studies the records are kept
# as evidence only.
#   bash scripts/save-records.sh runs/frontier docs/results/frontier [METHOD ...]
# METHODs (stored folder names) limit the copy to those rows; default: every row. ADAPTERS=1 also copies each
# finished seed's best_adapter/ (not the LR trials'), for the analyses that read adapters (Table 3, Figure 1):
# megabytes per run at the paper's scale. Prints what it copied.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 STUDY_DIR RECORDS_DIR [METHOD ...]" >&2; exit 2; }
src=${1%/}
dest=${2%/}
shift 2
[ -d "$src" ] || { echo "no study folder $src" >&2; exit 2; }
wanted() { [ $# -eq 1 ] && return 0; local m; for m in "${@:2}"; do [ "$m" = "$1" ] && return 0; done; return 1; }
copied=0
for dir in "$src"/runs/*/*/seed* "$src"/search/*/*/trial*; do
  [ -f "$dir/results.json" ] || continue
  rel=${dir#"$src"/}
  method=$(basename "$(dirname "$rel")")
  wanted "$method" "$@" || continue
  out=$dest/$rel
  [ -f "$out/results.json" ] && continue
  mkdir -p "$out.tmp"
  for f in config.json metrics.jsonl results.json; do
    [ -f "$dir/$f" ] && cp "$dir/$f" "$out.tmp/$f"
  done
  if [ "${ADAPTERS:-0}" = 1 ] && [ "${rel%%/*}" = runs ] && [ -d "$dir/best_adapter" ]; then
    cp -R "$dir/best_adapter" "$out.tmp/best_adapter"
  fi
  rm -rf "$out" && mv "$out.tmp" "$out"
  echo "$rel"
  copied=$((copied + 1))
done
echo "copied $copied finished run(s) from $src to $dest" >&2
