"""The mistakes a user makes, walked through the real `luna-vault` command in a subprocess: each is answered
with exit code 2 and one line that names the thing and what to do, never an exception class name or a
traceback, and nothing is left half-written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from helpers import clustered

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "generation"
CLASS_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception|Warning)\b|Traceback|<[a-z_.]+ object at 0x")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with what the mistakes need: a vault, inputs, a package, images, files that are not what they seem."""
    w = tmp_path_factory.mktemp("mistakes")
    x = clustered(30, 16, clusters=3)
    save_file({"embeddings": x}, str(w / "e.safetensors"), metadata={"encoder_name": "t", "encoder_hash": "h"})
    (w / "e.jsonl").write_text("\n".join(json.dumps({"prompt": f"p{i}", "quality": i / 30}) for i in range(30)) + "\n")
    (w / "short.jsonl").write_text(json.dumps({"prompt": "only one"}) + "\n")
    env = _env(w)
    for argv in (["build", str(w / "eyes.vault"), "--embeddings", str(w / "e.safetensors"), "--entries", str(w / "e.jsonl"),
                  "--category", "eyes"],
                 ["pack", str(w / "eyes.vault"), "-o", str(w / "eyes.lvault")]):
        res = subprocess.run([sys.executable, "-m", "luna_vault.cli", *argv], capture_output=True, text=True, env=env,
                             timeout=300)
        assert res.returncode == 0, res.stderr
    (w / "notes").mkdir()
    (w / "notes" / "todo.txt").write_text("mine")
    (w / "busy.vault").mkdir()
    (w / "busy.vault" / "photo.jpg").write_bytes(b"not yours")
    (w / "empty").mkdir()
    Image.fromarray(np.full((32, 48, 3), 120, np.uint8)).save(w / "img.png")
    (w / "fake.png").write_text("this is text, not a PNG")
    (w / "broken.yaml").write_text("template: a.json\nreferences:\n  - {image: x.png, region: [1, 2\narms: {a: {}}\n")
    (w / "existing.lvault").write_bytes(b"x")
    return w


