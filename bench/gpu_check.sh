#!/usr/bin/env bash
# One-shot GPU check (any CUDA machine; its timeouts add up to 600 s, one device call): build,
# run the CUDA tests, a compiled bf16 training smoke run and the benchmarks, and write the
# results as markdown + JSON.
#   bash bench/gpu_check.sh [OUT_DIR]      (default: $OUT, else bench/results)
# Offline boxes with torch and triton preinstalled: the install uses what is there.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-bench/results}}"
mkdir -p "$out"
export TRITON_INTERPRET=0   # compiled kernels (tests/conftest.py also leaves it off when a GPU is seen)
start=$(date +%s)

{
  echo "# lnlatten_fast GPU check"
  echo
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/- GPU: /'
  python -c "import torch, triton; print(f'- torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}')"
} > "$out/gpu_check.md"

echo "== build" | tee -a "$out/log.txt"
LNLATTEN_CUDA=1 timeout 180 python -m pip install --no-build-isolation --no-deps -q . >>"$out/log.txt" 2>&1 \
  || echo "build failed (see log.txt)" | tee -a "$out/gpu_check.md"
python -m lnlatten_fast.info >>"$out/gpu_check.md" 2>&1

echo "== tests" | tee -a "$out/log.txt"
timeout 150 python -m pytest tests/test_triton_attention.py tests/test_triton_conv.py tests/test_native_ops.py \
  tests/test_model.py tests/test_precision.py tests/test_dispatch.py tests/test_attention_range.py \
  -q -p no:cacheprovider -x --junitxml="$out/tests.xml" >>"$out/log.txt" 2>&1
echo "- tests exit code: $?" >> "$out/gpu_check.md"

echo "== bf16 training smoke run (auto backend, compiled)" | tee -a "$out/log.txt"
timeout 120 python -m lnlatten_fast.train --device cuda --precision bf16 --compile --epochs 2 \
  --synthetic-train 512 --synthetic-test 128 --out "$out/run" --cache-dir "$out/cache" >>"$out/log.txt" 2>&1
echo "- training exit code: $?" >> "$out/gpu_check.md"
grep -h "test accuracy, mean\|throughput\|precision" "$out/run/summary.md" >> "$out/gpu_check.md" 2>/dev/null

echo "== benchmarks" | tee -a "$out/log.txt"
timeout 150 python -m pytest bench/bench_triton_attention.py bench/bench_triton_conv.py -q -p no:cacheprovider \
  -o python_files="bench_*.py" --benchmark-group-by=group --benchmark-columns=mean,stddev,rounds \
  --benchmark-json="$out/benchmarks.json" >>"$out/bench.txt" 2>&1
echo "- benchmarks exit code: $?" >> "$out/gpu_check.md"
{ echo; echo '```'; grep -v "^$" "$out/bench.txt" | tail -60; echo '```'; } >> "$out/gpu_check.md"
echo "- total: $(( $(date +%s) - start )) s" >> "$out/gpu_check.md"
cat "$out/gpu_check.md"
