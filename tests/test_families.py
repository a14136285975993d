"""Text mode with ComfyUI's own text encoder of every family: SD3.5 (CLIP-L + CLIP-G + T5), Qwen-Image,
HiDream (CLIP-L + CLIP-G + T5 + Llama 3.1), Lumina 2 (Gemma 2), Chroma (T5), Wan (umT5), HunyuanImage 2.1
(Qwen2.5-VL + ByT5), Flux, and a family the code has never seen (a 5120-wide text model with an extra output).

Each family's CLIP is built as ComfyUI's loader builds it, full width, random weights, fewer layers
(tests/family_clips.py). For each: the family is read from the CLIP object; the vault's text encoding is
what CLIPTextEncode gives, every key; every blend mode equals ComfyUI's core nodes (ConditioningAverage,
ConditioningConcat, ConditioningCombine, ConditioningSetTimestepRange) on that family's conditioning to a
difference of 0, extras included; a long prompt works; what a mode leaves out is in the notes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from family_clips import family_clip
from helpers import clustered, import_comfyui
from luna_vault.core.conditioning import EncodingCache, blend
from luna_vault.core.errors import DimensionError
from luna_vault.vault import EncoderFingerprint, Vault, build, retrieve

import_comfyui()
import comfy.sd  # noqa: E402
import comfy.sd1_clip  # noqa: E402

import nodes as comfy_nodes  # noqa: E402
from luna_vault.extraction.comfy_adapters import ComfyClipTextEncoder  # noqa: E402

pytestmark = pytest.mark.slow

USER = "extreme close-up of an eye"
QUOTED = 'close-up of an amber iris with gold flecks, a tag reading "AMBER"'
PHRASE = "a very detailed amber iris with gold flecks and a dark limbal ring"  # 13 words


def long_prompt(repeats: int) -> str:
    return ", ".join([PHRASE] * repeats)


# family -> (name read from the CLIP, token width, pooled width, keys besides pooled_output for the quoted prompt,
#            phrases in its long prompt: past the first window of every encoder inside: CLIP's 77 tokens, HiDream's
#            128 Llama tokens, Flux's 256 and Wan's 512 T5 tokens)
FAMILIES: dict[str, tuple[str, int, int | None, set[str], int]] = {
    "sd3": ("sd3_clip.SD3ClipModel[clip_l+clip_g+t5xxl]", 4096, 2048, set(), 8),
    "qwen_image": ("qwen_image.QwenImageTEModel[qwen25_7b]", 3584, None, set(), 8),
    "hidream": ("hidream.HiDreamTEModel[clip_l+clip_g+t5xxl+llama]", 4096, 2048, {"conditioning_llama3"}, 8),
    "lumina2": ("lumina2.LuminaModel[gemma2_2b]", 2304, None, {"attention_mask"}, 8),
    "chroma": ("pixart_t5.PixArtT5XXL[t5xxl]", 4096, None, set(), 8),
    "wan": ("wan.WanT5Model[umt5xxl]", 4096, None, set(), 40),
    "hunyuan_image": ("hunyuan_image.HunyuanImageTEModel[qwen25_7b+byt5_small]", 3584, None, {"conditioning_byt5small"}, 8),
    "flux": ("flux", 4096, 768, set(), 20),
}


def max_diff(a: list, b: list) -> float:
    """Largest absolute difference between two CONDITIONINGs over tokens and every tensor key; AssertionError when
    their structure (entries, keys, shapes, non-tensor values) differs."""
    assert len(a) == len(b), (len(a), len(b))
    worst = 0.0
    for (ca, ea), (cb, eb) in zip(a, b):
        assert ca.shape == cb.shape, (ca.shape, cb.shape)
        worst = max(worst, (ca.float().cpu() - cb.float().cpu()).abs().max().item())  # values; the device may differ
        assert ea.keys() == eb.keys(), (sorted(ea), sorted(eb))
        for key, va in ea.items():
            vb = eb[key]
            if isinstance(va, torch.Tensor) or isinstance(vb, torch.Tensor):
                assert isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor) and va.shape == vb.shape, key
                assert va.dtype == vb.dtype, (key, va.dtype, vb.dtype)
                worst = max(worst, (va.float().cpu() - vb.float().cpu()).abs().max().item() if va.numel() else 0.0)
            else:
                assert va == vb, (key, va, vb)
    return worst


def core_blend(user: list, ret: list, mode: str, strength: float) -> list:
    """What ComfyUI's core nodes give: ConditioningAverage / ConditioningConcat as they are, and for combine /
    replace the retrieved conditioning passed through the node the user's went through
    (ConditioningSetTimestepRange), with `strength` for combine."""
    if mode == "average":
        return comfy_nodes.ConditioningAverage().addWeighted(user, ret, 1.0 - strength)[0]
    if mode == "concat":
        return comfy_nodes.ConditioningConcat().concat(user, ret)[0]
    r_cond, r_extras = ret[0]
    extras = {**r_extras, "strength": strength} if mode == "combine" else dict(r_extras)
    passed = comfy_nodes.ConditioningSetTimestepRange().set_range([[r_cond, extras]], 0.0, 0.8)[0]
    return comfy_nodes.ConditioningCombine().combine(user, passed)[0] if mode == "combine" else passed


def check_family(clip: Any, name: str, dim: int, pooled: int | None, quoted_keys: set[str], tmp_path: Path,
                 repeats: int = 8) -> list[str]:
    """Everything the module doc promises, for one family's CLIP; returns the notes of its queries."""
    long = long_prompt(repeats)
    enc = ComfyClipTextEncoder(clip)
    assert enc.family == name
    core = comfy_nodes.CLIPTextEncode().encode(clip, QUOTED)[0]
    assert core[0][0].shape[-1] == dim and (core[0][1]["pooled_output"] is None) == (pooled is None)
    assert set(core[0][1]) - {"pooled_output"} == quoted_keys
    x = clustered(3, 32, seed=3)
    build(tmp_path / "f.vault", x, ["a green eye", QUOTED, long], encoder=EncoderFingerprint("e", 32, "h"), category="eyes")
    vault = Vault.open(tmp_path / "f.vault")
    user = comfy_nodes.ConditioningSetTimestepRange().set_range(
        comfy_nodes.CLIPTextEncode().encode(clip, USER)[0], 0.0, 0.8)[0]
    cache, notes = EncodingCache(), []
    one = retrieve([vault], x[1:2], k=1, text_encoder=enc, user=user, cache=cache)  # the quoted prompt alone
    assert one.results[0].matches[0].prompt == QUOTED and one.family == name
    assert max_diff(one.retrieved, core) == 0.0  # the vault's text encoding is CLIPTextEncode's, every key
    three = retrieve([vault], x[:1], k=3, text_encoder=enc, user=user, cache=cache, temperature=None)
    r_cond = three.retrieved[0][0]
    encoded = {p: cache.get(enc.key, p, enc.encode_conditioning, enc.family) for p in (long, QUOTED)}
    size = {p: sum(t.shape[-2] for t in (e.cond, *e.extras.values()) if isinstance(t, torch.Tensor) and t.dim() >= 2)
            for p, e in encoded.items()}
    assert size[long] > size[QUOTED] and r_cond.shape[1] >= encoded[long].cond.shape[0]  # the long prompt: more tokens
    assert r_cond.shape[-1] == dim and torch.isfinite(r_cond).all()
    notes += three.notes
    for ret in (one.retrieved, three.retrieved):
        for mode, strength in (("average", 0.3), ("concat", 0.3), ("combine", 0.4), ("replace", 0.3)):
            got = blend(user, ret, mode, strength, notes)
            assert max_diff(got, core_blend(user, ret, mode, strength)) == 0.0, mode
    return notes


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_text_mode_equals_comfyui(family: str, tmp_path: Path) -> None:
    name, dim, pooled, quoted_keys, repeats = FAMILIES[family]
    with family_clip(family, tmp_path) as clip:
        notes = check_family(clip, name, dim, pooled, quoted_keys, tmp_path, repeats)
        if family == "hunyuan_image":  # ByT5 glyph tokens exist for the quoted prompt only: left out, and said so
            assert ("conditioning_byt5small: only 1 of the 3 matched prompts have it (the text encoder gives it for some "
                    "prompts only); it is left out of the retrieved conditioning") in notes
        if family == "hidream":  # the Llama layers are averaged across prompts; average/concat keep the user's
            assert any(n.startswith("conditioning_llama3 of the retrieved prompts is not used in average mode") for n in notes)
        if family in ("hidream", "hunyuan_image"):
            with pytest.raises(DimensionError, match="which a baked vault does not store; build the vault in text mode"):
                ComfyClipTextEncoder(clip).encode(QUOTED)
        else:
            spec = ComfyClipTextEncoder(clip).spec
            assert (spec.family, spec.dim, spec.pooled_dim, spec.attention_mask) == (
                name, dim, pooled or 0, family == "lumina2")


