#!/usr/bin/env bash
# One-shot GPU check (any CUDA machine; its timeouts add up to 570 s, inside one 10-minute device call): build, the CUDA
# tests, the trainer's own step measured eager, compiled and graph-captured beside the whole-step
# profiler's estimate, one RAF-DB-sized synthetic epoch at the paper preset with its checkpoint,
# and (with GPU_CHECK_SECTIONS naming them) the op benchmarks, the compile report and ncu's
# sectors/request. Results as markdown + JSON.
#   bash bench/gpu_check.sh [OUT_DIR]      (default: $OUT, else bench/results)
# Environment:
#   GPU_CHECK_SECTIONS  comma list of build,tests,step,epoch,bench,compile,ncu
#                       (default build,tests,step,epoch: what fits 9 minutes with room to spare)
#   GPU_CHECK_ESTIMATES the profiler's output (DIR/eager/step.json, DIR/compiled/step.json);
#                       default bench/results/profile
# Offline boxes with torch and triton preinstalled: the install uses what is there. Without the
# build section the checkout runs as it is (PYTHONPATH), with no native extension.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-bench/results}}"
mkdir -p "$out"
sections=",${GPU_CHECK_SECTIONS:-build,tests,step,epoch},"
estimates="${GPU_CHECK_ESTIMATES:-bench/results/profile}"
want() { [[ "$sections" == *",$1,"* ]]; }
export TRITON_INTERPRET=0   # compiled kernels (tests/conftest.py also leaves it off when a GPU is seen)
export PYTHONUNBUFFERED=1
start=$(date +%s)
stamp() { echo "- $1: $(( $(date +%s) - start )) s since start" >> "$out/gpu_check.md"; }

{
  echo "# lnlatten_fast GPU check"
  echo
  echo "- commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), sections ${sections//,/ }"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/- GPU: /'
  python -c "import torch, triton; print(f'- torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}')"
} > "$out/gpu_check.md"

if want build; then
  echo "== build" | tee -a "$out/log.txt"
  LNLATTEN_CUDA=1 timeout 90 python -m pip install --no-build-isolation --no-deps -q . >>"$out/log.txt" 2>&1 \
    || echo "build failed (see log.txt)" | tee -a "$out/gpu_check.md"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
python -m lnlatten_fast.info >>"$out/gpu_check.md" 2>&1
stamp "set-up"

if want tests; then
  echo "== tests" | tee -a "$out/log.txt"
  timeout 90 python -m pytest tests/ops/test_triton_attention.py tests/ops/test_triton_conv3x3.py tests/ops/test_native.py \
    tests/test_model.py tests/test_precision.py tests/ops/test_dispatch.py tests/ops/test_attention_range.py \
    tests/test_checkpoint_writer.py tests/test_step.py -k "not compiled_step_is_one_graph" \
    -v -p no:cacheprovider --junitxml="$out/tests.xml" >>"$out/log.txt" 2>&1  # -v: a killed run still names its failures
  echo "- tests exit code: $?" >> "$out/gpu_check.md"
  # The real torchvision: and timm: backbone families, where the box has them (-rs: each one
  # says tested, or not tested and why).
  timeout 40 python -m pytest tests/test_backbones.py -k real_ -v -rs -p no:cacheprovider \
    --junitxml="$out/backbone_families.xml" >>"$out/log.txt" 2>&1
  echo "- backbone families exit code: $? ($(grep -o '[a-z]* not tested' "$out/log.txt" | sort -u | tr '\n' ' ')none other skipped)" \
    >> "$out/gpu_check.md"
  stamp "tests"
fi

if want step; then
  echo "== the trainer's step: eager, compiled, compiled + CUDA graphs (paper, bf16, B = 64)" | tee -a "$out/log.txt"
  echo >> "$out/gpu_check.md"
  echo "The trainer's step, paper preset, bf16, B = 64 (measured; the estimate columns are bench/profile_step.py's ESTIMATE):" >> "$out/gpu_check.md"
  echo >> "$out/gpu_check.md"
  timeout 200 python bench/step_timing.py --preset paper --batch 64 --precision bf16 --modes eager,compiled,graphs \
    --steps 30 --estimates "$estimates" --json "$out/step_timing.json" >>"$out/gpu_check.md" 2>>"$out/log.txt"
  echo "- step timing exit code: $?" >> "$out/gpu_check.md"
  stamp "step"
