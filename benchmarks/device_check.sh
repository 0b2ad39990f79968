#!/usr/bin/env bash
# The device check of issue 16, for a machine with CUDA and no network. From the repository root:
#   bash benchmarks/device_check.sh [--no-demo] [--probe]
# writes $OUT/gpu.txt, $OUT/jsma_profile.txt, $OUT/tests.txt and $OUT/demo.txt: benchmarks/gpu.py first
# (every figure of the table), then the GPU tests, then a small `salmap demo --device auto`.
# --probe: then benchmarks/gpu_probe.py's occlusion and FGSM parts ($OUT/probe.txt and its profiles).
# .whl/ may hold wheels of packages the machine lacks (mlxtend, torchattacks, captum); they are
# installed into /tmp/site, so packages already present are never touched. About 3 minutes on an H100.
# To fill it here first: pip download --no-deps -d .whl mlxtend torchattacks captum
# (and echo /.whl/ >> .git/info/exclude, then carry .whl to the device).
set -u
NO_DEMO=0; PROBE=0
for arg in "$@"; do
  case "$arg" in
    --no-demo) NO_DEMO=1 ;;
    --probe) PROBE=1 ;;
    *) echo "device_check: unknown argument $arg (expected --no-demo, --probe)"; exit 2 ;;
  esac
done
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || echo "device_check: wheel install failed; going on with what is installed"
fi
export PYTHONPATH=/tmp/site:$PWD/src
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
python3 -m pip list 2>/dev/null | grep -i -E "^(torch|torchvision|numpy|scipy|matplotlib|safetensors|scikit-learn|pyyaml|pillow|tqdm) " | tr '\n' ' '; echo

echo "== benchmarks/gpu.py"
timeout 300 python3 benchmarks/gpu.py --out "$OUT" 2>&1 | tee "$OUT/gpu.txt" | grep -v "it/s\]\|batch/s\]"

echo "== GPU tests (pytest -m gpu, and the property suite's cuda cases)"
timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu -rs tests 2>&1 | tee "$OUT/tests.txt" | tail -25
timeout 90 python3 -m pytest -q -p no:cacheprovider -k cuda tests/test_properties_*.py 2>&1 | tee -a "$OUT/tests.txt" | tail -8

if [ "$PROBE" = 1 ]; then
  for part in fgsm occlusion; do
    echo "== benchmarks/gpu_probe.py --only $part"
    timeout 150 python3 benchmarks/gpu_probe.py --only "$part" --out "$OUT" 2>&1 | tee -a "$OUT/probe.txt" \
      | grep -v "Warning\|_warn_once\|warnings.warn"
  done
fi

if [ "$NO_DEMO" = 1 ]; then
  echo "== demo skipped (--no-demo)"
elif [ "$SECONDS" -lt 420 ]; then
  echo "== salmap demo --device auto (small)"
  timeout $((500 - SECONDS)) python3 -m salmap demo --out /tmp/salmap-demo -n 20 --epochs 3 --seg-epochs 1 \
    > "$OUT/demo.txt" 2>&1
  echo "demo exit $?"; grep -v "it/s\]\|batch/s\]" "$OUT/demo.txt" | tail -15
else
  echo "== demo skipped (${SECONDS} s used)"
fi
echo "device_check: ${SECONDS} s"
