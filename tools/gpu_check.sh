#!/usr/bin/env bash
# One prepared GPU check (issue: speed, measured). Run from the project root on the lent H100:
#
#   bash tools/gpu_check.sh                 # the real run: ~8 minutes at most, no network
#   bash tools/gpu_check.sh --dry-run       # CPU: checks arguments, runs a tiny bench, checks JSON
#   bash tools/gpu_check.sh --budget 420 --skip-tests --presets llama3.2-1b
#
# Installs nothing except wheels carried in .whl/ (made by ../shared/tools/gpu-wheels.sh).
# Writes every JSON record, the test summary and the table under $OUT (default ./out/gpu_check)
# and prints a compact table. Each step has its own time limit and is skipped when the time left
# in --budget cannot cover it, so the run always ends in time to read it and run again.
set -uo pipefail

usage() {
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  echo "options: --dry-run  --budget SECONDS (default 480)  --skip-tests  --presets a,b"
  echo "         --batch-sizes 1,16  --with-hf-eager"
}

dry_run=0; budget=480; skip_tests=0; presets="llama3.2-1b,llama3.1-8b"; batch_sizes="1,16"
with_eager=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --budget) shift; budget="${1:-}" ;;
    --skip-tests) skip_tests=1 ;;
    --presets) shift; presets="${1:-}" ;;
    --batch-sizes) shift; batch_sizes="${1:-}" ;;
    --with-hf-eager) with_eager=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if ! [[ "$budget" =~ ^[0-9]+$ ]] || [ "$budget" -lt 60 ]; then
  echo "gpu_check: --budget must be a whole number of seconds >= 60 (got '$budget')" >&2; exit 2
fi
if ! [[ "$batch_sizes" =~ ^[0-9]+(,[0-9]+)*$ ]]; then
  echo "gpu_check: --batch-sizes must be a comma list of integers (got '$batch_sizes')" >&2; exit 2
fi
if [ -z "$presets" ]; then echo "gpu_check: --presets is empty" >&2; exit 2; fi

cd "$(dirname "$0")/.." || exit 2
OUT="${OUT:-$PWD/out/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && [ "$dry_run" = 1 ] && PY=.venv/bin/python
start=$SECONDS
left() { echo $(( budget - (SECONDS - start) )); }
log() { printf '[gpu_check %4ss] %s\n' "$((SECONDS - start))" "$*" | tee -a "$OUT/steps.log"; }

# step NAME NEEDED_S LIMIT_S CMD...: run CMD under `timeout LIMIT_S` if NEEDED_S seconds are left.
step() {
  local name="$1" needed="$2" limit="$3"; shift 3
  if [ "$(left)" -lt "$needed" ]; then log "SKIP $name (needs ${needed}s, $(left)s left)"; return 0; fi
  [ "$limit" -gt "$(left)" ] && limit="$(left)"
  log "START $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  log "END $name rc=$rc$([ $rc = 124 ] && echo ' (timed out)')"
  tail -n 3 "$OUT/$name.log" | sed 's/^/    /'
  return 0
}

if [ "$dry_run" = 1 ]; then
  log "dry run: tiny preset on CPU (the GPU steps would be: tests, bench $presets)"
  step bench-dry 30 300 "$PY" -m autodeploy.tools.bench --preset tiny --device cpu \
    --dtype float32 --isl 8 --osl 4 --batch-sizes 1,2 --repeats 1 --warmup-tokens 2 \
    --systems hf-eager,ours --out "$OUT/bench-dry.json"
  "$PY" tools/gpu_check_summary.py "$OUT" | tee "$OUT/table.txt"
  exit "${PIPESTATUS[0]}"
fi

if ls .whl/*.whl > /dev/null 2>&1; then
  log "installing the carried wheels from .whl/"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { log "wheel install failed"; exit 1; }
  export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
  log "no .whl/ here: using what is installed (FlashInfer tests skip if it is missing)"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" - <<'PY' | tee "$OUT/environment.txt"
import torch, transformers
print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NONE")
PY

# 1. The GPU tests that matter most (FlashInfer JIT-builds its kernels here: 15-90 s each).
if [ "$skip_tests" = 0 ]; then
  step tests 120 200 "$PY" -m pytest -q -m gpu -p no:cacheprovider \
    --junitxml="$OUT/tests.xml" tests/models/test_bf16_accuracy.py \
    tests/compile/test_cuda_graph_gpu.py tests/compile/test_cuda_graph_decode_splits_gpu.py \
    tests/custom_ops/test_triton_attention.py tests/custom_ops/test_triton_decode_splits.py \
    tests/custom_ops/test_flashinfer_attention.py
fi

# 2. The benchmark, one preset at a time (each writes its own JSON), best systems side by side.
systems="hf-static-compile,ours:triton+torch-cudagraph,ours:flashinfer+torch-cudagraph"
IFS=',' read -r -a preset_list <<< "$presets"
for preset in "${preset_list[@]}"; do
  step "bench-$preset" 90 200 "$PY" -m autodeploy.tools.bench --preset "$preset" \
    --batch-sizes "$batch_sizes" --systems "$systems" --out "$OUT/bench-$preset.json"
done
# 3. HF eager only where time allows (it is the slowest system and the least interesting).
if [ "$with_eager" = 1 ]; then
  for preset in "${preset_list[@]}"; do
    step "bench-$preset-hf-eager" 60 120 "$PY" -m autodeploy.tools.bench --preset "$preset" \
      --batch-sizes 1 --repeats 1 --systems hf-eager --out "$OUT/bench-$preset-hf-eager.json"
  done
fi

"$PY" tools/gpu_check_summary.py "$OUT" | tee "$OUT/table.txt"
log "done in $((SECONDS - start))s; results in $OUT"
