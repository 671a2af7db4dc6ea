#!/usr/bin/env bash
# Create or reuse .venv/ at the repo root and install a requirements file into it (once per change).
set -euo pipefail
cd "$(dirname "$0")/.."
req="${1:-requirements.txt}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=".venv/.installed-$(basename "$req" .txt)"
want=$(cat requirements*.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # pip (not uv/poetry): torch 2.14.1 and torchvision 0.29.1 come from this machine's local wheel store
  .venv/bin/python -m pip install -q -r "$req"
  # the package itself, editable and without touching the pins: gives the `adavit` command
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
