#!/usr/bin/env bash
# Creates the project's virtual environment from requirements.lock.
# TFX 1.16 needs Python 3.10: found through pyenv, then PATH.
set -euo pipefail
venv="${1:-.venv}"
py=""
if [ -n "${PYTHON:-}" ]; then py="$PYTHON"; fi
if [ -z "$py" ] && command -v pyenv >/dev/null 2>&1; then
  root="$(pyenv root)"
  for v in "$root"/versions/3.10*/bin/python3.10; do
    [ -x "$v" ] && py="$v"
  done
fi
if [ -z "$py" ] && command -v python3.10 >/dev/null 2>&1; then
  cand="$(command -v python3.10)"
  "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null && py="$cand"
fi
if [ -z "$py" ]; then
  echo "error: Python 3.10 is required (TFX 1.16 has no wheels for other versions)." >&2
  echo "       Install it (e.g. 'pyenv install 3.10.13') or set PYTHON=/path/to/python3.10." >&2
  exit 1
fi
echo "Creating $venv with $py ($("$py" --version 2>&1))"
rm -rf "$venv"
"$py" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade "pip<27" 2>&1 | grep -v "is ignored" || true
"$venv/bin/pip" install -q --no-deps -r requirements.lock 2>&1 | grep -v "is ignored" || true
"$venv/bin/pip" check
"$venv/bin/pip" install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "is ignored" || true
# Smoke import of the stack (TFRS needs tf.keras = Keras 2, see README).
TF_CPP_MIN_LOG_LEVEL=3 TF_USE_LEGACY_KERAS=1 "$venv/bin/python" -c "import tfx, tensorflow, keras_hub, tensorflow_recommenders, clue_keras, clue_tfrs, components, tfx_pipeline" 2>&1 | { grep -v Warning || true; } | tail -5
touch "$venv/.installed"
echo "$venv ready."
