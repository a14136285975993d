#!/usr/bin/env bash
# The test command (README and CI): installs what the tests need into .venv, then runs pytest.
#   - this package with its test extras, torch pinned by constraints.txt;
#   - a headless ComfyUI's requirements when one is found ($LUNA_COMFYUI, else ../shared/comfyui),
#     for the tests that load models with ComfyUI and drive a real ComfyUI server.
# Extra arguments go to pytest. pytest's exit code 5 (no tests collected) is a failure here.
set -uo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv && . .venv/bin/activate || exit 1
pip install -c constraints.txt -e '.[test]' || exit 1
comfy="${LUNA_COMFYUI:-../shared/comfyui}"
if [ -f "$comfy/requirements.txt" ]; then
    pip install -c constraints.txt -r "$comfy/requirements.txt" || exit 1
else
    echo "scripts/test.sh: no ComfyUI at $comfy: its integration tests will be skipped" >&2
fi
python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "scripts/test.sh: pytest collected no tests (exit 5): treating as failure" >&2
    exit 1
fi
exit "$rc"
