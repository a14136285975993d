"""Start a real ComfyUI headless on 127.0.0.1 with this pack installed, and drive it over HTTP.

Follows ../shared/COMFYUI.md: a writable copy of the ComfyUI source, a temp --base-directory whose
custom_nodes holds a link to this repository, --cpu (unless LUNA_TEST_COMFY_GPU=1, on a lent GPU), an
empty front-end root, and the shared sitecustomize on PYTHONPATH (CPU torch beside PyPI's CUDA
torchvision; not in GPU mode). Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from helpers import COMFYUI, SHARED, comfy_on_gpu

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """One ComfyUI process; `base` is its --base-directory (models/, input/, output/, custom_nodes/)."""

    def __init__(self, workdir: Path, start_timeout: float = 180.0, frontend: bool = False) -> None:
        self.workdir = workdir
        self.app = workdir / "comfyui"
        self.base = workdir / "base"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "comfyui.log"
        self.frontend = frontend  # serve the installed web UI (comfyui-frontend-package) instead of nothing

    def prepare(self) -> None:
        shutil.copytree(COMFYUI, self.app, ignore=shutil.ignore_patterns("__pycache__", "tests", "tests-unit"))
        for sub in ("custom_nodes", "input", "output", "temp", "user", "models/vaults", "models/clip_vision", "models/clip"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        (self.base / "custom_nodes" / "luna_vault").symlink_to(REPO, target_is_directory=True)
        (self.workdir / "frontend").mkdir(exist_ok=True)

    def start(self) -> None:
        env = dict(os.environ)
        tools, gpu = str(SHARED / "comfyui-tools"), comfy_on_gpu()
        if gpu:  # a matched torch: no shim, and torch must not be imported before main.py sets its CUDA allocator
            # (the shim's sitecustomize imports it)
            env["PYTHONPATH"] = os.pathsep.join(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != tools)
        else:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [tools, env.get("PYTHONPATH", "")]))
        env["LUNA_VAULT_CACHE"] = str(self.workdir / "index-cache")
        cmd = [sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--disable-api-nodes", "--database-url", "sqlite:///:memory:",
               "--disable-auto-launch"]
        if not gpu:
            cmd.append("--cpu")
        if not self.frontend:
            cmd += ["--front-end-root", str(self.workdir / "frontend")]
        self.proc = subprocess.Popen(cmd, cwd=self.app, env=env, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        deadline = time.time() + self.start_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/object_info/LunaVaultQuery")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer within {self.start_timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    # ---- HTTP ------------------------------------------------------------------------------------
    def get(self, path: str, timeout: float = 30.0) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def post(self, path: str, body: Any, timeout: float = 30.0) -> tuple[int, Any]:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def run(self, graph: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
        """Queue an API-format graph and wait for it; returns its /history entry (raises if rejected)."""
        code, body = self.post("/prompt", {"prompt": graph, "client_id": uuid.uuid4().hex})
        if code != 200:
            raise ValueError(f"prompt rejected ({code}): {json.dumps(body)[:2000]}")
        prompt_id = body["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            entry = hist.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                    entry["status"]["completed"] or entry["status"].get("status_str") == "error"):
                return entry
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running a prompt:\n{self.log_tail()}")
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")


def require_comfyui(*modules: str) -> None:
    """Skip the calling test module unless ../shared/comfyui and its requirements (`modules`) are there."""
    import importlib

    import pytest

    if not (COMFYUI / "main.py").is_file():
        pytest.skip("needs ComfyUI at ../shared/comfyui", allow_module_level=True)
    for name in ("aiohttp", "requests", *modules):
        try:
            importlib.import_module(name)
        except ImportError as e:
            pytest.skip(f"ComfyUI's requirements are not installed ({e}); run scripts/setup-test-env.sh",
                        allow_module_level=True)


def save_random_models(base: Path) -> None:
    """Small random-initialised models ComfyUI's loaders accept: clip_vision/vit-l-random.pt (ViT-L/14)
    and text_encoders/clip-l-random.pt (CLIP-L), made by ../shared/comfyui-tools."""
    sys.path.insert(0, str(SHARED / "comfyui-tools"))
    from make_clip_text import text_shapes
    from make_clip_vision import build_sd, save, vision_shapes

    (base / "models" / "clip_vision").mkdir(parents=True, exist_ok=True)
    (base / "models" / "text_encoders").mkdir(parents=True, exist_ok=True)
    save(build_sd(vision_shapes("vitl"), "pt", seed=0), str(base / "models" / "clip_vision" / "vit-l-random.pt"), "pt")
    save(build_sd(text_shapes("clip_l"), "pt", seed=1), str(base / "models" / "text_encoders" / "clip-l-random.pt"), "pt")


def execution_error(entry: dict[str, Any]) -> dict[str, Any] | None:
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data
    return None
