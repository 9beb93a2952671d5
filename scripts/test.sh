#!/usr/bin/env bash
# Install (idempotent) and run the tests offline on CPU; GPU tests skip without CUDA. Two environments:
#   1. the whole suite at the exact versions of constraints.txt (scripts/install.sh, current Python);
#   2. scripts/oldest.sh: the core tests in .venv-oldest/ at the lower bounds of the dependency ranges
#      (constraints-oldest.txt), after checking that installing condlora there changes no package.
# Arguments go to the first pytest run. CONDLORA_OLDEST=0 skips the second environment.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export CONDLORA_GLUE_DIR=${CONDLORA_GLUE_DIR:-$(cd .. && pwd)/shared/data/glue}
start=$SECONDS
set +e
${PYTHON:-python3} -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
echo "main suite (constraints.txt): $((SECONDS - start)) s"
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
if [ "$rc" -ne 0 ]; then
  exit "$rc"
fi
if [ "${CONDLORA_OLDEST:-1}" != 0 ]; then
  start=$SECONDS
  bash scripts/oldest.sh
  echo "oldest environment (constraints-oldest.txt): $((SECONDS - start)) s"
fi
