"""Flux-shaped conditioning through the vault: T5 sequences of the lengths ComfyUI's Flux tokenizer gives,
pooled CLIP-L, FluxGuidance's `guidance` kept; every blend mode against ComfyUI's own nodes (no weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from helpers import COMFYUI, clustered, import_comfyui
from luna_vault.core.conditioning import (
    baked_lookup,
    blend,
    check_baked_family,
    retrieval_weights,
    retrieved_conditioning,
    text_lookup,
)
from luna_vault.vault import EncoderFingerprint, TextFamilyMismatchError, TextSpec, Vault, build, search

import_comfyui()
from comfy.text_encoders.flux import FluxTokenizer  # noqa: E402
from comfy_extras.nodes_flux import FluxGuidance  # noqa: E402

import nodes as comfy_nodes  # noqa: E402

PROMPTS = ["a green eye", "close-up of an amber iris with gold flecks, macro photograph, sharp focus",
           "an eye " + "with many very detailed and intricate patterns " * 40]


def t5_length(prompt: str) -> int:
    """The T5 sequence length Flux's CLIPTextEncode gives this prompt: ComfyUI's own tokenizer, min 256."""
    return len(FluxTokenizer().tokenize_with_weights(prompt)["t5xxl"][0])


def flux_encode(prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A stand-in for Flux's text encoder with the real shapes: T5 tokens [T, 4096], pooled CLIP-L [768]."""
    g = torch.Generator().manual_seed(sum(map(ord, prompt)))
    return torch.randn(t5_length(prompt), 4096, generator=g), torch.randn(768, generator=g)


def user_flux(prompt: str = "extreme close-up of an eye", guidance: float = 2.5) -> list:
    cond, pooled = flux_encode(prompt)
    user = [[cond[None], {"pooled_output": pooled[None]}]]
    return FluxGuidance.execute(user, guidance).args[0]


def _search(tmp_path: Path) -> list:
    x = clustered(3, 32, seed=3)
    build(tmp_path / "f.vault", x, PROMPTS, encoder=EncoderFingerprint("e", 32, "h"), category="eyes")
    return search(Vault.open(tmp_path / "f.vault"), x[:1], k=3)


def _retrieved(tmp_path: Path) -> list:
    return retrieved_conditioning(_search(tmp_path), text_lookup(flux_encode), temperature=0.05)


def test_flux_tokenizer_lengths_and_the_assembled_conditioning(tmp_path: Path) -> None:
    lengths = [t5_length(p) for p in PROMPTS]
    assert lengths[0] == lengths[1] == 256 and lengths[2] > 256  # at least 256, longer prompts longer
    [r] = _search(tmp_path)
    cond, extras = retrieved_conditioning([r], text_lookup(flux_encode), temperature=0.05)[0]
    assert cond.shape == (1, lengths[2], 4096) and extras["pooled_output"].shape == (1, 768)
    # by hand: softmax(sim / 0.05) weights; the 256-token sequences continued with their last (padding) token
    w = retrieval_weights(r.similarities, 0.05)
    want = torch.zeros(lengths[2], 4096)
    pooled = torch.zeros(768)
    for wi, m in zip(w, r.matches):
        c, p = flux_encode(m.prompt)
        want += wi * torch.cat([c, c[-1:].expand(lengths[2] - len(c), 4096)])
        pooled += wi * p
    assert torch.allclose(cond[0], want, atol=1e-5) and torch.allclose(extras["pooled_output"][0], pooled, atol=1e-5)


