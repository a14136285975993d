"""Node schemas and `execute` with small stub encoders, checked against the core library."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from helpers import import_comfyui, toy_encode

import_comfyui()
import folder_paths  # noqa: E402
from comfy_api.latest import io  # noqa: E402

from luna_vault.core.conditioning import EncodingCache
from luna_vault.nodes import NODES  # noqa: E402
from luna_vault.nodes.embedding import LunaEmbeddingExtractor  # noqa: E402
from luna_vault.nodes.vault_builder import LunaVaultBuilder  # noqa: E402
from luna_vault.nodes.vault_query import LunaVaultQuery  # noqa: E402
from luna_vault.vault import TextFamilyMismatchError, TextSpec, Vault, VaultExistsError, build, retrieve


class StubClipVision:
    """Behaves like ComfyUI's ClipVisionModel: encode_image -> {'image_embeds': [B, D]}."""

    image_size = 224

    def __init__(self, dim: int = 16, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = torch.nn.Linear(12, dim)

    def encode_image(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images[..., :3].float()
        feats = torch.cat([x.mean((1, 2)), x.std((1, 2)), x[:, ::2].mean((1, 2)), x[:, :, ::2].mean((1, 2))], dim=1)
        with torch.no_grad():
            return {"image_embeds": self.model(feats * 3)}


class ToyText:
    """The stub CLIP's encoder as a core-library text encoder."""

    key = "toy"

    @staticmethod
    def encode(prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        return toy_encode(prompt, dim=768, pooled_dim=768)


class StubClip:
    """Behaves like ComfyUI's CLIP for CLIPTextEncode: tokenize + encode_from_tokens_scheduled (SD1.5 widths)."""

    def tokenize(self, text: str) -> str:
        return text

    def encode_from_tokens_scheduled(self, tokens: str) -> list:
        cond, pooled = toy_encode(tokens, dim=768, pooled_dim=768)
        return [[cond[None], {"pooled_output": pooled[None]}]]


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, 1, 3, generator=g)
    return (base + 0.1 * torch.rand(n, 40, 40, 3, generator=g)).clamp(0, 1)


@pytest.fixture()
def comfy_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    models = tmp_path / "models"
    (models / "vaults").mkdir(parents=True)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "vaults", ([str(models / "vaults")], set()))
    monkeypatch.setattr(folder_paths, "models_dir", str(models))
    folder_paths.set_temp_directory(str(tmp_path / "temp"))
    folder_paths.set_output_directory(str(tmp_path / "output"))
    folder_paths.set_input_directory(str(tmp_path / "input"))
    return models / "vaults"


def test_schemas_are_complete() -> None:
    ids = [n.GET_SCHEMA().node_id for n in NODES]
    assert ids == ["LunaVaultQuery", "LunaVisionTranslator", "LunaVaultBuilder", "LunaEmbeddingExtractor", "LunaVaultInfo",
                   "LunaAbProbe"]
    for node in NODES:
        schema = node.GET_SCHEMA()
        assert schema.category.split("/")[0] == "Luna" and schema.display_name.startswith("Luna ") and schema.description
        for inp in schema.inputs:
            assert inp.tooltip, f"{schema.node_id}.{inp.id} has no tooltip"
        for out in schema.outputs:
            assert out.tooltip, f"{schema.node_id} output {out.id} has no tooltip"


def _stub_vault(vaults: Path, cv: StubClipVision, baked: bool = False) -> tuple[torch.Tensor, list[str]]:
    from luna_vault.extraction.comfy_adapters import ComfyClipVisionEncoder

    enc = ComfyClipVisionEncoder(cv)
    images = _images(6)
    prompts = [f"colour {i}" for i in range(6)]
    kwargs: dict[str, Any] = {}
    if baked:
        kwargs = {"text": TextSpec.for_family("sd15"), "encode_text": lambda p: toy_encode(p, dim=768, pooled_dim=768)}
    from luna_vault.vault.thumbnails import make_thumbnail

    build(vaults / ("baked.vault" if baked else "eyes.vault"), enc.encode(images), prompts,
          [{"seed": i} for i in range(6)], [make_thumbnail(im) for im in images], encoder=enc.fingerprint,
          category="eyes", **kwargs)
    return images, prompts


def test_query_execute_matches_the_core_library(comfy_dirs: Path) -> None:
    cv = StubClipVision()
    images, prompts = _stub_vault(comfy_dirs, cv)
    user = StubClip().encode_from_tokens_scheduled("a detailed eye")
    crops = images[[2, 4]]
    out = LunaVaultQuery.execute(image=crops, clip_vision=cv, vault="eyes", k=3, strength=0.3, blend_mode="average",
                                 temperature=0.05, conditioning=user, clip=StubClip(), filter="")
    blended, retrieved, best, matches, report = out.args
    from luna_vault.extraction.comfy_adapters import ComfyClipVisionEncoder

    enc = ComfyClipVisionEncoder(cv)
    want = retrieve([Vault.open(comfy_dirs / "eyes.vault")], enc.encode(crops), k=3, encoder=enc.fingerprint,
                    text_encoder=ToyText(), user=user, mode="average", strength=0.3, temperature=0.05, cache=EncodingCache())
    assert blended[0][0].shape == (2, 77, 768)
    torch.testing.assert_close(blended[0][0], want.blended[0][0])
    torch.testing.assert_close(blended[0][1]["pooled_output"], want.blended[0][1]["pooled_output"])
    torch.testing.assert_close(retrieved[0][0], want.retrieved[0][0])
    assert best.splitlines() == ["colour 2", "colour 4"]
    assert matches.shape == (6, 96, 96, 3)
    rep = json.loads(report)
    assert rep["mode"] == "text" and rep["crops"][0]["matches"][0]["id"] == 2
    assert rep["crops"][0]["matches"][0]["similarity"] == pytest.approx(1.0, abs=2e-3)
    assert sum(m["weight"] for m in rep["crops"][0]["matches"]) == pytest.approx(1.0, abs=1e-5)  # rounded to 6 places
    assert out.ui["images"] and "crop 0: eyes" in out.ui["text"][0]


def test_query_validation_and_mode_errors(comfy_dirs: Path) -> None:
    cv = StubClipVision()
    images, _ = _stub_vault(comfy_dirs, cv)
    # one flag per problem: validation reads only `vault` (ComfyUI flags its message on every input it reads)
    assert list(inspect.signature(LunaVaultQuery.validate_inputs).parameters) == ["vault"]
    assert "not found" in LunaVaultQuery.validate_inputs(vault="nope")
    assert LunaVaultQuery.validate_inputs(vault="eyes") is True
    assert LunaVaultQuery.validate_inputs(vault="auto-detect") is True
    with pytest.raises(Exception, match="no baked conditioning.*connect a CLIP"):
        LunaVaultQuery.execute(image=images[:1], clip_vision=cv, vault="eyes", k=2, strength=0.3, blend_mode="average",
                               temperature=0.05)
    # every rule is checked before a crop is encoded: count the encoder's calls on the crops
    calls: list[int] = []
    other = StubClipVision(dim=8)
    orig = other.encode_image
    other.encode_image = lambda x: calls.append(x.shape[0]) or orig(x)
    with pytest.raises(Exception, match="16-d"):
        LunaVaultQuery.execute(image=images[:3], clip_vision=other, vault="eyes", k=2, strength=0.3,
                               blend_mode="average", temperature=0.05, clip=StubClip())
    assert 3 not in calls, "the crops were encoded before the encoder check"
    calls.clear()
    counted = StubClipVision()
    orig2 = counted.encode_image
    counted.encode_image = lambda x: calls.append(x.shape[0]) or orig2(x)
    with pytest.raises(Exception, match="k=99 but vault 'eyes' holds only 6 entries"):
        LunaVaultQuery.execute(image=images[:3], clip_vision=counted, vault="eyes", k=99, strength=0.3,
                               blend_mode="average", temperature=0.05, clip=StubClip())
    assert 3 not in calls
    calls.clear()
    with pytest.raises(ValueError, match="needs a number"):  # a bad filter: refused before any crop is encoded
        LunaVaultQuery.execute(image=images[:3], clip_vision=counted, vault="eyes", k=2, strength=0.3,
                               blend_mode="average", temperature=0.05, clip=StubClip(), filter="quality>>x")
    assert not calls
    with pytest.raises(ValueError, match="no vault named 'nope'"):
        LunaVaultQuery.execute(image=images[:1], clip_vision=cv, vault="nope", k=2, strength=0.3, blend_mode="average",
                               temperature=0.05, clip=StubClip())
    with pytest.raises(ValueError, match="empty"):
        LunaVaultQuery.execute(image=images[:0], clip_vision=cv, vault="eyes", k=2, strength=0.3, blend_mode="average",
                               temperature=0.05, clip=StubClip())


def test_query_uses_the_vaults_tuned_settings_when_asked(comfy_dirs: Path) -> None:
    from luna_vault.extraction.comfy_adapters import ComfyClipVisionEncoder
    from luna_vault.vault.manifest import TunedDefaults
    from luna_vault.vault.store import VaultWriter

    cv = StubClipVision()
    images, _ = _stub_vault(comfy_dirs, cv)
    args = dict(image=images[[1, 3]], clip_vision=cv, k=5, strength=0.3, blend_mode="average", temperature=0.05,
                conditioning=StubClip().encode_from_tokens_scheduled("an eye"), clip=StubClip())
    with pytest.raises(ValueError, match="vault 'eyes' has no tuned settings: run `luna-vault ab"):
        LunaVaultQuery.execute(vault="eyes", use_tuned=True, **args)
    tuned = TunedDefaults(strength=0.6, k=2, temperature=0.2, blend_mode="concat", checkpoint="sd15.ckpt",
                          tuned_at="2026-11-26T10:00:00+00:00", metric="clip_similarity", improvement=0.04, samples=12,
                          run="eyes-ab")
    with VaultWriter.open(comfy_dirs / "eyes.vault") as w:
        w.set_tuned(tuned)
    out = LunaVaultQuery.execute(vault="eyes", use_tuned=True, **args)
    enc = ComfyClipVisionEncoder(cv)
    want = retrieve([Vault.open(comfy_dirs / "eyes.vault")], enc.encode(images[[1, 3]]), k=2, encoder=enc.fingerprint,
                    text_encoder=ToyText(), user=args["conditioning"], mode="concat", strength=0.6, temperature=0.2,
                    cache=EncodingCache())
    torch.testing.assert_close(out.args[0][0][0], want.blended[0][0])
    report = json.loads(out.args[4])
    assert report["settings"]["k"] == 2 and report["settings"]["blend_mode"] == "concat"
    assert report["settings"]["from"].startswith("vault 'eyes' tuned 2026-11-26 on sd15.ckpt (clip_similarity +0.040")
    assert len(report["crops"][0]["matches"]) == 2
    assert out.ui["text"][0].startswith("tuned settings: k 2, strength 0.6, temperature 0.2, concat")
    plain = json.loads(LunaVaultQuery.execute(vault="eyes", **args).args[4])  # off by default: the node's own values
    assert plain["settings"] == {"from": "node", "k": 5, "strength": 0.3, "temperature": 0.05, "blend_mode": "average"}
    with pytest.raises(ValueError, match="use_tuned needs a named vault"):
        LunaVaultQuery.execute(vault="auto-detect", use_tuned=True, **args)


def test_ab_probe_scores_an_output_against_its_reference_region(comfy_dirs: Path) -> None:
    from luna_vault.extraction.comfy_adapters import ComfyClipVisionEncoder
    from luna_vault.nodes.ab_probe import LunaAbProbe

    cv = StubClipVision()
    images, _ = _stub_vault(comfy_dirs, cv)
    full = images[2:3].clone()  # 40x40; the region is its top-left 24x24
    full[:, 24:, 24:] = 0.0  # outside the region: must not matter
    pasted = full.clone()
    out = LunaAbProbe.execute(image=pasted, reference=full, clip_vision=cv, x=0, y=0, width=24, height=24, vault="eyes", k=3)
    probe = out.ui["luna_ab"][0]
    assert probe["clip_similarity"] == pytest.approx(1.0, abs=1e-5) and probe["vault_agreement"] == 1.0
    assert probe["vault"] == "eyes" and probe["encoder"]
    other = images[4:5, :24, :24]  # an output that is only the crop, of another colour
    probe = LunaAbProbe.execute(image=other, reference=full, clip_vision=cv, x=0, y=0, width=24, height=24).ui["luna_ab"][0]
    enc = ComfyClipVisionEncoder(cv)
    a, b = enc.encode(full[:, :24, :24]), enc.encode(other)
    assert probe["clip_similarity"] == pytest.approx(float((a * b).sum()), abs=1e-5)
    assert probe["clip_similarity"] < 0.99
    assert "vault_agreement" not in probe  # no vault named
    with pytest.raises(ValueError, match="not inside the 40x40 reference"):
        LunaAbProbe.execute(image=other, reference=full, clip_vision=cv, x=30, y=0, width=24, height=24)
    with pytest.raises(Exception, match="16-d"):
        LunaAbProbe.execute(image=pasted, reference=full, clip_vision=StubClipVision(dim=8), x=0, y=0, width=24,
                            height=24, vault="eyes")


def test_query_baked_mode_and_auto_detect(comfy_dirs: Path) -> None:
    cv = StubClipVision()
    images, _ = _stub_vault(comfy_dirs, cv, baked=True)
    out = LunaVaultQuery.execute(image=images[1:2], clip_vision=cv, vault="auto-detect", k=2, strength=1.0,
                                 blend_mode="replace", temperature=0.0)
    blended, retrieved, best, _, report = out.args
    assert best == "colour 1" and json.loads(report)["mode"] == "baked"
    v = Vault.open(comfy_dirs / "baked.vault")
    rep = json.loads(report)["crops"][0]["matches"]
    pids = [m["prompt_id"] for m in rep]
    want = torch.stack([torch.from_numpy(v.baked(p)[0].astype(np.float32)) for p in pids]).mean(0)  # temperature 0 = mean
    torch.testing.assert_close(retrieved[0][0][0], want)
    sdxl_user = [[torch.zeros(1, 77, 2048), {"pooled_output": torch.zeros(1, 1280)}]]
    with pytest.raises(Exception, match="stores sd15 conditioning"):
        LunaVaultQuery.execute(image=images[1:2], clip_vision=cv, vault="baked", k=2, strength=0.3, blend_mode="average",
                               temperature=0.05, conditioning=sdxl_user)


def test_builder_graph_mode(comfy_dirs: Path) -> None:
    cv = StubClipVision()
    images = _images(4, seed=3)
    out = LunaVaultBuilder.execute(clip_vision=cv, vault_name="hands", mode="append", category="", thumbnails=True,
                                   images=images, prompts="open hand\nfist\npointing\nwave",
                                   metadata='{"checkpoint": "ponyXL"}')
    assert out.args[0].startswith("hands.vault: +4 entries (0 already present)") and "4 entries in total" in out.args[0]
    v = Vault.open(comfy_dirs / "hands.vault")
    assert (len(v), v.category, v.prompt(int(v.prompt_ids([1])[0]))) == (4, "hands", "fist")
    assert v.metadata(2) == {"category": "hands", "checkpoint": "ponyXL", "source": "comfyui"}
    again = LunaVaultBuilder.execute(clip_vision=cv, vault_name="hands", mode="append", category="", thumbnails=True,
                                     images=images[:2], prompts="x")
    assert "+0 entries (2 already present)" in again.args[0]
    with pytest.raises(VaultExistsError, match="already exists"):
        LunaVaultBuilder.execute(clip_vision=cv, vault_name="hands", mode="create", category="", thumbnails=True,
                                 images=images, prompts="x")
    with pytest.raises(ValueError, match="3 prompts for 4 images"):
        LunaVaultBuilder.execute(clip_vision=cv, vault_name="other", mode="append", category="", thumbnails=False,
                                 images=images, prompts="a\nb\nc")
    with pytest.raises(ValueError, match="JSON"):
        LunaVaultBuilder.execute(clip_vision=cv, vault_name="other", mode="append", category="", thumbnails=False,
                                 images=images, prompts="a", metadata="{nope")
    assert "not a plain name" in LunaVaultBuilder.validate_inputs(vault_name="../evil")
    out = LunaVaultBuilder.execute(clip_vision=cv, vault_name="hands", mode="overwrite", category="", thumbnails=False,
                                   images=images[:1], prompts="only", clip=StubClip())
    v = Vault.open(comfy_dirs / "hands.vault")
    assert len(v) == 1 and v.text is not None and v.text.family == "sd15"
    # the same writer checks as extract: a baked vault needs its family's CLIP, another encoder is refused first
    with pytest.raises(TextFamilyMismatchError, match="bakes sd15 conditioning, but no text encoder was given"):
        LunaVaultBuilder.execute(clip_vision=cv, vault_name="hands", mode="append", category="", thumbnails=False,
                                 images=images[1:2], prompts="more")
    calls: list[int] = []
    other = StubClipVision(dim=8)
    orig = other.encode_image
    other.encode_image = lambda x: calls.append(x.shape[0]) or orig(x)
    with pytest.raises(Exception, match="16-d"):
        LunaVaultBuilder.execute(clip_vision=other, vault_name="hands", mode="append", category="",
                                 thumbnails=False, images=images[1:4], prompts="more", clip=StubClip())
    assert 3 not in calls, "the images were encoded before the encoder check"


def test_builder_folder_mode(comfy_dirs: Path, tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "input" / "datasets" / "eyes"
    folder.mkdir(parents=True)
    for i in range(5):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"eye {i}")
    Image.new("RGB", (8, 8)).save(folder / "lonely.png")
    out = LunaVaultBuilder.execute(clip_vision=StubClipVision(), vault_name="ds", mode="append", category="eyes",
                                   thumbnails=True, folder="datasets/eyes")
    assert "+5 entries from 6 images" in out.args[0] and "1 missing prompt" in out.args[0]
    assert len(Vault.open(comfy_dirs / "ds.vault")) == 5
    for bad in ("../secrets", "/etc"):
        with pytest.raises(ValueError, match="inside ComfyUI's input directory"):
            LunaVaultBuilder.execute(clip_vision=StubClipVision(), vault_name="ds", mode="append", category="eyes",
                                     thumbnails=True, folder=bad)


def test_embedding_extractor(comfy_dirs: Path, tmp_path: Path) -> None:
    cv = StubClipVision()
    images = _images(3)
    out = LunaEmbeddingExtractor.execute(image=images, clip_vision=cv, prompts="a\nb\nc", dataset="pairs1")
    emb, clip_out = out.args
    assert emb["embeddings"].shape == (3, 16) and emb["fingerprint"].dim == 16
    torch.testing.assert_close(emb["embeddings"].norm(dim=1), torch.ones(3))
    assert clip_out["image_embeds"].shape == (3, 16)
    parts = list((tmp_path / "output" / "luna_embeddings" / "pairs1").glob("*.safetensors"))
    assert len(parts) == 1
    lines = parts[0].with_suffix(".jsonl").read_text().splitlines()
    assert [json.loads(x)["prompt"] for x in lines] == ["a", "b", "c"]
    assert isinstance(io.NodeOutput, type)


def _stub_projector(folder: Path, fingerprint: Any, in_dim: int = 16, seed: int = 0) -> Path:
    """A small random-initialised CLIP-L-target projector (the values do not matter, only that they are checked)."""
    from luna_vault.projector.io import save_projector
    from luna_vault.projector.model import Projector, ProjectorConfig

    torch.manual_seed(seed)
    model = Projector(ProjectorConfig.preset(in_dim, "sd15", hidden=32, linear=16, rank=4, token_rank=2))
    g = torch.Generator().manual_seed(seed)
    model.set_stats(torch.randn(77, 768, generator=g), torch.rand(77, 768, generator=g) + 0.5, torch.randn(768, generator=g),
                    torch.rand(768, generator=g) + 0.5)
    for p in model.head.parameters():  # the head starts at zero (it predicts the mean); make crops differ
        torch.nn.init.normal_(p, std=0.02)
    return save_projector(model.eval(), folder / "eyes-l.safetensors", fingerprint)


def test_vision_translator_hybrid_matches_the_core_library(comfy_dirs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from luna_vault.core.conditioning import blend
    from luna_vault.extraction.comfy_adapters import ComfyClipVisionEncoder
    from luna_vault.nodes.vision_translator import LunaVisionTranslator
    from luna_vault.projector.io import load_projector

    projectors = comfy_dirs.parent / "luna_projectors"
    projectors.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "luna_projectors", ([str(projectors)], {".safetensors"}))
    cv = StubClipVision()
    enc = ComfyClipVisionEncoder(cv)
    images, prompts = _stub_vault(comfy_dirs, cv, baked=True)
    path = _stub_projector(projectors, enc.fingerprint)
    unknown = torch.full((1, 40, 40, 3), 0.5)
    unknown[:, :20] = 0.05  # unlike any vault crop
    crops = torch.cat([images[3:4], unknown])
    user = StubClip().encode_from_tokens_scheduled("a detailed eye")
    # no custom validation (it would flag every input it reads for one problem): the combos list what is on
    # disk now, and a missing projector or vault fails at run time, before encoding, with what there is
    assert "validate_inputs" not in LunaVisionTranslator.__dict__
    inputs = LunaVisionTranslator.INPUT_TYPES()
    assert inputs["required"]["projector"][1]["options"] == ["eyes-l.safetensors"]
    assert "baked" in inputs["optional"]["vault"][1]["options"]
    out = LunaVisionTranslator.execute(image=crops, clip_vision=cv, projector="eyes-l.safetensors", strength=0.3,
                                       blend_mode="average", conditioning=user, vault="baked", threshold=0.99, k=2)
    blended, translated, report = out.args
    rep = json.loads(report)
    assert [c["path"] for c in rep["crops"]] == ["vault", "projector"]
    assert rep["crops"][0]["best_similarity"] > 0.99 > rep["crops"][1]["best_similarity"]
    assert rep["crops"][0]["prompt"] == prompts[3] and rep["threshold"] == 0.99
    model, _ = load_projector(path)
    with torch.no_grad():
        want_tok, want_pool = model(enc.encode(unknown))
    assert translated[0][0].shape == (2, 77, 768)
    torch.testing.assert_close(translated[0][0][1], want_tok[0])
    torch.testing.assert_close(translated[0][1]["pooled_output"][1], want_pool[0])
    torch.testing.assert_close(blended[0][0], blend(user, translated, "average", 0.3)[0][0])
    assert "crop 0: vault (best vault match" in out.ui["text"][0] and "crop 1: projector" in out.ui["text"][0]
    # projector only: every crop takes the projector path
    out = LunaVisionTranslator.execute(image=crops, clip_vision=cv, projector="eyes-l.safetensors", strength=1.0,
                                       blend_mode="replace")
    assert [c["path"] for c in json.loads(out.args[2])["crops"]] == ["projector", "projector"]
    # a CLIP vision model other than the projector's is refused
    with pytest.raises(Exception, match="projector 'eyes-l.safetensors' holds 16-d.*gives 8-d"):
        LunaVisionTranslator.execute(image=crops, clip_vision=StubClipVision(dim=8), projector="eyes-l.safetensors",
                                     strength=0.3, blend_mode="average")
    with pytest.raises(Exception, match="disagree on a test image"):
        LunaVisionTranslator.execute(image=crops, clip_vision=StubClipVision(seed=5), projector="eyes-l.safetensors",
                                     strength=0.3, blend_mode="average")


def test_new_vaults_go_where_the_cli_puts_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `vaults:` folder of extra_model_paths.yaml marked is_default comes first for the nodes as for the CLI
    (core.comfy_home); without one, models/vaults does."""
    from luna_vault.core.comfy_home import vault_folders
    from luna_vault.nodes.common import VAULTS, register_model_folders
    from luna_vault.nodes.common import vault_folders as node_vault_folders

    for default in (True, False):
        (tmp_path / "extra_model_paths.yaml").write_text(
            f"mine:\n  base_path: {tmp_path}\n  is_default: {str(default).lower()}\n  vaults: shared/vaults\n")
        monkeypatch.setattr(folder_paths, "base_path", str(tmp_path))
        monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path / "models"))
        monkeypatch.setattr(folder_paths, "folder_names_and_paths", {VAULTS: ([str(tmp_path / "shared" / "vaults")], set())})
        register_model_folders()
        assert node_vault_folders()[0] == vault_folders(tmp_path)[0]
        assert node_vault_folders()[0] == (tmp_path / "shared" / "vaults" if default else tmp_path / "models" / "vaults")
