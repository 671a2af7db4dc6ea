#!/usr/bin/env bash
# Regenerate every number in the README (about 140 minutes on 2 CPU cores; run on an idle machine:
# the latency numbers are medians of wall-clock timings). Writes results/ and updates the card.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh requirements.txt
py() { echo "+ python $*"; .venv/bin/python "$@"; }
mkdir -p results
# AdaViT against downscaling, random, EViT, ATS and ToMe at matched GFLOPs, and against downscaling on a network
# fine-tuned at low sides (the shipped baseline checkpoint; see the README's Recipe) (about an hour; it also chooses
# the default setting: the best on the select half at 3x fewer GFLOPs that runs 2.5x faster at batch 1, so it runs first)
py -m adavit compare --json results/compare.json --html results/compare.html --update-card --default-share 0.3333 --default-speedup 2.5 --set-default \
  --tuned resolution=checkpoints/lowres_s14_flowers102.safetensors
py -m adavit evaluate --update-card --json results/eval_default.json --html results/confusion_default.html
py -m adavit evaluate --full --resolution 224 --update-card --json results/eval_full.json
# the 224 px grid (the default may take a larger decode: compare --sides), the previous defaults and settings whose last stage runs on 32 tokens (257 / 32 = 8x fewer)
py -m adavit sweep --resolution 224 --update-card --json results/sweep.json --html results/sweep.html \
  --point 0.3,0.5,0.5 --point 0.3,1,0.25 --point 0.5,1,0.19 --point 0.5,0.5,0.38 --point 1,0.5,0.24 --point 1,1,0.12
py -m adavit bench --json results/bench.json
py -m adavit appbench --json results/appbench.json
py -m adavit traintime --json results/train_timing.json
# mixed-scale at 252 px against 224 px on the shipped checkpoint, paired per image (about 8 minutes)
py -m adavit ablate --rows resolution --high-side 252 --budgets 0.2,0.27,0.35,0.5 --threads 2 --latency-runs 0 --json results/ablate_252.json
# deployment runtimes and the not-a-flower score
py -m adavit bench --all --runs 10 --json results/bench_runtimes.json
py -m adavit evaluate --runtime onnxruntime --json results/eval_ort.json
py -m adavit evaluate --runtime onnxruntime --precision int8 --json results/eval_ort_int8.json
py -m adavit ood --refit --json results/ood.json  # refit: the statistics follow the default compare just chose
