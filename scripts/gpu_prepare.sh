#!/usr/bin/env bash
# Prepares, on this machine, what scripts/gpu_checks.sh needs on a lent GPU machine that reaches no
# package index: the Python packages its image lacks as wheels in .whl/ (CPython 3.12, x86-64), and
# ../shared (ComfyUI, its tools, the third-party packs) copied into .gpu/shared. Both folders are
# ignored by git (.git/info/exclude) and travel as the device run's `carry` (about 46 MiB together):
#   bash scripts/gpu_prepare.sh
#   device run: command "bash scripts/gpu_checks.sh", carry [".whl", ".gpu"]
# Versions are those of this checkout's .venv where it has them, so both machines run the same code.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude

# open_clip and faiss-cpu for the tests; torchsde for ComfyUI's samplers; the rest for ComfyUI's server
wanted="faiss-cpu open_clip_torch ftfy wcwidth torchsde trampoline alembic Mako SQLAlchemy greenlet pydantic
pydantic-core annotated-types typing-inspection pydantic-settings python-dotenv"
specs=()
for name in $wanted; do
    version=$(.venv/bin/python -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p' || true)
    specs+=("$name${version:+==$version}")
done
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl "${specs[@]}"

shared=../shared
rm -rf .gpu && mkdir -p .gpu/shared
for d in comfyui comfyui-tools custom_nodes; do
    if [ -d "$shared/$d" ]; then
        (cd "$shared" && tar --exclude=.git --exclude=__pycache__ -cf - "$d") | (cd .gpu/shared && tar xf -)
    fi
done
du -sh .whl .gpu
