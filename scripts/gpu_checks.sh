#!/usr/bin/env bash
# The GPU checks and the GPU figures in the README, in one run on a lent CUDA machine (everything is
# prepared and tested on the CPU first):
#   1. the test suite with CUDA visible, where open_clip and projector training default to the GPU and
#      ComfyUI places its models on the GPU as it does for a user (LUNA_TEST_COMFY_GPU=1), including the
#      CUDA-only tests (extraction's CUDA path stores what the CPU path stores; projector training with
#      the pairs held on the GPU gives the streaming loader's run; torchrun with more processes than
#      GPUs is refused with what to run): the in-process tests, the files that touch the GPU first;
#   2. ComfyUI servers started without --cpu, driven over HTTP (INTEGRATION: which test files);
#   3. with BENCH=1: the extraction pipeline against the bare ViT-H-14 forward (fp16 autocast, random
#      weights) at $N images with two decode-worker counts, and the projector's latency and training
#      throughput (pairs on the GPU and streamed);
#   4. whether faiss can use the GPU here (which CUDA libraries the machine has).
# A machine without internet: the Python packages it lacks travel as wheels in .whl/, and ../shared
# (ComfyUI, its tools) as .gpu/shared when it is not beside the checkout; scripts/gpu_prepare.sh makes
# both here (and lists the packages); carry both. PyAV (~40 MB) is replaced by an empty stand-in:
# ComfyUI imports it at module level for video types only.
# Results go to $OUT (default bench/out), the log to $OUT/gpu_checks.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
exec > >(tee "$OUT/gpu_checks.log") 2>&1
# packages and this checkout go into the machine's own Python (a .pth file), so that every process finds them,
# also the CLI runs whose tests clear PYTHONPATH; and the console script beside that Python
py=$(command -v python3)
site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl || exit 1
fi
if ! python3 -c "import luna_vault" 2>/dev/null; then  # not installed: the repository root is the package
    mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/luna_vault && echo /tmp/pkg >"$site/luna-vault-checkout.pth"
fi
if [ ! -e "$(dirname "$py")/luna-vault" ]; then
    printf '#!%s\nimport sys\nfrom luna_vault.cli import main\nsys.exit(main())\n' "$py" >"$(dirname "$py")/luna-vault"
    chmod +x "$(dirname "$py")/luna-vault"
fi
if [ ! -e ../shared ] && [ -d .gpu/shared ]; then
    ln -s "$PWD/.gpu/shared" ../shared
fi
if ! python3 -c "import av" 2>/dev/null; then
    s=/tmp/stubs/av
    mkdir -p $s/subtitles
    printf 'class _Any:\n    pass\n\n\ndef __getattr__(name):\n    return type(name, (_Any,), {})\n' >$s/__init__.py
    for f in container.py subtitles/__init__.py subtitles/stream.py; do cp $s/__init__.py "$s/$f"; done
    echo /tmp/stubs >"$site/av-stand-in.pth"
fi
export LUNA_TEST_COMFY_GPU=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, faiss; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), '| faiss', faiss.__version__, 'GPUs seen by faiss:', faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0)"
echo "== faiss-gpu-cu12 needs CUDA 12's libcudart.so.12 and libcublas.so.12; this machine has:"
ldconfig -p | grep -E "libcublas(Lt)?\.so|libcudart\.so" || echo "(none in ldconfig)"

per_test() { python3 -c "import pytest_timeout" 2>/dev/null && echo "--timeout $1"; }  # one hung test must not eat the run
echo "== the test suite, CUDA visible, ComfyUI on the GPU (in-process)"
# the files whose code sees the GPU first (ComfyUI's models, open_clip, the projector, extraction), then the rest
first="families conditioning flux encoders projector cli_query nodes extraction ab cli search"
# shellcheck disable=SC2046,SC2086
timeout "${SUITE_S:-300}" python3 -m pytest -v --tb=short -p no:cacheprovider $(per_test 120) --junitxml "$OUT/suite.xml" \
    -rfEs --durations 15 --continue-on-collection-errors ${SUITE:-$(printf 'tests/test_%s.py ' $first) tests} --ignore=tests/integration | grep -v " PASSED "
echo "== ComfyUI servers on the GPU"
# shellcheck disable=SC2086
timeout "${INTEGRATION_S:-240}" python3 -m pytest -v --tb=short -p no:cacheprovider $(per_test 180) --junitxml "$OUT/integration.xml" -rfEs \
    ${INTEGRATION:-tests/integration/test_comfyui_nodes.py tests/integration/test_family_sampling.py tests/integration/test_detail_sampling.py}
[ "${BENCH:-0}" = 1 ] || exit 0
echo "== extraction, ViT-H-14 (CUDA, fp16 autocast)"
timeout 330 python3 bench/bench_extract.py --model ViT-H-14 --device cuda --batch 128 --workers "${WORKERS:-12,6}" \
    --n "${N:-10000}" --rounds "${ROUNDS:-2}" --diagnose --out "$OUT/extract-gpu.json"
echo "== projector (CUDA)"
timeout 120 python3 bench/bench_projector.py --device cuda --repeats 100 --train-prompts 2000 --epochs 3 --quality-prompts 0 \
    --json "$OUT/projector-gpu.json"
