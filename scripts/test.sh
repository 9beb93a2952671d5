#!/usr/bin/env bash
# Install (idempotent) and run the whole test suite offline on CPU. GPU tests skip without CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export CONDLORA_GLUE_DIR=${CONDLORA_GLUE_DIR:-$(cd .. && pwd)/shared/data/glue}
set +e
${PYTHON:-python3} -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$rc"