@pytest.mark.parametrize("strength", [0.15, 0.3, 0.5])
def test_every_blend_mode_matches_comfyui_on_flux_shapes(tmp_path: Path, strength: float) -> None:
    user, ret = user_flux(), _retrieved(tmp_path)
    assert user[0][1]["guidance"] == 2.5
    average = blend(user, ret, "average", strength)
    want = comfy_nodes.ConditioningAverage().addWeighted(user, ret, 1.0 - strength)[0]
    assert (average[0][0] - want[0][0]).abs().max().item() == 0.0
    assert (average[0][1]["pooled_output"] - want[0][1]["pooled_output"]).abs().max().item() == 0.0
    assert average[0][1]["guidance"] == want[0][1]["guidance"] == 2.5
    concat = blend(user, ret, "concat", strength)
    want = comfy_nodes.ConditioningConcat().concat(user, ret)[0]
    assert torch.equal(concat[0][0], want[0][0]) and concat[0][1].keys() == want[0][1].keys()
    assert concat[0][0].shape == (1, 256 + ret[0][0].shape[1], 4096) and concat[0][1]["guidance"] == 2.5
    combine = blend(user, ret, "combine", strength)
    guided = FluxGuidance.execute(ret, 2.5).args[0]  # what a user would wire by hand: the same guidance
    want = comfy_nodes.ConditioningCombine().combine(user, [[guided[0][0], {**guided[0][1], "strength": strength}]])[0]
    assert len(combine) == len(want) == 2
    for (c, e), (wc, we) in zip(combine, want):
        assert torch.equal(c, wc) and e.keys() == we.keys() and e["guidance"] == we["guidance"]
    replace = blend(user, ret, "replace", strength)
    assert torch.equal(replace[0][0], ret[0][0]) and replace[0][1]["guidance"] == 2.5


def test_whole_repeats_leave_cross_attention_unchanged_partial_ones_do_not() -> None:
    """Why sequences are repeated whole when lengths divide: attention over [K; K] equals attention over K."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(5, 64, generator=g), torch.randn(77, 64, generator=g)

    def attend(keys: torch.Tensor) -> torch.Tensor:
        return torch.softmax(q @ keys.T / 8, dim=-1) @ keys

    assert torch.allclose(attend(torch.cat([k, k])), attend(k), atol=1e-6)
    assert not torch.allclose(attend(torch.cat([k, k[:40]])), attend(k), atol=1e-3)


def test_baked_flux_vault_size_and_family_checks(tmp_path: Path) -> None:
    """A baked Flux vault stores per unique prompt T5 tokens [T, 4096] and pooled [768] in fp16:
    256 x 4096 x 2 B + 768 x 2 B = 2,098,688 bytes for a prompt under 256 tokens."""
    x = clustered(4, 32, seed=5)
    prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[2]]
    build(tmp_path / "flux.vault", x, prompts, encoder=EncoderFingerprint("e", 32, "h"), category="eyes",
          text=TextSpec.for_family("flux"), encode_text=flux_encode)
    v = Vault.open(tmp_path / "flux.vault")
    per_prompt = [v.baked(p)[0].nbytes + v.baked(p)[1].nbytes for p in range(v.n_prompts)]
    assert per_prompt[:2] == [2_098_688, 2_098_688] and per_prompt[2] == t5_length(PROMPTS[2]) * 8192 + 1536
    assert v.info()["bytes"]["baked"] == sum(per_prompt)
    baked = retrieved_conditioning(search(v, x[2], k=1), baked_lookup({"flux": v}))
    assert torch.allclose(baked[0][0][0], flux_encode(PROMPTS[1])[0], atol=1e-2)  # fp16 storage
    check_baked_family(v.text, user_flux(), "flux")
    sdxl_user = [[torch.zeros(1, 77, 2048), {"pooled_output": torch.zeros(1, 1280)}]]
    with pytest.raises(TextFamilyMismatchError, match=r"stores flux conditioning \(\[\*, 4096\] \+ pooled 768\) but yours "
                                                      r"is \[\*, 2048\] \+ pooled 1280 \(sdxl\)"):
        check_baked_family(v.text, sdxl_user, "flux")
    with pytest.raises(TextFamilyMismatchError, match=r"stores sdxl .* but yours is \[\*, 4096\] \+ pooled 768 \(flux\)"):
        check_baked_family(TextSpec.for_family("sdxl"), user_flux(), "eyes-sdxl")
    assert np.isfinite(v.baked(2)[0].astype(np.float32)).all()


def shallow_flux_clip(t5_layers: int = 2, seed: int = 0) -> Any:
    """ComfyUI's own Flux text encoder (FluxClipModel: CLIP-L + T5-XXL at full width: d_model 4096, d_ff 10240,
    64 heads, gated GELU, relative position buckets; FluxTokenizer), with random weights and T5 cut to
    `t5_layers` of its 24 layers. The real one (4.9B parameters, ~19 GB of fp32 weights) does not fit
    beside the test suite in this machine's 24 GB; every code path but the depth is the same."""
    import json

    import comfy.sd
    import comfy.sd1_clip
    import comfy.text_encoders.flux as flux
    import comfy.text_encoders.sd3_clip
    import comfy.text_encoders.t5

    config = json.loads((COMFYUI / "comfy" / "text_encoders" / "t5_config_xxl.json").read_text())
    config["num_layers"] = t5_layers

    class ShallowT5(comfy.text_encoders.sd3_clip.T5XXLModel):
        def __init__(self, device: str = "cpu", dtype: Any = None, model_options: dict = {}) -> None:  # noqa: B006
            comfy.sd1_clip.SDClipModel.__init__(  # T5XXLModel's own arguments, with the config as a dict
                self, device=device, layer="last", layer_idx=None, textmodel_json_config=config, dtype=dtype,
                special_tokens={"end": 1, "pad": 0}, model_class=comfy.text_encoders.t5.T5,
                enable_attention_masks=False, return_attention_masks=False,
                model_options={**model_options, "model_name": "t5xxl"})

    class ShallowFlux(flux.FluxClipModel):
        def __init__(self, device: str = "cpu", dtype: Any = None, model_options: dict = {}) -> None:  # noqa: B006
            torch.nn.Module.__init__(self)
            self.clip_l = comfy.sd1_clip.SDClipModel(device=device, dtype=dtype, return_projected_pooled=False,
                                                     model_options=model_options)
            self.t5xxl = ShallowT5(device=device, dtype=dtype, model_options=model_options)
            self.dtypes = {dtype}

    class Target:
        params: dict = {}
        clip = ShallowFlux
        tokenizer = flux.FluxTokenizer

    clip = comfy.sd.CLIP(Target())
    g = torch.Generator().manual_seed(seed)
    sd = {k: (torch.ones_like(v) if "norm" in k and v.ndim == 1 else torch.randn(v.shape, generator=g) * 0.02)
          for k, v in clip.cond_stage_model.state_dict().items()}
    clip.cond_stage_model.load_state_dict(sd)
    return clip


