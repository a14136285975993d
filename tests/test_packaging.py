"""The two dependency lists (pyproject for pip/CLI users, requirements.txt for ComfyUI-Manager) agree."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[1]


def test_requirements_txt_matches_pyproject_without_torch() -> None:
    deps = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    reqs = {line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")}
    assert deps - reqs == {"torch>=2.1"}, "ComfyUI brings torch; everything else must be in both files"
    assert reqs - deps == set()
