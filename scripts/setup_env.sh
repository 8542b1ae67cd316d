#!/usr/bin/env bash
# Creates (or completes) the project-local virtual environment in .venv.
# Idempotent: each step is skipped when already done. Called by `make demo` / `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for cand in python3.11 python3.12 python3.10 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PYTHON=$cand; break; fi
  done
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $PYTHON ($($PYTHON --version 2>&1))"
  # SOMA_SYSTEM_SITE_PACKAGES=1 lets the venv see a Detectron2 you built from source.
  extra=()
  [ "${SOMA_SYSTEM_SITE_PACKAGES:-0}" = "1" ] && extra+=(--system-site-packages)
  "$PYTHON" -m venv "${extra[@]}" "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
echo "[setup] installing dependencies (torch==2.14.1, torchvision==0.29.1, Detectron2 deps, test tools)"
"${PIP[@]}" install -q -r requirements.txt -r requirements-dev.txt
if "$PY" -c "import detectron2" >/dev/null 2>&1; then
  echo "[setup] keeping the Detectron2 already importable: $("$PY" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))')"
else
  SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "[setup] installing Detectron2 (sal-detectron2==0.7.2, pure-Python part) into $SITE"
  "${PIP[@]}" install -q --no-deps --python-version 3.10 --only-binary=:all: --target "$SITE" \
    --upgrade sal-detectron2==0.7.2
fi
"${PIP[@]}" install -q --no-deps --no-build-isolation -e .
"$PY" -c "import soma_d2, detectron2, torch; print('[setup] ok: torch', torch.__version__, '| detectron2', detectron2.__version__, '| soma_d2', soma_d2.__version__)"
