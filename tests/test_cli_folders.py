"""The ComfyUI a command belongs to (core.comfy_home) and where vaults go: plain names, extra_model_paths.yaml,
install/build/extract/demo defaults, the same folder mode however a vault was made."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from safetensors.numpy import save_file

from helpers import clustered, make_folder
from luna_vault.cli import _parser, main
from luna_vault.core.comfy_home import ComfyUINotFound, find_comfyui, vault_folders
from luna_vault.vault import Vault
from luna_vault.vault.index import RECALL_TARGET


def _comfyui(root: Path) -> Path:
    """The files that make a folder a ComfyUI for core.comfy_home (it never imports ComfyUI)."""
    (root / "comfy").mkdir(parents=True)
    (root / "comfy" / "sd.py").write_text("")
    (root / "folder_paths.py").write_text("")
    return root


def _inputs(folder: Path, n: int = 20) -> list[str]:
    save_file({"embeddings": clustered(n, 16, clusters=3)}, str(folder / "e.safetensors"),
              metadata={"encoder_name": "t", "encoder_hash": "h"})
    (folder / "e.jsonl").write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(n)))
    return ["--embeddings", str(folder / "e.safetensors"), "--entries", str(folder / "e.jsonl")]


@pytest.fixture(autouse=True)
def _no_comfyui_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LUNA_COMFYUI", raising=False)


def test_vault_folders_read_extra_model_paths_as_comfyui_does(tmp_path: Path) -> None:
    root = _comfyui(tmp_path / "ComfyUI")
    (root / "extra_model_paths.yaml").write_text(
        "a111:\n    base_path: /elsewhere/sd\n    checkpoints: models/Stable-diffusion\n    vaults: my-vaults\n"
        "mine:\n    base_path: ../big\n    is_default: true\n    vaults: |\n        v1\n        v2\n"
        "plain:\n    vaults: relative/vaults\n"
        "empty:\n")
    assert vault_folders(root) == [
        tmp_path / "big" / "v2", tmp_path / "big" / "v1",  # is_default: each to the front, as ComfyUI inserts them
        root.resolve() / "models" / "vaults",
        Path("/elsewhere/sd/my-vaults"), root / "relative" / "vaults",  # no base_path: beside the yaml file
    ]
    (root / "extra_model_paths.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ComfyUINotFound, match=r"extra_model_paths.yaml cannot be read as YAML .*; fix it"):
        vault_folders(root)


def test_which_comfyui(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own, other, flag = (_comfyui(tmp_path / n) for n in ("own", "other", "flag"))
    pack = own / "custom_nodes" / "luna-vault"
    pack.mkdir(parents=True)
    assert find_comfyui(packs=[tmp_path / "loose" / "luna-vault"], required=False) is None
    with pytest.raises(ComfyUINotFound, match="pass --comfyui /path/to/ComfyUI or set \\$LUNA_COMFYUI"):
        find_comfyui(packs=[tmp_path / "loose"])
    monkeypatch.setenv("LUNA_COMFYUI", str(other))
    assert find_comfyui(packs=[tmp_path / "loose"]) == other.resolve()
    assert find_comfyui(packs=[pack]) == own.resolve()  # the pack's own ComfyUI before $LUNA_COMFYUI
    assert find_comfyui(flag, packs=[pack]) == flag.resolve()  # --comfyui before both
    with pytest.raises(ComfyUINotFound, match="--comfyui .* is not a ComfyUI folder"):
        find_comfyui(tmp_path, packs=[pack])  # named but not one: an error, never skipped
    monkeypatch.setenv("LUNA_COMFYUI", str(tmp_path / "nowhere"))
    with pytest.raises(ComfyUINotFound, match="LUNA_COMFYUI=.*nowhere: no such folder"):
        find_comfyui(packs=[tmp_path / "loose"])


def test_plain_names_live_in_comfyuis_vault_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root = _comfyui(tmp_path / "ComfyUI")
    monkeypatch.chdir(tmp_path)
    inputs = _inputs(tmp_path)
    assert main(["build", "eyes", *inputs, "--category", "eyes", "--comfyui", str(root), "--no-index"]) == 0
    where = (root / "models" / "vaults" / "eyes.vault").resolve()
    assert capsys.readouterr().out.startswith(f"{where}: 20 entries added")  # says where it wrote
    assert len(Vault.open(where)) == 20 and not (tmp_path / "eyes.vault").exists()
    monkeypatch.setenv("LUNA_COMFYUI", str(root))
    assert main(["info", "eyes", "--json"]) == 0  # `eyes` and `eyes.vault` name the same vault
    assert json.loads(capsys.readouterr().out)["entries"] == 20
    assert main(["query", "eyes.vault", "--embeddings", str(tmp_path / "e.safetensors"), "--rows", "3", "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["queries"][0]["matches"][0]["prompt"] == "p3"
    assert main(["info", "hands"]) == 2
    assert f"no vault 'hands' in {root.resolve() / 'models' / 'vaults'} (vaults there: eyes)" in capsys.readouterr().err
    # a vault in a folder extra_model_paths.yaml adds is found by name; a default one there is where new vaults go
    (root / "extra_model_paths.yaml").write_text(f"more:\n    vaults: {tmp_path / 'more'}\n"
                                                 f"big:\n    is_default: true\n    vaults: {tmp_path / 'big'}\n")
    assert main(["build", "hands", *inputs, "--category", "hands", "--no-index"]) == 0
    assert Vault.open(tmp_path / "big" / "hands.vault").category == "hands"
    assert main(["merge", str(tmp_path / "more" / "both.vault"), "eyes", "hands", "--no-index", "--json"]) == 0
    capsys.readouterr()
    assert main(["info", "both", "--json"]) == 0 and json.loads(capsys.readouterr().out)["entries"] == 40
    # a name that exists here is that path: a folder of images is never taken for a vault name
    (tmp_path / "images").mkdir()
    assert main(["build", "images", *inputs, "--category", "x"]) == 2
    assert "VAULT images: a vault is a folder whose name ends in .vault" in capsys.readouterr().err


def test_install_extract_and_demo_default_to_comfyuis_vaults_with_the_same_mode(tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture[str],
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    root = _comfyui(tmp_path / "ComfyUI")
    monkeypatch.setenv("LUNA_COMFYUI", str(root))
    vaults = (root / "models" / "vaults").resolve()
    inputs = _inputs(tmp_path)
    assert main(["build", str(tmp_path / "eyes.vault"), *inputs, "--category", "eyes", "--no-index"]) == 0
    assert main(["pack", str(tmp_path / "eyes.vault"), "-o", str(tmp_path / "eyes.lvault")]) == 0
    capsys.readouterr()
    assert main(["install", str(tmp_path / "eyes.lvault"), "--name", "shared"]) == 0
    assert capsys.readouterr().out.startswith(f"installed {vaults / 'shared.vault'}: 20 entries")
    mode = 0o777 & ~_umask()
    assert [(p / "").stat().st_mode & 0o777 for p in (tmp_path / "eyes.vault", vaults / "shared.vault", vaults)] == [mode] * 3
    make_folder(tmp_path / "data", 4, sub="hands")
    assert main(["extract", str(tmp_path / "data"), "--random-encoder", "8", "--workers", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["added"] == {str(vaults / "hands.vault"): 4}
    assert (vaults / "hands.vault").stat().st_mode & 0o777 == mode
    assert main(["demo", "--n", "60", "--queries", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["vault"] == str(vaults / "demo-eyes.vault")
    assert len(Vault.open(vaults / "demo-eyes.vault")) == 60


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_rebuild_recall_default_is_the_target_every_build_uses(capsys: pytest.CaptureFixture[str]) -> None:
    sub = next(a for a in _parser()._subparsers._actions if a.dest == "verb").choices["rebuild"]  # type: ignore[union-attr]
    recall = next(a for a in sub._actions if a.dest == "recall")
    assert recall.default is None and f"{RECALL_TARGET:g}" in recall.help


def test_the_cli_spells_the_vault_format_as_the_vault_does() -> None:
    """cli.paths keeps the vault's suffix and manifest name without importing the vault package (start-up)."""
    from luna_vault.cli import paths
    from luna_vault.vault.manifest import MANIFEST, VAULT_SUFFIX

    assert (paths.SUFFIX, paths.MANIFEST) == (VAULT_SUFFIX, MANIFEST)
