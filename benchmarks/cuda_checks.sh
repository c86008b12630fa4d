#!/usr/bin/env bash
# The probe's CUDA checks, as one script for a machine with a GPU (results under ${OUT:-cuda_out}).
#   bash benchmarks/cuda_checks.sh
# 1. the probe tests with device "auto" (= cuda there); 2. ERF throughput, float32 and bfloat16;
# 3. the CLI: exact validation of resnet-like stages and an ERF map (png) on cuda.
# Results worth keeping go into benchmarks/probe_throughput.json (its runs.cuda_float32 / runs.cuda_bfloat16),
# one current JSON per script; the overhead run only into RESULTS.md's text (overhead.json is this machine's).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-cuda_out}; mkdir -p "$OUT"
PY=${PY:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$PY -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1 || echo "pip install -e . failed"
$PY -c "import torch, torchvision, rfscope, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"
echo "== probe tests on cuda (device auto)"
timeout 200 $PY -m pytest -q -n 8 -p no:cacheprovider tests/test_probe_erf.py tests/test_probe_exact.py tests/test_probe_dist.py 2>&1 | tail -12
echo "== ERF throughput float32"
timeout 150 $PY benchmarks/probe_throughput.py --device cuda --out "$OUT/probe_cuda_float32.json"
echo "== ERF throughput bfloat16"
timeout 150 $PY benchmarks/probe_throughput.py --device cuda --dtype bfloat16 --repeats 2 --out "$OUT/probe_cuda_bfloat16.json"
echo "== CLI on cuda"
timeout 60 rfscope probe examples/quickstart.py --mode exact --node stage3 --device cuda
timeout 60 rfscope probe examples/quickstart.py --mode erf --node stage3 --samples 256 --batch-size 64 --device cuda --quiet --out "$OUT/erf_quickstart"
ls "$OUT"/erf_quickstart
if [ -n "${WITH_OVERHEAD:-}" ]; then
  echo "== analysis overhead on this machine's CPU (no GPU involved)"
  timeout 120 $PY benchmarks/overhead.py --out "$OUT/overhead_gpu_host.json" | tail -14
fi