fi

if want epoch; then
  echo "== one RAF-DB-sized synthetic epoch (12,271 train, 3,068 test), paper preset, with its checkpoint" | tee -a "$out/log.txt"
  timeout 150 python -m lnlatten_fast.train --device cuda --preset paper --epochs 1 --synthetic-train 12271 \
    --synthetic-test 3068 --workers 12 --out "$out/epoch" --cache-dir /tmp/lnl-gpu-check-cache >>"$out/log.txt" 2>&1
  echo "- epoch exit code: $?" >> "$out/gpu_check.md"
  python - "$out/epoch" >> "$out/gpu_check.md" 2>>"$out/log.txt" <<'PY'
import json, pathlib, sys
run = pathlib.Path(sys.argv[1])
rec = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
summary = json.loads((run / "summary.json").read_text())
print(f"- epoch: warm-up {summary['warmup_seconds']:.1f} s (before the clock), train {rec['train_seconds']:.1f} s "
      f"({rec['images_per_second']:.0f} img/s), test {rec['test_seconds']:.1f} s, checkpoint blocking "
      f"{rec['checkpoint_blocking_seconds']:.2f} s, test accuracy {rec['test_accuracy']:.4f}")
PY
  stamp "epoch"
fi

if want bench; then
  echo "== op benchmarks" | tee -a "$out/log.txt"
  timeout 120 python -m pytest bench/bench_triton_attention.py bench/bench_triton_conv.py bench/bench_model.py \
    --benchmark-only --bench-rounds 10 -q -p no:cacheprovider -k "not bench_model or simplenet or (paper and not fp32)" \
    --benchmark-group-by=group --benchmark-columns=median,rounds --benchmark-json="$out/benchmarks.json" \
    >>"$out/bench.txt" 2>&1
  echo "- benchmarks exit code: $?" >> "$out/gpu_check.md"
  python bench/report.py "$out/benchmarks.json" --out "$out/benchmarks.md" >/dev/null 2>>"$out/log.txt"
  for backend in triton native; do
    timeout 25 python bench/conv_step.py --backend $backend --repeat 4 >>"$out/gpu_check.md" 2>>"$out/log.txt"
  done
  stamp "bench"
fi

if want compile; then
  timeout 30 python bench/compile_report.py --arch sm_90a --preset paper --batch 64 --dtypes bf16 --out "$out/compile" \
    >>"$out/log.txt" 2>&1
  grep -A3 "^| dtype | forward GFLOP" "$out/compile/kernels.md" >> "$out/gpu_check.md"
fi

# Global-load efficiency of the conv kernels: sectors per request (4 = one 128-byte line per
# warp-wide request of 4-byte lanes; 32 = every lane its own line). ld = plain loads,
# ldgsts = cp.async. Skipped without ncu.
if want ncu; then
  if command -v ncu >/dev/null; then
    echo "== ncu sectors/request" | tee -a "$out/log.txt"
    timeout 30 ncu --kernel-name regex:_conv3x3 --launch-skip 18 --launch-count 18 --csv \
      --metrics l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum,l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum,l1tex__t_sectors_pipe_lsu_mem_global_op_ldgsts.sum,l1tex__t_requests_pipe_lsu_mem_global_op_ldgsts.sum \
      python bench/conv_step.py --batch 16 --repeat 2 > "$out/ncu_sectors.csv" 2>>"$out/log.txt"
    echo "- ncu exit code: $? (per-kernel sectors and requests: ncu_sectors.csv)" >> "$out/gpu_check.md"
  else
    echo "- ncu: not installed, sectors/request not recorded" >> "$out/gpu_check.md"
  fi
fi
echo "- total: $(( $(date +%s) - start )) s" >> "$out/gpu_check.md"
cat "$out/gpu_check.md"
echo
cat "$out/benchmarks.md" 2>/dev/null  # the measured table, last
