#!/usr/bin/env bash
# Start the Gradio app on http://localhost:7860 (CPU, shipped checkpoint, no network needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh requirements.txt
exec .venv/bin/python app.py "$@"