class Width5120TextModel(torch.nn.Module):
    """A text model no ComfyUI release has: CLIP-L's tokenizer, 5120-wide tokens, no pooled output, an attention
    mask and an extra per-prompt output ('conditioning_glyph' [7, 640]): what a new family looks like to us."""

    def __init__(self, device: str = "cpu", dtype: Any = None, model_options: dict = {}) -> None:  # noqa: B006
        super().__init__()
        self.embed = torch.nn.Embedding(49408, 64)
        self.proj = torch.nn.Linear(64, 5120)
        self.glyph = torch.nn.Linear(64, 640)
        self.dtypes = {torch.float32}

    def set_clip_options(self, options: dict) -> None:
        pass

    def reset_clip_options(self) -> None:
        pass

    def encode_token_weights(self, token_weight_pairs: dict) -> tuple:
        # on the model's device (ComfyUI puts it on the GPU when there is one); the outputs stay there, as a
        # custom encoder may leave them
        ids = torch.tensor([[t for t, _ in chunk] for chunk in token_weight_pairs["l"]], device=self.embed.weight.device).reshape(1, -1)
        h = self.embed(ids)
        mask = (ids != 49407).long()
        mask[0, 0] = 1
        return self.proj(h), None, {"attention_mask": mask, "conditioning_glyph": self.glyph(h[:, :7])}

    def load_sd(self, sd: dict) -> Any:
        return self.load_state_dict(sd, strict=False)


