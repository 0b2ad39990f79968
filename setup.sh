#!/usr/bin/env bash
# Set salmap up on a fresh machine and run its demo:
#   Chromium (for the report's browser test), a virtual environment in .venv with the CPU
#   build of PyTorch first (a plain `torch` requirement would pull the CUDA wheels), salmap
#   with its development tools, then `salmap demo` on the embedded MNIST sample.
# Arguments are passed on to `salmap demo` (e.g. --out DIR).
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "== installing Chromium (headless report checks)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: Chromium could not be installed; the browser test will be skipped"
fi

echo "== creating .venv"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
echo "== installing PyTorch (CPU build)"
.venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -W ignore -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
echo "== installing salmap"
.venv/bin/python -m pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import salmap"

echo "== running salmap demo"
.venv/bin/salmap demo "$@"
