#!/usr/bin/env bash
# Creates .venv/ and installs the pinned OpenMMLab stack plus mrla_mm into it.
# Called by `make install` (and so by `make test` / `make demo`); safe to re-run.
#
# Every pip call is --isolated: the machine's pip configuration adds a local
# folder holding a CPU-only torch wheel whose version (2.13.0+cpu) outranks the
# registry's CUDA build, and torchvision 0.28.0 does not import against it.
set -euo pipefail

cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=$(sed -n 's/^torch==//p' requirements/runtime.txt)
MMCV_VERSION=$(sed -n 's/^mmcv==//p' requirements/runtime.txt)
# mmcv has no wheel for this torch, so it is compiled once per machine. pip's
# own cache keys the wheel by sdist URL only, which would silently reuse it
# under another torch: keep it in a folder named after the torch version.
WHEEL_DIR=${MRLA_WHEEL_DIR:-$HOME/.cache/mrla_mm/wheels/torch-$TORCH_VERSION}

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --isolated --disable-pip-version-check)

echo "[setup] build tools"
"${PIP[@]}" install -q --upgrade pip
"${PIP[@]}" install -q -r requirements/build.txt

# The CUDA build of torch fills about 5.5 GB of the venv; a full disk
# otherwise surfaces as a bare OSError half-way through pip.
NEED_GB=${MRLA_SETUP_NEED_GB:-8}
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    for dir in "$VENV" "${TMPDIR:-/tmp}"; do
        free_gb=$(df -Pk "$dir" | awk 'NR == 2 {print int($4 / 1048576)}')
        if [ "$free_gb" -lt "$NEED_GB" ]; then
            echo "[setup] error: $dir has ${free_gb} GB free; installing torch needs" \
                "about ${NEED_GB} GB (MRLA_SETUP_NEED_GB). Free some disk and re-run." >&2
            exit 1
        fi
    done
fi

echo "[setup] torch $TORCH_VERSION (registry CUDA build; runs on CPU-only machines)"
"${PIP[@]}" install -q "torch==$TORCH_VERSION" "$(grep '^torchvision==' requirements/runtime.txt)"

if ! ls "$WHEEL_DIR"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
    echo "[setup] building mmcv $MMCV_VERSION from source into $WHEEL_DIR (5-10 min, once per machine)"
    mkdir -p "$WHEEL_DIR"
    tmp=$(mktemp -d "$WHEEL_DIR/.build.XXXXXX")
    MAX_JOBS=${MAX_JOBS:-$(nproc)} "${PIP[@]}" wheel --no-build-isolation --no-deps \
        --no-binary mmcv "mmcv==$MMCV_VERSION" -w "$tmp"
    mv "$tmp"/mmcv-*.whl "$WHEEL_DIR"/
    rm -rf "$tmp"
fi

echo "[setup] runtime, test and deployment (ONNX) requirements"
"${PIP[@]}" install -q --find-links "$WHEEL_DIR" \
    -r requirements/runtime.txt -r requirements/tests.txt \
    -r requirements/deploy.txt

echo "[setup] mrla_mm (editable)"
"${PIP[@]}" install -q --no-build-isolation --no-deps -e .

# Fail loudly here rather than in the middle of a test run.
"$VENV/bin/python" - <<'PY'
import torch, torchvision, mmcv, mmengine, mmdet, mmpretrain
import onnx, onnxruntime, onnxscript  # noqa: F401  ONNX export tests
from mmcv.ops import nms  # noqa: F401  proves mmcv's compiled ops are there
import mrla_mm
print(f'[setup] ok: torch {torch.__version__}, torchvision {torchvision.__version__}, '
      f'mmcv {mmcv.__version__}, mmengine {mmengine.__version__}, '
      f'mmdet {mmdet.__version__}, mmpretrain {mmpretrain.__version__}, '
      f'mrla_mm {mrla_mm.__version__}')
PY