def _env(w: Path) -> dict[str, str]:
    """The user's environment, less what the test session adds: no ComfyUI tools on the path (their
    sitecustomize imports torch at start-up) and no $LUNA_COMFYUI."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LUNA_COMFYUI")}
    env["LUNA_VAULT_CACHE"] = str(w / ".." / f"{w.name}-index-cache")
    return env


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


W = "{w}"
MISTAKES = [  # (name, arguments, a part of the one line that must say what to do)
    ("verb typo", ["qury", "eyes"], "invalid choice: 'qury'"),
    ("missing argument", ["info"], "the following arguments are required: vault"),
    ("unknown flag", ["info", f"{W}/eyes.vault", "--colour"], "unrecognized arguments: --colour"),
    ("not a number", ["query", f"{W}/eyes.vault", "--embeddings", f"{W}/e.safetensors", "-k", "five"], "invalid int value"),
    ("no such vault", ["info", f"{W}/nope.vault"], "no vault at"),
    ("a folder that is not a vault", ["info", f"{W}/notes"], "is not a vault: it has no manifest.json"),
    ("a file given as a vault", ["info", f"{W}/e.jsonl"], "is a file, not a vault"),
    ("a plain name without a ComfyUI", ["info", "eyes-nowhere"], "no ComfyUI found to look in"),
    ("--comfyui that is not there", ["info", "eyes", "--comfyui", f"{W}/no-comfy"], "no such folder"),
    ("--comfyui that is not a ComfyUI", ["info", "eyes", "--comfyui", f"{W}/notes"], "is not a ComfyUI folder"),
    ("query without input", ["query", f"{W}/eyes.vault"], "give what to look up"),
    ("query embeddings: a folder", ["query", f"{W}/eyes.vault", "--embeddings", f"{W}/notes"], "is a folder; give a file"),
    ("query embeddings: missing", ["query", f"{W}/eyes.vault", "--embeddings", f"{W}/nope.safetensors"], "no such file"),
    ("query embeddings: not safetensors", ["query", f"{W}/eyes.vault", "--embeddings", f"{W}/e.jsonl"],
     "is not a readable safetensors file"),
    ("k out of range", ["query", f"{W}/eyes.vault", "--embeddings", f"{W}/e.safetensors", "-k", "300"],
     "k=300 but vault 'eyes' holds only 30 entries; use k <= 30"),
    ("k zero", ["query", f"{W}/eyes.vault", "--embeddings", f"{W}/e.safetensors", "-k", "0"], "-k must be a whole number >= 1"),
    ("bad filter", ["query", f"{W}/eyes.vault", "--embeddings", f"{W}/e.safetensors", "--filter", "quality>>1"], "filter"),
    ("filter nothing passes", ["query", f"{W}/eyes.vault", "--embeddings", f"{W}/e.safetensors", "--filter", "quality>5"],
     "no entry of vault 'eyes' passes the filter"),
    ("rows outside", ["query", f"{W}/eyes.vault", "--embeddings", f"{W}/e.safetensors", "--rows", "40"], "row 40 is outside"),
    ("image without an encoder", ["query", f"{W}/eyes.vault", "--image", f"{W}/img.png"], "choose one image encoder"),
    ("image missing", ["query", f"{W}/eyes.vault", "--image", f"{W}/nope.png", "--random-encoder", "16"],
     "--image " + W + "/nope.png: no such file"),
    ("image that is text", ["query", f"{W}/eyes.vault", "--image", f"{W}/fake.png", "--random-encoder", "16"],
     "is not an image Pillow can open"),
    ("crop outside the image", ["query", f"{W}/eyes.vault", "--image", f"{W}/img.png", "--crop", "20,0,40",
                                "--random-encoder", "16"], "the square must fit inside, x + SIZE <= 48"),
    ("crop not numbers", ["query", f"{W}/eyes.vault", "--image", f"{W}/img.png", "--crop", "left", "--random-encoder", "16"],
     "write X,Y,SIZE in pixels"),
    ("crops not one per image", ["query", f"{W}/eyes.vault", "--image", f"{W}/img.png", "--crop", "0,0,8", "--crop", "0,0,8",
                                 "--crop", "1,1,8", "--random-encoder", "16"], "3 --crop for 1 images"),
    ("open_clip weights missing", ["query", f"{W}/eyes.vault", "--image", f"{W}/img.png", "--open-clip", "ViT-B-32",
                                   "--weights", f"{W}/nope.safetensors"], "--weights " + W + "/nope.safetensors: no such file"),
    ("clip vision file missing", ["query", f"{W}/eyes.vault", "--image", f"{W}/img.png", "--clip-vision",
                                  f"{W}/nope.safetensors"], "no such file"),
    ("another image encoder", ["query", f"{W}/eyes.vault", "--image", f"{W}/img.png", "--random-encoder", "8"],
     "holds 16-d embeddings"),
    ("sheet into a missing folder", ["query", f"{W}/eyes.vault", "--image", f"{W}/img.png", "--random-encoder", "16",
                                     "--sheet", f"{W}/no/such/sheet.png"], "does not exist; create it first"),
    ("build: name without .vault", ["build", f"{W}/eyes2", "--embeddings", f"{W}/e.safetensors", "--entries", f"{W}/e.jsonl",
                                    "--category", "eyes"], "ends in .vault"),
    ("build: into a folder of other files", ["build", f"{W}/busy.vault", "--embeddings", f"{W}/e.safetensors", "--entries",
                                             f"{W}/e.jsonl", "--category", "eyes"], "with other files in it (photo.jpg)"),
    ("build: over a vault", ["build", f"{W}/eyes.vault", "--embeddings", f"{W}/e.safetensors", "--entries", f"{W}/e.jsonl",
                             "--category", "eyes"], "a vault already exists"),
    ("build: rows do not pair up", ["build", f"{W}/new.vault", "--embeddings", f"{W}/e.safetensors", "--entries",
                                    f"{W}/short.jsonl", "--category", "eyes"], "they must pair up line by line"),
    ("build: entries missing", ["build", f"{W}/new.vault", "--embeddings", f"{W}/e.safetensors", "--entries",
                                f"{W}/nope.jsonl", "--category", "eyes"], "entries file"),
    ("build: a plain name without a ComfyUI", ["build", "eyes", "--embeddings", f"{W}/e.safetensors", "--entries",
                                               f"{W}/e.jsonl", "--category", "eyes"], "or give a path such as ./eyes.vault"),
    ("pack onto a folder", ["pack", f"{W}/eyes.vault", "-o", f"{W}/notes", "--overwrite"], "is a folder"),
    ("pack into a missing folder", ["pack", f"{W}/eyes.vault", "-o", f"{W}/a/b/x.lvault"], "does not exist; create it first"),
    ("pack over a file", ["pack", f"{W}/eyes.vault", "-o", f"{W}/existing.lvault"], "already exists; choose another name or "
                                                                                      "pass --overwrite"),
    ("card onto a file", ["card", f"{W}/eyes.vault", "-o", f"{W}/e.jsonl"], "is a file; give a folder"),
    ("install: missing", ["install", f"{W}/nope.lvault", "--to", f"{W}/vaults"], "no such file"),
    ("install: not a package", ["install", f"{W}/e.jsonl", "--to", f"{W}/vaults"], "is not a readable package"),
    ("install: nowhere to go", ["install", f"{W}/eyes.lvault"], "or pass --to DIR"),
    ("install: over a vault", ["install", f"{W}/eyes.lvault", "--to", W, "--name", "eyes"], "already exists"),
    ("rebuild: recall", ["rebuild", f"{W}/eyes.vault", "--recall", "98"], "between 0 and 1"),
    ("delete: empty filter", ["delete", f"{W}/eyes.vault", "--filter", ""], "--filter is empty"),
    ("read: a folder", ["read", f"{W}/notes"], "is a folder; give a file"),
    ("read: not an image", ["read", f"{W}/fake.png"], "is not an image Pillow can open"),
    ("extract: no images", ["extract", f"{W}/empty", "--vault", f"{W}/x.vault", "--random-encoder", "8"],
     "no images in " + W + "/empty (looked for .jpeg, .jpg, .png, .webp files"),
    ("extract: no such folder", ["extract", f"{W}/nope", "--vault", f"{W}/x.vault", "--random-encoder", "8"], "no such folder"),
    ("extract: open_clip weights missing", ["extract", W, "--vault", f"{W}/x.vault", "--open-clip", "ViT-B-32", "--weights",
                                            f"{W}/nope.safetensors"], "nope.safetensors: no such file"),
    ("extract: vault without .vault", ["extract", W, "--vault", f"{W}/x", "--random-encoder", "8"], "ends in .vault"),
    ("ab: a folder", ["ab", f"{W}/notes"], "is a folder; give a file"),
    ("ab: broken YAML", ["ab", f"{W}/broken.yaml"], "is not valid YAML"),
    ("plan: missing campaign", ["plan", f"{W}/nope.yaml"], "no such file"),
    ("generate: a server that never answers", ["generate", str(EXAMPLES / "campaigns" / "eyes.yaml"), "--workflow",
                                               str(EXAMPLES / "workflows" / "sdxl_txt2img_api.json"), "--server",
                                               "127.0.0.1:9", "--out", f"{W}/gen", "--limit", "1", "--give-up-after", "0.5",
                                               "--json"],  # no progress lines ("... is not answering") before the error
     "no server has answered for"),
]
WRITES_RESUME_STATE = {"generate: a server that never answers"}  # its job ledger is kept, to resume


@pytest.mark.parametrize("name, argv, says", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_a_mistake_is_one_line_exit_2_and_nothing_half_written(work: Path, name: str, argv: list[str], says: str) -> None:
    argv = [a.replace(W, str(work)) for a in argv]
    says = says.replace(W, str(work))
    before = _snapshot(work)
    res = subprocess.run([sys.executable, "-m", "luna_vault.cli", *argv], capture_output=True, text=True, env=_env(work),
                         cwd=work, timeout=300)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert res.stdout == ""
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: "), res.stderr
    assert says in res.stderr, res.stderr
    assert not CLASS_NAME.search(res.stderr), res.stderr
    after = _snapshot(work)
    if name in WRITES_RESUME_STATE:
        after = {k: v for k, v in after.items() if not k.startswith("gen")}
    assert after == before, "something was written or changed"
    shutil.rmtree(work / "gen", ignore_errors=True)


def test_verbose_anywhere_changes_only_the_detail(work: Path) -> None:
    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "luna_vault.cli", *argv], capture_output=True, text=True,
                              env=_env(work), timeout=300)

    plain = run("info", str(work / "notes"))
    for argv in (["-v", "info", str(work / "notes")], ["info", "-v", str(work / "notes")], ["info", str(work / "notes"), "-v"]):
        res = run(*argv)
        assert res.returncode == plain.returncode == 2
        assert res.stderr.splitlines()[-1] == plain.stderr.strip()  # the same one line, last
        assert "Traceback" in res.stderr  # the detail: where it was raised
    res = run("info", str(work / "nope.vault"), "--verbose")  # a command line that cannot work: no code path to show
    assert res.returncode == 2 and res.stderr.count("\n") == 1


def test_upgrade_on_a_current_vault_says_so(work: Path) -> None:
    manifest = (work / "eyes.vault" / "manifest.json").read_bytes()
    res = subprocess.run([sys.executable, "-m", "luna_vault.cli", "upgrade", str(work / "eyes.vault")], capture_output=True,
                         text=True, env=_env(work), timeout=300)
    assert res.returncode == 0 and res.stdout == f"{work / 'eyes.vault'}: already format version 2; nothing to upgrade\n"
    assert (work / "eyes.vault" / "manifest.json").read_bytes() == manifest

