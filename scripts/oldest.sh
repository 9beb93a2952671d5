#!/usr/bin/env bash
# The oldest supported environment: torch, transformers, peft, safetensors, numpy and tqdm at the lower
# bounds of pyproject.toml, exactly as listed in constraints-oldest.txt, in the venv .venv-oldest/ (built
# once, rebuilt when it no longer matches the file). Then:
#   1. `pip install ".[peft]"` there must change no installed package (condlora fits beside them);
#   2. the core tests run against that installed copy (not src/): layers, config, save/load and PEFT
#      export, fast paths, packaging, and tests/test_trainer.py when it exists.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CONDLORA_OLDEST_VENV:-.venv-oldest}
LOCK=constraints-oldest.txt
PY=$VENV/bin/python
pip_() { "$PY" -m pip --disable-pip-version-check -q "$@"; }
installed() { "$PY" -m pip freeze --exclude condlora "$@" | LC_ALL=C sort -f; }
wanted() { grep -v -e '^#' -e '^$' "$LOCK" | LC_ALL=C sort -f; }

if [ ! -x "$PY" ] || [ "$(installed)" != "$(wanted)" ]; then
  echo "oldest env: building $VENV from $LOCK"
  rm -rf "$VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
  pip_ install -c "$LOCK" torch  # CPU torch first, as scripts/install.sh does
  pip_ install -r "$LOCK"
fi
if [ "$(installed)" != "$(wanted)" ]; then
  echo "oldest env: $VENV does not match $LOCK:" >&2
  diff <(installed) <(wanted) >&2 || true
  exit 1
fi

before=$(installed --all)
pip_ uninstall -y condlora 2>/dev/null || true
pip_ install ".[peft]"
after=$(installed --all)
if [ "$before" != "$after" ]; then
  echo "oldest env: pip install condlora changed installed packages:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
pip_ check
"$PY" -c "import condlora, sys; assert 'site-packages' in condlora.__file__, condlora.__file__"
echo "oldest env: condlora installed beside $(grep -E -i '^(torch|transformers|peft)==' "$LOCK" | tr '\n' ' ')without changing them"

tests=(tests/test_layers.py tests/test_config.py tests/test_serialization.py tests/test_fastpath.py tests/test_packaging.py)
if [ -f tests/test_trainer.py ]; then tests+=(tests/test_trainer.py); fi
"$PY" -m pytest -q -p no:cacheprovider "${tests[@]}"
