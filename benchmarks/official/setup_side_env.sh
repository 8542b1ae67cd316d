#!/usr/bin/env bash
# Create the side environment for the official half of the equivalence harness:
#   benchmarks/official/setup_side_env.sh /path/to/side-venv
# It is never the project's environment: mmdet/mmseg/mmengine/mmcv-lite stay out of
# requirements*.txt. mmcv-lite has no compiled ops (mmcv_ext_standin.py stands in for them) and
# PEFT is replaced by peft_standin.py, so nothing here needs a compiler or a GPU.
set -euo pipefail
VENV="${1:?usage: setup_side_env.sh VENV_DIR}"
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --upgrade pip
"$VENV/bin/pip" install \
  torch==2.14.1 torchvision==0.29.1 \
  mmengine==0.10.7 mmcv-lite==2.0.0 mmdet==3.3.0 mmsegmentation==1.2.2 \
  ftfy regex scipy einops shapely terminaltables pycocotools opencv-python
"$VENV/bin/python" - <<'PY'
import sys
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath("x")))
import mmdet, mmseg, mmengine, torch
print("side env ready:", "torch", torch.__version__, "mmdet", mmdet.__version__,
      "mmseg", mmseg.__version__, "mmengine", mmengine.__version__)
PY
