#!/usr/bin/env bash
# The device run of issue 15, in one script: the GPU tests (plain pytest: no pytest-asyncio
# needed), the PASS/FAIL probe, and the GPU benchmark, everything written under $OUT.
#
#     OUT=/some/dir bash benchmarks/gpu_check.sh          # the whole run
#     QUICK=1 bash benchmarks/gpu_check.sh                # shorter benchmark
#
# Runs from the source tree (PYTHONPATH=src): no pip, no make. Without a usable GPU every
# device test and claim reports SKIP with the reason, and the script still exits 0; it exits 1
# when a test or a probe claim FAILED. Each step runs even when an earlier one failed.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
status=0

{
  echo "== gpu_check $(date -u +%FT%TZ) on $(hostname)"
  "$PY" - <<'PY'
import importlib, platform
print("python", platform.python_version())
for name in ("numpy", "cupy", "torch", "pytest", "pytest_asyncio", "pytest_timeout"):
    try:
        print(f"{name:>15} {getattr(importlib.import_module(name), '__version__', '?')}")
    except Exception as exc:  # missing or broken: say so, go on
        print(f"{name:>15} -- ({type(exc).__name__}: {exc})")
PY
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3 || true
} 2>&1 | tee "$OUT/environment.txt"

# The GPU tests, with the asyncio plugin switched off even where it is installed: they must
# not need it. -rs prints why anything skipped (0 skipped is expected on the device).
timeout_flag=()
"$PY" -c "import pytest_timeout" 2>/dev/null && timeout_flag=(--timeout=180)
echo "== pytest -m gpu" | tee "$OUT/pytest_gpu.txt"
"$PY" -m pytest -p no:asyncio -p no:cacheprovider -m gpu -rs -q "${timeout_flag[@]}" \
    tests/test_gpu.py tests/test_gpu_standin.py tests/test_gpu_held_memory.py \
    tests/test_gpu_pools.py --junitxml="$OUT/pytest_gpu.xml" 2>&1 | tee -a "$OUT/pytest_gpu.txt"
rc=${PIPESTATUS[0]}
# 5 = nothing selected (no gpu-marked test collected): a failure of this script, not a pass
[ "$rc" -ne 0 ] && status=1 && echo "pytest -m gpu: exit $rc" | tee -a "$OUT/pytest_gpu.txt"

# The host-path logic of the same modules (stand-in and host allocator): quick, no device.
echo "== pytest (host path of the GPU modules)" | tee "$OUT/pytest_host.txt"
"$PY" -m pytest -p no:asyncio -p no:cacheprovider -m "not gpu" -q "${timeout_flag[@]}" \
    tests/test_gpu.py tests/test_gpu_standin.py tests/test_gpu_held_memory.py \
    tests/test_gpu_pools.py 2>&1 | tee -a "$OUT/pytest_host.txt"
[ "${PIPESTATUS[0]}" -ne 0 ] && status=1

echo "== probe" | tee "$OUT/probe.txt"
"$PY" benchmarks/gpu_probe.py --out "$OUT" 2>"$OUT/probe_errors.txt" | tee -a "$OUT/probe.txt"
[ "${PIPESTATUS[0]}" -ne 0 ] && status=1

echo "== benchmark" | tee "$OUT/bench.txt"
"$PY" benchmarks/bench_gpu.py --out "$OUT" ${QUICK:+--quick} 2>&1 | tee -a "$OUT/bench.txt"
[ "${PIPESTATUS[0]}" -ne 0 ] && status=1

echo "== gpu_check: exit $status; everything is under $OUT" | tee -a "$OUT/environment.txt"
exit $status
