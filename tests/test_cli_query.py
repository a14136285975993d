"""`luna-vault query --image`: from a folder of images to "what does this crop match?" in two commands, with
the encoders extract uses (random, open_clip, ComfyUI's loader) and the node's encoder check and contact sheet."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import COMFYUI, SHARED, make_folder, tiny_open_clip
from luna_vault.cli import main
from luna_vault.vault import Vault


def _run(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 0) -> dict:
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == code, err
    return json.loads(out) if code == 0 and "--json" in argv else {"err": err, "out": out}


@pytest.fixture
def eyes_and_hands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    """A folder of eyes and hands images, extracted with a 32-d random encoder into vaults/eyes and vaults/hands."""
    data = tmp_path / "data"
    make_folder(data, 12, sub="eyes")
    make_folder(data, 8, seed=3, sub="hands")
    _run(capsys, ["extract", str(data), "--vault-dir", str(tmp_path / "vaults"), "--random-encoder", "32",
                  "--workers", "0", "--json"])
    return data, tmp_path / "vaults"


def test_two_commands_from_a_folder_to_what_a_crop_matches(eyes_and_hands: tuple[Path, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    data, vaults = eyes_and_hands
    image = data / "eyes" / "img0005.png"
    out = _run(capsys, ["query", str(vaults / "eyes.vault"), "--image", str(image), "--random-encoder", "32", "-k", "3",
                        "--json"])
    (q,) = out["queries"]
    assert q["image"] == str(image) and q["crop"] is None and q["vault"] == "eyes" and len(q["matches"]) == 3
    top = q["matches"][0]
    # the same pixels, prepared as extract prepared them: the image's own entry, similarity 1 up to fp16 storage
    assert top["metadata"]["source"] == "eyes/img0005.png" and top["prompt"] == "eyes prompt 5"
    assert top["similarity"] == pytest.approx(1.0, abs=2e-3)
    assert out["encoder"] == Vault.open(vaults / "eyes.vault").encoder.name
    # the text form: one line per match with prompt, similarity and metadata
    text = _run(capsys, ["query", str(vaults / "eyes.vault"), "--image", str(image), "--random-encoder", "32", "-k", "2"])["out"]
    lines = text.splitlines()
    assert lines[0] == f"{image} -> vault 'eyes'"
    assert lines[1].split()[0] == f"{top['similarity']:.4f}" and "eyes prompt 5" in lines[1] and "category=eyes" in lines[1]


def test_crops_auto_detect_and_the_contact_sheet(eyes_and_hands: tuple[Path, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    data, vaults = eyes_and_hands
    # 40 x 50 and 40 x 49 pixels: these crops are the squares extract's centre crop took, so each crop's
    # best match is its own image (similarity ~1) and auto-detect picks that image's vault
    hand, eye = data / "hands" / "img0002.png", data / "eyes" / "img0001.png"
    sheet = tmp_path / "sheet.png"
    out = _run(capsys, ["query", str(vaults / "eyes.vault"), str(vaults / "hands.vault"), "--image", str(hand), str(eye),
                        "--crop", "0,5,40", "--crop", "0,4,40", "--random-encoder", "32", "-k", "1",
                        "--sheet", str(sheet), "--json"])
    assert [q["vault"] for q in out["queries"]] == ["hands", "eyes"]  # auto-detect, per crop
    assert [q["crop"] for q in out["queries"]] == [[0, 5, 40], [0, 4, 40]]
    assert [q["matches"][0]["metadata"]["source"] for q in out["queries"]] == ["hands/img0002.png", "eyes/img0001.png"]
    scores = out["queries"][0]["scores"]
    assert set(scores) == {"eyes", "hands"} and scores["hands"] > scores["eyes"]
    # the crop is what was embedded: the same square cut by hand gives the same answer
    Image.open(eye).convert("RGB").crop((0, 4, 40, 44)).save(tmp_path / "cut.png")
    cut = _run(capsys, ["query", str(vaults / "eyes.vault"), "--image", str(tmp_path / "cut.png"), "--random-encoder", "32",
                        "-k", "1", "--json"])["queries"][0]["matches"][0]
    assert cut["id"] == out["queries"][1]["matches"][0]["id"]
    assert cut["similarity"] == pytest.approx(out["queries"][1]["matches"][0]["similarity"], abs=1e-6)
    # the node's sheet, one row per crop: the crop and its k matches in 128 px cells (4 px gaps) over a 38 px caption
    with Image.open(sheet) as img:
        assert img.format == "PNG" and img.size == (2 * (128 + 4) + 4, 2 * (128 + 30 + 8))
    assert out["sheet"] == str(sheet.resolve())


def test_filter_leaving_fewer_than_k_says_so(eyes_and_hands: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data, vaults = eyes_and_hands
    argv = ["query", str(vaults / "eyes.vault"), "--image", str(data / "eyes" / "img0000.png"), "--random-encoder", "32",
            "-k", "5", "--filter", "source~img000"]
    out = _run(capsys, argv + ["--json"])
    (q,) = out["queries"]
    assert len(q["matches"]) == 5
    assert "note" not in q  # img0000..img0009: 10 pass
    out = _run(capsys, [*argv[:-1], "source~img001", "--json"])  # img0010, img0011
    (q,) = out["queries"]
    assert len(q["matches"]) == 2
    assert q["note"] == "2 of k=5 matches: only 2 entries of vault 'eyes' pass the filter 'source~img001'"
    text = _run(capsys, argv[:-1] + ["source~img001"])["out"]
    assert "  note: 2 of k=5 matches: only 2 entries of vault 'eyes' pass the filter 'source~img001'" in text.splitlines()


def test_another_encoder_is_refused_before_anything_is_encoded(eyes_and_hands: tuple[Path, Path],
                                                               capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    data, vaults = eyes_and_hands
    from luna_vault.extraction.encoders import RandomImageEncoder

    encoded: list[int] = []
    real = RandomImageEncoder.encode

    def counting(self: RandomImageEncoder, images: torch.Tensor) -> torch.Tensor:
        encoded.append(int(images.shape[0]))
        return real(self, images)

    monkeypatch.setattr(RandomImageEncoder, "encode", counting)
    res = _run(capsys, ["query", str(vaults / "eyes.vault"), "--image", str(data / "eyes" / "img0000.png"),
                        "--random-encoder", "16"], code=2)
    assert res["err"].count("\n") == 1 and "holds 32-d embeddings" in res["err"] and "gives 16-d ones" in res["err"]
    assert encoded == [1]  # only the encoder's probe image (its fingerprint): no crop


@pytest.fixture(scope="module")
def open_clip_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return tiny_open_clip(tmp_path_factory.mktemp("open_clip"))


def test_open_clip_extract_then_query(open_clip_files: tuple[Path, Path, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    cfg, w0, w1 = open_clip_files
    make_folder(tmp_path / "data", 6)
    enc = ["--open-clip", "luna-tiny-vit", "--open-clip-config", str(cfg)]
    vault = tmp_path / "eyes.vault"
    _run(capsys, ["extract", str(tmp_path / "data"), "--vault", str(vault), *enc, "--weights", str(w0), "--workers", "0",
                  "--json"])
    image = tmp_path / "data" / "eyes" / "img0003.png"
    out = _run(capsys, ["query", str(vault), "--image", str(image), *enc, "--weights", str(w0), "-k", "2", "--json"])
    top = out["queries"][0]["matches"][0]
    assert top["metadata"]["source"] == "eyes/img0003.png" and top["similarity"] == pytest.approx(1.0, abs=2e-3)
    res = _run(capsys, ["query", str(vault), "--image", str(image), *enc, "--weights", str(w1)], code=2)
    assert "disagree on a test image" in res["err"] and res["err"].count("\n") == 1


@pytest.mark.slow
@pytest.mark.skipif(not (COMFYUI / "comfy" / "sd.py").is_file(), reason="needs ComfyUI at ../shared/comfyui")
def test_comfyui_clip_vision_extract_then_query(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Through ComfyUI's own loader, as the nodes embed (a random-initialised ViT-L/14 of the real architecture)."""
    sys.path.insert(0, str(SHARED / "comfyui-tools"))
    from make_clip_vision import build_sd, save, vision_shapes

    from luna_vault.extraction import comfy_loader

    model = tmp_path / "vitl.pt"
    save(build_sd(vision_shapes("vitl"), "pt", seed=0), str(model), "pt")
    loaded: dict[str, object] = {}
    real = comfy_loader.load_clip_vision

    def load_once(path: str, comfyui: str | None = None) -> object:  # the 300M-parameter file once for both commands
        if str(path) not in loaded:
            loaded[str(path)] = real(path, comfyui)
        return loaded[str(path)]

    monkeypatch.setattr(comfy_loader, "load_clip_vision", load_once)
    make_folder(tmp_path / "data", 2)
    vault = tmp_path / "eyes.vault"
    enc = ["--clip-vision", str(model), "--comfyui", str(COMFYUI)]
    _run(capsys, ["extract", str(tmp_path / "data"), "--vault", str(vault), *enc, "--workers", "0", "--json"])
    image = tmp_path / "data" / "eyes" / "img0001.png"
    out = _run(capsys, ["query", str(vault), "--image", str(image), *enc, "-k", "1", "--sheet", str(tmp_path / "s.png"),
                        "--json"])
    top = out["queries"][0]["matches"][0]
    assert top["metadata"]["source"] == "eyes/img0001.png" and top["similarity"] == pytest.approx(1.0, abs=2e-3)
    assert Vault.open(vault).encoder.dim == 768 and (tmp_path / "s.png").is_file() and len(loaded) == 1