@pytest.mark.slow
def test_comfyui_flux_text_encoder_through_the_vault(tmp_path: Path) -> None:
    """The vault's text mode with ComfyUI's own Flux text encoder: what CLIPTextEncode gives, T5 sequences of
    different lengths averaged, blended into FluxGuidance conditioning with every key kept."""
    import time

    from luna_vault.extraction.comfy_adapters import ComfyClipTextEncoder
    from luna_vault.vault import retrieve

    clip = shallow_flux_clip()
    enc = ComfyClipTextEncoder(clip)
    assert enc.family == "flux"
    long_prompt = ", ".join(["a very detailed amber iris with gold flecks"] * 30)  # > 256 T5 tokens
    t = time.perf_counter()
    cond, pooled = enc.encode(PROMPTS[0])
    seconds = time.perf_counter() - t
    core = comfy_nodes.CLIPTextEncode().encode(clip, PROMPTS[0])[0]
    assert cond.shape == (256, 4096) and pooled.shape == (768,)
    assert torch.equal(cond, core[0][0][0]) and torch.equal(pooled, core[0][1]["pooled_output"][0])
    assert enc.encode(long_prompt)[0].shape == (t5_length(long_prompt), 4096)
    assert t5_length(long_prompt) > 256

    prompts = [PROMPTS[0], long_prompt, PROMPTS[1]]
    x = clustered(3, 32, seed=3)
    build(tmp_path / "f.vault", x, prompts, encoder=EncoderFingerprint("e", 32, "h"), category="eyes")
    user = FluxGuidance.execute(comfy_nodes.CLIPTextEncode().encode(clip, "extreme close-up of an eye")[0], 3.5).args[0]
    for mode in ("average", "concat", "combine", "replace"):
        r = retrieve([Vault.open(tmp_path / "f.vault")], x[:1], k=3, text_encoder=enc, user=user, mode=mode,
                     strength=0.3, cache=None)
        assert all(c[1]["guidance"] == 3.5 for c in r.blended), mode
        assert r.retrieved[0][0].shape[-1] == 4096 and torch.isfinite(r.retrieved[0][0]).all()
    print(f"shallow Flux text encoder (2 of 24 T5 layers): {seconds:.2f} s per prompt on this CPU")
