"""Flux-shaped conditioning through the vault: T5 sequences of the lengths ComfyUI's Flux tokenizer gives,
pooled CLIP-L, FluxGuidance's `guidance` kept; every blend mode against ComfyUI's own nodes (no weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import clustered, import_comfyui
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
    with pytest.raises(TextFamilyMismatchError, match=r"stores flux conditioning \(\[\*, 4096\] \+ pooled 768\).*SDXL"):
        check_baked_family(v.text, sdxl_user, "flux")
    with pytest.raises(TextFamilyMismatchError, match=r"stores sdxl conditioning.*\[\*, 4096\] \+ pooled 768 \(Flux / T5\)"):
        check_baked_family(TextSpec.for_family("sdxl"), user_flux(), "eyes-sdxl")
    assert np.isfinite(v.baked(2)[0].astype(np.float32)).all()
