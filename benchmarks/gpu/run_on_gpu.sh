#!/usr/bin/env bash
# Everything a session with a lent GPU runs there, in one device call: the test suite with the CUDA cases, then every
# benchmark on the GPU. Logs and the JSON record go to $OUT (the device tool brings that folder back).
#
# Here, first: bash benchmarks/gpu/fetch_wheels.sh      (the wheels the machine's image lacks)
# Device call: bash benchmarks/gpu/run_on_gpu.sh         with carry [".gpu_wheels"]  (about 5-8 minutes)
#              bash benchmarks/gpu/run_on_gpu.sh bench   named stages only: tests, bench, bench-bf16 (ViT-B/16 in
#                                                        bf16; not in the default); setup always runs first
#
# `tests` runs the whole suite as CI does (ACCELERATE_USE_CPU=1 keeps the trainer tests on the CPU, where their exact
# comparisons hold) plus tests/trainers/test_devices.py's cuda cases, which compare every CUDA path with the CPU.
# `bench` runs `benchmarks/run_all.py --device cuda` (full rounds) and writes $OUT/results-gpu.json; copy its table into
# the README's performance section. Extra run_all.py flags: CAPT_BENCH_ARGS="--benchmarks cache,memory".
# One device command is cut at 600 s: the tests are stopped after CAPT_TESTS_TIMEOUT (300) seconds so the benchmarks
# keep their time, bench.log shows every script's own output, and results-gpu.json is rewritten after every script
# ("complete": false until the end), so a cut run still brings back what it measured.
# A dry run without a GPU (checks the script and the wheels): CAPT_GPU_DEVICE=cpu CAPT_BENCH_ARGS=--quick.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
OUT="${OUT:-/tmp/capt-gpu-out}"
DEVICE="${CAPT_GPU_DEVICE:-cuda}"
PYTHON="${PYTHON:-python3}"
SITE="${CAPT_SITE:-/tmp/capt-site}"
WHEELS="${CAPT_GPU_WHEELS:-.gpu_wheels}"
TESTS_TIMEOUT="${CAPT_TESTS_TIMEOUT:-300}"  # seconds; a device call is cut at 600
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(tests bench)
for stage in "${STAGES[@]}"; do
    case "$stage" in tests|bench|bench-bf16) ;; *) echo "run_on_gpu: unknown stage '$stage' (tests, bench, bench-bf16)" >&2; exit 2 ;; esac
done
STAGES=(setup "${STAGES[@]}")
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
status=0

setup() {
    if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        echo "run_on_gpu: no $WHEELS/*.whl: run benchmarks/gpu/fetch_wheels.sh here and carry .gpu_wheels" >&2
        return 1
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$WHEELS"/*.whl || return 1
    "$PYTHON" - "$DEVICE" "$WHEELS" <<'PY' || return 1
import glob, importlib.metadata as metadata, os, sys
import accelerate, datasets, torch, transformers
print(f"python {sys.version.split()[0]} | torch {torch.__version__} | transformers {transformers.__version__} | "
      f"accelerate {accelerate.__version__} | datasets {datasets.__version__}")
# What the carried wheels need from the image (pyarrow, huggingface-hub, tokenizers, ...): a mismatch is named here
# rather than met as an odd error in the middle of the tests.
from packaging.requirements import Requirement
for wheel in sorted(glob.glob(os.path.join(sys.argv[2], "*.whl"))):
    name = os.path.basename(wheel).split("-")[0]
    for line in metadata.requires(name) or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        try:
            found = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            print(f"run_on_gpu: warning: {name} needs {requirement}, which is not installed")
            continue
        if not requirement.specifier.contains(found, prereleases=True):
            print(f"run_on_gpu: warning: {name} needs {requirement}, the machine has {found}")
if sys.argv[1] == "cuda":
    if not torch.cuda.is_available():
        sys.exit("run_on_gpu: torch sees no CUDA device")
    props = torch.cuda.get_device_properties(0)
    print(f"cuda {torch.version.cuda} | {props.name}, {props.total_memory / 2**30:.0f} GiB, "
          f"{props.multi_processor_count} SMs")
PY
}

# The carried wheels first, then the repository (for `import modeling_capt`, `trainers`, ...).
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
for stage in "${STAGES[@]}"; do
    echo "=== $stage ($(date -u +%H:%M:%S))"
    case "$stage" in
        setup) setup 2>&1 | tee "$OUT/setup.log" || { echo "setup failed: stopping"; exit 1; } ;;
        tests) parallel=()  # pytest-xdist, when the machine has it: the suite is single-threaded per test
               "$PYTHON" -c "import xdist" 2>/dev/null && parallel=(-n "${CAPT_TEST_WORKERS:-8}")
               # bounded, so that a slow or stuck suite still leaves the benchmarks their time in one device call
               ACCELERATE_USE_CPU=1 timeout "$TESTS_TIMEOUT" "$PYTHON" -m pytest -q -p no:cacheprovider -rs \
                   "${parallel[@]}" tests 2>&1 \
                   | tee "$OUT/tests.log" \
                   | grep -E "passed|failed|error|SKIPPED|FAILED|ERROR" | tail -30
               code=${PIPESTATUS[0]}
               [ "$code" -eq 124 ] && echo "run_on_gpu: tests stopped after ${TESTS_TIMEOUT} s (CAPT_TESTS_TIMEOUT)"
               [ "$code" -ne 0 ] && status=1 ;;
        bench) "$PYTHON" benchmarks/run_all.py --verbose --device "$DEVICE" --output "$OUT/results-gpu.json" \
                   ${CAPT_BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" || status=1 ;;
        bench-bf16) "$PYTHON" benchmarks/run_all.py --verbose --device "$DEVICE" --models vit-b16 \
                   --benchmarks inference,cache,memory --output "$OUT/results-gpu-bf16.json" ${CAPT_BENCH_ARGS:-} \
                   -- --dtype bf16 2>&1 | tee "$OUT/bench-bf16.log" || status=1 ;;
    esac
done
echo "=== done ($(date -u +%H:%M:%S)); logs in $OUT"
exit $status
