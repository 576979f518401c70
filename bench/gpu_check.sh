#!/usr/bin/env bash
# One-shot GPU check (any CUDA machine; its timeouts add up to 480 s, one device call): build,
# run the CUDA tests, a compiled bf16 training smoke run, the benchmarks, the SimpleNet conv
# step measured next to bench/compile_report.py's estimate, and ncu's sectors/request for the
# conv kernels, and write the results as markdown + JSON.
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
LNLATTEN_CUDA=1 timeout 100 python -m pip install --no-build-isolation --no-deps -q . >>"$out/log.txt" 2>&1 \
  || echo "build failed (see log.txt)" | tee -a "$out/gpu_check.md"
python -m lnlatten_fast.info >>"$out/gpu_check.md" 2>&1

echo "== tests" | tee -a "$out/log.txt"
timeout 80 python -m pytest tests/ops/test_triton_attention.py tests/ops/test_triton_conv3x3.py tests/ops/test_native.py \
  tests/test_model.py tests/test_precision.py tests/ops/test_dispatch.py tests/ops/test_attention_range.py \
  -q -p no:cacheprovider --junitxml="$out/tests.xml" >>"$out/log.txt" 2>&1
echo "- tests exit code: $?" >> "$out/gpu_check.md"

echo "== bf16 training smoke run (auto backend, compiled)" | tee -a "$out/log.txt"
timeout 50 python -m lnlatten_fast.train --device cuda --precision bf16 --compile --epochs 2 \
  --synthetic-train 512 --synthetic-test 128 --out "$out/run" --cache-dir "$out/cache" >>"$out/log.txt" 2>&1
echo "- training exit code: $?" >> "$out/gpu_check.md"
grep -h "test accuracy, mean\|throughput\|precision" "$out/run/summary.md" >> "$out/gpu_check.md" 2>/dev/null

echo "== benchmarks: ops, and the paper training step (bf16, B = 64) per backend, side by side" | tee -a "$out/log.txt"
timeout 140 python -m pytest bench/bench_triton_attention.py bench/bench_triton_conv.py bench/bench_model.py \
  --benchmark-only -q -p no:cacheprovider -k "not bench_model or simplenet or (paper and not fp32)" \
  --benchmark-group-by=group --benchmark-columns=median,rounds --benchmark-json="$out/benchmarks.json" \
  >>"$out/bench.txt" 2>&1
echo "- benchmarks exit code: $?" >> "$out/gpu_check.md"
python bench/report.py "$out/benchmarks.json" --out "$out/benchmarks.md" >/dev/null 2>>"$out/log.txt"

echo "== SimpleNet convs: measured step vs the compile report's estimate" | tee -a "$out/log.txt"
for backend in triton native; do
  timeout 25 python bench/conv_step.py --backend $backend --repeat 4 >>"$out/gpu_check.md" 2>>"$out/log.txt"
done
timeout 30 python bench/compile_report.py --arch sm_90a --preset paper --batch 64 --dtypes bf16 --out "$out/compile" \
  >>"$out/log.txt" 2>&1
grep -A3 "^| dtype | forward GFLOP" "$out/compile/kernels.md" >> "$out/gpu_check.md"

# Global-load efficiency of the conv kernels: sectors per request (4 = one 128-byte line per
# warp-wide request of 4-byte lanes; 32 = every lane its own line). ld = plain loads,
# ldgsts = cp.async. Skipped without ncu.
if command -v ncu >/dev/null; then
  echo "== ncu sectors/request" | tee -a "$out/log.txt"
  timeout 30 ncu --kernel-name regex:_conv3x3 --launch-skip 18 --launch-count 18 --csv \
    --metrics l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum,l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum,l1tex__t_sectors_pipe_lsu_mem_global_op_ldgsts.sum,l1tex__t_requests_pipe_lsu_mem_global_op_ldgsts.sum \
    python bench/conv_step.py --batch 16 --repeat 2 > "$out/ncu_sectors.csv" 2>>"$out/log.txt"
  echo "- ncu exit code: $? (per-kernel sectors and requests: ncu_sectors.csv)" >> "$out/gpu_check.md"
else
  echo "- ncu: not installed, sectors/request not recorded" >> "$out/gpu_check.md"
fi
echo "- total: $(( $(date +%s) - start )) s" >> "$out/gpu_check.md"
cat "$out/gpu_check.md"
echo
cat "$out/benchmarks.md" 2>/dev/null  # the measured table, last
