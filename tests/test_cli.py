"""The luna-vault CLI: every verb, its JSON output and exit codes, and the demo as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from helpers import clustered
from luna_vault.cli import main
from luna_vault.vault import Vault


def _pairs(folder: Path, n: int, seed: int, d: int = 24, name: str = "pairs") -> tuple[Path, Path, np.ndarray]:
    x = clustered(n, d, clusters=5, sample_seed=seed)
    emb = folder / f"{name}.safetensors"
    save_file({"embeddings": x}, str(emb), metadata={"encoder_name": "test-vit", "encoder_hash": "abc123"})
    entries = folder / f"{name}.jsonl"
    rows = [{"prompt": f"{name} prompt {i % 9}", "checkpoint": ["ponyXL", "sdxl"][i % 2], "quality": round(i / n, 3), "seed": i}
            for i in range(n)]
    rows[3] = {"checkpoint": "ponyXL"}  # no prompt: skipped, reported
    entries.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return emb, entries, x


def _json(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 0) -> dict:
    assert main(argv) == code
    return json.loads(capsys.readouterr().out)


def test_build_append_query_info_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    emb, entries, x = _pairs(tmp_path, 60, 1)
    vault = str(tmp_path / "eyes.vault")
    out = _json(capsys, ["build", vault, "--embeddings", str(emb), "--entries", str(entries), "--category", "eyes", "--json"])
    assert (out["added"], out["entries"]) == (59, 59)
    assert out["skipped"] == [{"index": 3, "source": "", "reason": "missing prompt"}]
    emb2, entries2, _ = _pairs(tmp_path, 20, 2, name="more")
    out = _json(capsys, ["append", vault, "--embeddings", str(emb2), "--entries", str(entries2), "--json"])
    assert (out["added"], out["entries"]) == (19, 78)
    out = _json(capsys, ["query", vault, "--embeddings", str(emb), "--rows", "0,5-6", "-k", "3", "--json"])
    assert [q["row"] for q in out["queries"]] == [0, 5, 6]
    top = out["queries"][1]["matches"][0]
    assert (top["id"], top["prompt"]) == (4, "pairs prompt 5")  # row 3 was skipped, so row 5 is entry 4
    assert top["similarity"] == pytest.approx(1.0, abs=2e-3)
    out = _json(capsys, ["query", vault, "--embeddings", str(emb), "--rows", "1", "--filter", "checkpoint=sdxl", "-k", "4", "--json"])
    assert all(m["metadata"]["checkpoint"] == "sdxl" for m in out["queries"][0]["matches"])
    info = _json(capsys, ["info", vault, "--json"])
    assert (info["entries"], info["prompts"], info["encoder"]["weights_hash"], info["index_state"]["spec"]) == (78, 18, "abc123", "Flat")
    assert _json(capsys, ["verify", vault, "--json"]) == {"vault": vault, "ok": True, "problems": []}
    assert main(["info", vault]) == 0
    assert "encoder   test-vit" in capsys.readouterr().out


def test_delete_merge_rebuild_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    emb, entries, x = _pairs(tmp_path, 40, 1)
    a, b, m = (str(tmp_path / f"{n}.vault") for n in "abm")
    for v in (a, b):
        main(["build", v, "--embeddings", str(emb), "--entries", str(entries), "--category", "eyes", "--json"])
    capsys.readouterr()
    out = _json(capsys, ["delete", a, "--filter", "checkpoint=sdxl", "--json"])
    assert (out["deleted"], out["entries"]) == (19, 20)  # row 3 (sdxl) was never added
    out = _json(capsys, ["merge", m, a, b, "--json"])
    assert out["entries"] == 20 + 39
    out = _json(capsys, ["rebuild", a, "--compact", "--index", "IVF4,PQ6x4fs", "--json"])
    assert out["spec"] == "IVF4,PQ6x4fs" and out["recall_at_5"] is not None
    assert Vault.open(a).manifest.index == "IVF4,PQ6x4fs" and Vault.open(a).n_entries == 20
    # errors: exit code 2 and a readable message, no traceback
    assert main(["info", str(tmp_path / "missing.vault")]) == 2
    assert "no vault at" in capsys.readouterr().err
    assert main(["query", a, "--embeddings", str(emb), "-k", "50"]) == 2
    assert "k=50 but vault 'a' holds only 20 entries" in capsys.readouterr().err
    assert main(["build", a, "--embeddings", str(emb), "--entries", str(entries), "--category", "eyes"]) == 2
    assert "already exists" in capsys.readouterr().err
    seg = next(Path(b).glob("seg-*.safetensors"))
    data = bytearray(seg.read_bytes())
    data[-3] ^= 0x55
    seg.write_bytes(bytes(data))
    out = _json(capsys, ["verify", b, "--json"], code=1)
    assert not out["ok"] and "checksum" in out["problems"][0]


def test_query_several_vaults_auto_detects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    vaults = []
    for name in ("eyes", "hands"):
        centre = rng.standard_normal(24).astype(np.float32) * 4
        x = clustered(30, 24, clusters=2, sample_seed=len(vaults)) + centre / np.linalg.norm(centre)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        emb = tmp_path / f"{name}.safetensors"
        save_file({"embeddings": x}, str(emb))
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps({"prompt": f"{name} {i}"}) for i in range(30)))
        main(["build", str(tmp_path / f"{name}.vault"), "--embeddings", str(emb), "--entries", str(tmp_path / f"{name}.jsonl"),
              "--category", name, "--json"])
        vaults.append(str(tmp_path / f"{name}.vault"))
    capsys.readouterr()
    out = _json(capsys, ["query", *vaults, "--embeddings", str(tmp_path / "hands.safetensors"), "--rows", "4", "--json"])
    q = out["queries"][0]
    assert q["vault"] == "hands" and q["matches"][0]["prompt"] == "hands 4"
    assert q["scores"]["hands"] > q["scores"]["eyes"]


@pytest.mark.slow
def test_demo_runs_as_a_user_would(tmp_path: Path) -> None:
    beside = Path(sys.executable).parent / "luna-vault"  # the venv's script, also when the venv is not activated
    exe = str(beside) if beside.exists() else shutil.which("luna-vault")
    assert exe, "the luna-vault console script is not installed (pip install -e .)"
    res = subprocess.run([exe, "demo", "--n", "400", "--queries", "30", "--json", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["entries"] == 400 and out["retrieved_conditioning"] == [8, 77, 768]
    assert out["top1_same_iris_colour"] > 2 * out["chance_same_iris_colour"]
    assert Vault.open(tmp_path / "demo-eyes.vault").verify() == []
    env = {k: v for k, v in os.environ.items() if k != "LUNA_COMFYUI"}  # no ComfyUI: the vault goes to a temporary folder
    res = subprocess.run([exe, "demo", "--n", "200", "--queries", "10"], capture_output=True, text=True, timeout=300,
                         env=env, cwd=tmp_path)
    assert res.returncode == 0 and "untrained" in res.stdout and "query k=5" in res.stdout
    assert "no ComfyUI found to keep the vault in: pass --out DIR to keep it" in res.stdout
