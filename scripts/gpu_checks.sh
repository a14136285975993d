#!/usr/bin/env bash
# The GPU checks and the GPU figures in the README, in one run on a lent CUDA machine (everything is
# prepared and tested on the CPU first):
#   1. the CUDA tests: extraction's CUDA path stores what the CPU path stores; projector training with
#      the pairs held on the GPU gives the streaming loader's run;
#   2. the extraction pipeline against the bare ViT-H-14 forward (fp16 autocast, random weights) at
#      $N images with two decode-worker counts, and the bare forward while the workers decode (--diagnose);
#   3. the projector's latency and training throughput (pairs on the GPU and streamed);
#   4. whether faiss can use the GPU here (which CUDA libraries the machine has).
# A machine without internet: Python packages it lacks travel as wheels in .whl/ (open_clip_torch,
# ftfy, wcwidth, faiss-cpu). Results go to $OUT (default bench/out), the log to $OUT/gpu_checks.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
exec > >(tee "$OUT/gpu_checks.log") 2>&1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! python3 -c "import luna_vault" 2>/dev/null; then  # not installed: the repository root is the package
    mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/luna_vault && export PYTHONPATH="/tmp/pkg:$PYTHONPATH"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, faiss; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), '| faiss', faiss.__version__, 'GPUs seen by faiss:', faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0)"
echo "== faiss-gpu-cu12 needs CUDA 12's libcudart.so.12 and libcublas.so.12; this machine has:"
ldconfig -p | grep -E "libcublas(Lt)?\.so|libcudart\.so" || echo "(none in ldconfig)"
python3 -c "
import glob, os, site
libs = sorted({os.path.basename(f) for d in site.getsitepackages() for f in glob.glob(os.path.join(d, 'nvidia', '**', 'libcu*.so*'), recursive=True)})
print('python nvidia packages:', ', '.join(l for l in libs if l.startswith(('libcublas', 'libcudart'))) or 'none')"

echo "== CUDA tests"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_encoders.py tests/test_projector.py -k cuda -rs
echo "== extraction, ViT-H-14 (CUDA, fp16 autocast)"
timeout 330 python3 bench/bench_extract.py --model ViT-H-14 --device cuda --batch 128 --workers "${WORKERS:-12,6}" \
    --n "${N:-10000}" --rounds "${ROUNDS:-2}" --diagnose --out "$OUT/extract-gpu.json"
echo "== projector (CUDA)"
timeout 120 python3 bench/bench_projector.py --device cuda --repeats 100 --train-prompts 2000 --epochs 3 --quality-prompts 0 \
    --json "$OUT/projector-gpu.json"
