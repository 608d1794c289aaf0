#!/usr/bin/env bash
# Download, here, the wheels that a lent GPU machine lacks, into .gpu_wheels/ (git-ignored), for run_on_gpu.sh there.
#
# The GPU machines run Python 3.12 with their own PyTorch, transformers and accelerate, have no `datasets`, and reach
# no package registry. This fetches the project's missing dependencies, pinned to the versions
# installed in the environment that runs the CPU test suite (CI's .venv by default), so the GPU run uses the same
# library versions as CI. Pure-Python wheels only: torch, pyarrow, numpy and friends come from the machine's image.
#
#     bash benchmarks/gpu/fetch_wheels.sh            # then carry .gpu_wheels with the device call
#     PYTHON=/path/to/venv/bin/python bash benchmarks/gpu/fetch_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
DEST="${DEST:-.gpu_wheels}"
WHEEL_PYTHON="${WHEEL_PYTHON:-3.12}"  # the GPU machines' Python
# CAPT_GPU_PACKAGES="datasets dill multiprocess fsspec pyarrow" swaps in another set (say, where the image's
# pyarrow is too old for datasets: pyarrow's 55 MB wheel and transformers' 13 MB together overrun a device call's
# 64 MiB; on transformers 5.17 without torchvision the suite failed only the two tests that call AutoImageProcessor
# themselves, which torchvision, in the image, fixes).
read -r -a PACKAGES <<< "${CAPT_GPU_PACKAGES:-transformers datasets dill multiprocess fsspec}"
pins=()
for name in "${PACKAGES[@]}"; do
    version=$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null) || {
        echo "fetch_wheels: $name is not installed in $PYTHON (install the project first: bash .ci/run)" >&2; exit 1; }
    pins+=("$name==$version")
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$WHEEL_PYTHON" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$tmp" "${pins[@]}" 2>&1 | grep -v "is ignored" || true
count=$(ls "$tmp"/*.whl 2>/dev/null | wc -l)
if [ "$count" -ne "${#PACKAGES[@]}" ]; then
    echo "fetch_wheels: expected ${#PACKAGES[@]} wheels (${pins[*]}), got $count" >&2; exit 1
fi
rm -rf "$DEST" && mkdir -p "$DEST" && mv "$tmp"/*.whl "$DEST"/
echo "fetched into $DEST ($(du -sh "$DEST" | cut -f1)): ${pins[*]}"
