#!/usr/bin/env bash
# The GPU checks of issues 5 and 6 as one script, for a lent GPU machine that already has torch
# and torchvision (it reaches no registry): adntn runs from the checkout through PYTHONPATH.
#   bash benchmarks/gpu_checks.sh [SHARD]     # SHARD: i/n of the accuracy grid (default 1/8)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import typer, rich, opt_einsum, safetensors, yaml, pydantic" 2>/dev/null \
  || pip install --no-deps -q -e . 2>/dev/null || true
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# Issue 6: VGG-16 at 224x224, batch 128, the shipped vgg16 recipe; then with channels_last.
python benchmarks/bench_pipeline.py --device cuda --arch vgg16 --recipe vgg16 --size 224 --batch 128
python benchmarks/bench_pipeline.py --device cuda --arch vgg16 --recipe vgg16 --size 224 --batch 128 \
  --channels-last
# Generator step against the dense layer, CUDA rows.
python benchmarks/bench_generators.py --device cuda --repeats 5
# Issue 5: one shard of the full (224x224) accuracy grid; shards append to one results file.
python benchmarks/accuracy/study.py --grid gpu --device cuda --shard "${1:-1/8}" \
  --out benchmarks/results/accuracy_gpu.json
