"""Shared fixtures: an isolated index cache per test; torchvision made importable beside the CPU torch."""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import pytest

from helpers import SHARED

# PyPI's torchvision is a CUDA build; with the CPU torch its ops fail to register at import. The
# shared sitecustomize defines them (see ../shared/COMFYUI.md) for this process and its children.
TOOLS = SHARED / "comfyui-tools"
if TOOLS.is_dir() and str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TOOLS), os.environ.get("PYTHONPATH", "")]))
    runpy.run_path(str(TOOLS / "sitecustomize.py"))


@pytest.fixture(autouse=True)
def _index_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own index cache so cached FAISS files never leak between tests."""
    cache = tmp_path_factory.mktemp("index-cache")
    monkeypatch.setenv("LUNA_VAULT_CACHE", str(cache))
    return cache
