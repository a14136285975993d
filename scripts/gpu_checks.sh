#!/usr/bin/env bash
# The GPU figures in the README, in one run on a CUDA machine (needs luna_vault importable, open_clip and
# faiss): the projector's latency and training throughput on the GPU, and the extraction pipeline against
# the bare ViT-H-14 forward (fp16 autocast). Writes JSON files to $OUT (default bench/out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, faiss; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), '| faiss', faiss.__version__, 'GPUs seen by faiss:', faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0)"
echo "== projector (CUDA)"
python3 bench/bench_projector.py --device cuda --repeats 300 --train-prompts 2000 --epochs 3 --quality-prompts 0 \
    --json "$OUT/projector-gpu.json"
echo "== the CUDA extraction path stores what the CPU path stores"
python3 -m pytest -q -p no:cacheprovider tests/test_encoders.py -k cuda || echo "(pytest unavailable or failed)"
echo "== extraction, ViT-H-14 (CUDA, fp16 autocast)"
python3 bench/bench_extract.py --model ViT-H-14 --device cuda --batch 128 --workers "${WORKERS:-12}" --n "${N:-4000}" \
    --rounds 3 --diagnose --out "$OUT/extract-gpu.json"
