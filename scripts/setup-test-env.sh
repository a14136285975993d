#!/usr/bin/env bash
# Sets up .venv for the tests (README's test command and CI run this, then pytest):
#   - this package with its test extras, torch pinned by constraints.txt;
#   - a headless ComfyUI's requirements when one is found ($LUNA_COMFYUI, else ../shared/comfyui),
#     for the tests that load models with ComfyUI and drive a real ComfyUI server.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
. .venv/bin/activate
pip install -c constraints.txt -e '.[test]'
comfy="${LUNA_COMFYUI:-../shared/comfyui}"
if [ -f "$comfy/requirements.txt" ]; then
    pip install -c constraints.txt -r "$comfy/requirements.txt"
else
    echo "scripts/setup-test-env.sh: no ComfyUI at $comfy: its integration tests will be skipped" >&2
fi
