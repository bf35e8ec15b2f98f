#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md in one go, for a machine with a GPU:
# builds the CUDA ops in place, runs the op tests' CUDA cases, then the
# GPU benchmarks. Each step's full log goes to OUT_DIR (first argument,
# default work_dirs/gpu_check); the tail of each is printed. Steps run on
# after a failure (a failed build fails the tests, which say why) and the
# script exits non-zero if any failed.
#
#   bash tools/analysis/gpu_check.sh [OUT_DIR]
#
# PYTHON picks the interpreter (default python3), TORCH_CUDA_ARCH_LIST the
# GPU architectures to build for (default 9.0, Hopper), OPS_DTYPES the
# dtypes of the op benchmark (default bfloat16), SANITIZE=1 adds a
# compute-sanitizer memcheck of the gradient checks, STEPS (names, space
# separated) runs only those steps, to fit a short device lease.
#
# At its end it prints, when the tests step passed on a clean checkout of
# the CUDA sources, the rows of docs/ops.md's table of where the CUDA
# kernels ran, to paste there.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT_DIR=${1:-work_dirs/gpu_check}
PY=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
failed=()
passed=()

step() {
    local name=$1 limit=$2 lines=$3
    shift 3
    if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" ${name%%_*} "* ]] &&
        [[ " $STEPS " != *" $name "* ]]; then
        return
    fi
    local start=$(date +%s)
    timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
    local rc=$?
    echo "[gpu_check] $name: exit $rc after $(($(date +%s) - start)) s"
    # A benchmark's markdown table, else (or after a failure) the log's end.
    if [ "$rc" -ne 0 ] || ! grep -E '^\|' "$OUT_DIR/$name.log"; then
        tail -n "$lines" "$OUT_DIR/$name.log"
    fi
    if [ "$rc" -eq 0 ]; then passed+=("$name"); else failed+=("$name"); fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'

step build 300 3 env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
    MAX_JOBS="$(nproc)" $PY setup.py build_ext --inplace

# The op tests parametrize their device; -k cuda keeps the GPU cases.
xdist=()
$PY -c 'import xdist' 2>/dev/null && xdist=(-n 8)
step tests 240 15 $PY -m pytest -q -p no:cacheprovider "${xdist[@]}" -k cuda \
    tests/test_ops_mrla.py tests/test_ops_light_norm.py \
    tests/test_ops_base_norm.py tests/test_fused_inference.py \
    tests/test_batch_norm_add_relu.py tests/test_ops_self_check.py

for dtype in ${OPS_DTYPES:-bfloat16}; do
    step "ops_$dtype" 90 40 $PY tools/analysis/benchmark_ops.py --device cuda \
        --dtype "$dtype" --shapes det_c2 layer1 --formats nchw cl --repeats 30
done

# --ops and --profile: where the step's time goes (host or device).
step backbone_light 150 8 $PY tools/analysis/benchmark_backbone.py \
    --device cuda --amp bf16 --channels-last --batch 64 --repeats 20 \
    --warmup 3 --ops --profile 25 \
    --variants plain light light-pytorch light-compiled
step backbone_base 120 8 $PY tools/analysis/benchmark_backbone.py \
    --device cuda --amp bf16 --channels-last --batch 64 --repeats 20 \
    --warmup 3 --variants plain base-slim base base-pytorch base-compiled
# The host issues an eager step's kernels about as fast as the GPU runs
# them: compiled (CUDA graphs) against compiled plain ResNet-50.
step backbone_compiled 300 8 $PY tools/analysis/benchmark_backbone.py \
    --device cuda --amp bf16 --channels-last --batch 64 --repeats 20 \
    --warmup 3 --modes train --compile reduce-overhead \
    --variants plain light
step memory_r101 120 9 $PY tools/analysis/benchmark_backbone.py \
    --device cuda --depth 101 --batch 8 --modes infer --repeats 1 \
    --warmup 0 --memory --variants plain light light-slim base-slim base \
    base-keep base-pytorch

if [ "${SANITIZE:-0}" = 1 ]; then
    step memcheck 100 6 compute-sanitizer --tool memcheck --error-exitcode 9 \
        $PY -m pytest -q -p no:cacheprovider -k 'cuda and gradcheck' \
        tests/test_ops_mrla.py
fi

# The rows of docs/ops.md's "Where the CUDA kernels ran", one per kernel
# family: its sources' last change, and that this commit passed the CUDA
# tests on this GPU.
csrc=mrla_mm/ops/csrc
shared="$csrc/common/cuda/mrla_common_cuda.cuh $csrc/pytorch/cuda/cudabind.cpp
    $csrc/pytorch/pybind.cpp $csrc/common/mrla_map_checks.hpp
    $csrc/common/mrla_host_device.hpp"
family_sources() {
    case $1 in
    MRLA-light) echo "$csrc/common/cuda/mrla_light_cuda_kernel.cuh
        $csrc/pytorch/cuda/mrla_light_cuda.cu $csrc/pytorch/mrla_light.cpp
        $csrc/pytorch/cuda/mrla_light_norm_cuda.cpp
        $csrc/common/mrla_norm.hpp $csrc/common/mrla_light_core.hpp" ;;
    MRLA-base) echo "$csrc/common/cuda/mrla_base_cuda_kernel.cuh
        $csrc/pytorch/cuda/mrla_base_cuda.cu $csrc/pytorch/mrla_base.cpp" ;;
    residual_relu_pool) echo "$csrc/common/cuda/residual_relu_pool_cuda_kernel.cuh
        $csrc/pytorch/cuda/residual_relu_pool_cuda.cu
        $csrc/pytorch/residual_relu_pool.cpp
        $csrc/common/residual_relu_pool.hpp" ;;
    esac
}
if [[ " ${passed[*]} " != *" tests "* ]]; then
    echo "[gpu_check] no rows for docs/ops.md: the tests step did not pass"
elif [ -n "$(git status --porcelain -- "$csrc")" ]; then
    echo "[gpu_check] no rows for docs/ops.md: $csrc has uncommitted" \
        "changes, so no commit holds the sources tested"
else
    commit="$(git log -1 --format='%h (%ad)' --date=short)"
    gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)"
    command="\`STEPS=\"${STEPS:-all}\" bash tools/analysis/gpu_check.sh\`"
    echo "[gpu_check] rows for docs/ops.md (Where the CUDA kernels ran):"
    for family in MRLA-light MRLA-base residual_relu_pool; do
        # shellcheck disable=SC2046
        changed="$(git log -1 --format=%h -- $(family_sources "$family") \
            $shared)"
        echo "| $family | $changed | $commit | $gpu | $command | passed |"
    done
fi

if [ ${#failed[@]} -gt 0 ]; then
    echo "[gpu_check] failed: ${failed[*]}"
    exit 1
fi
echo "[gpu_check] all steps passed"