def test_a_family_never_seen_works_in_text_mode_without_a_code_change(tmp_path: Path) -> None:
    class Target:
        params: dict = {}
        clip = Width5120TextModel
        tokenizer = comfy.sd1_clip.SD1Tokenizer

    torch.manual_seed(0)
    clip = comfy.sd.CLIP(Target())
    name = f"{__name__}.Width5120TextModel[embed+proj+glyph]"
    notes = check_family(clip, name, 5120, None, {"attention_mask", "conditioning_glyph"}, tmp_path)
    assert any(n.startswith("conditioning_glyph of the retrieved prompts is not used in average mode") for n in notes)
    with pytest.raises(DimensionError, match=r"Width5120TextModel\[embed\+proj\+glyph\] conditioning for '' carries "
                                              r"attention_mask \[77\] \(0 KB per prompt in fp16\), conditioning_glyph \[7, 640\] "
                                              r"\(9 KB per prompt in fp16\) beside its tokens"):
        _ = ComfyClipTextEncoder(clip).spec


def test_any_comfyui_loader_type_is_accepted_by_name() -> None:
    """The CLI loads text encoder files with any of ComfyUI's own loader types, read from ComfyUI itself."""
    from helpers import COMFYUI
    from luna_vault.extraction.comfy_loader import load_text_encoder

    with pytest.raises(ValueError, match=r"clip type 'qwen' unknown to the ComfyUI at .*; choose one of stable_diffusion, "
                                         r".*, qwen_image, hunyuan_image"):
        load_text_encoder(clip_files=["missing.safetensors"], clip_type="qwen", comfyui=COMFYUI)
    with pytest.raises(FileNotFoundError):  # a known type goes on to load the files
        load_text_encoder(clip_files=[str(COMFYUI / "missing.safetensors")], clip_type="qwen_image", comfyui=COMFYUI)
