"""Conditioning assembly and blending, checked against hand computations and ComfyUI's semantics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import clustered, toy_encode
from luna_vault.core.conditioning import (
    EncodingCache,
    baked_lookup,
    blend,
    check_baked_family,
    match_token_length,
    retrieval_weights,
    retrieved_conditioning,
    text_lookup,
    weighted_conditioning,
)
from luna_vault.vault import EncoderFingerprint, QueryError, TextFamilyMismatchError, TextSpec, Vault, build, search
from luna_vault.vault.query import Match, QueryResult


def _result(sims: list[float], prompts: list[str], vault: str = "v") -> QueryResult:
    return QueryResult([Match(i, s, i, p, {}, vault) for i, (s, p) in enumerate(zip(sims, prompts))], vault)


def test_softmax_weights_by_hand() -> None:
    w = retrieval_weights([0.9, 0.8, 0.5], temperature=0.1)
    e = [math.exp(9), math.exp(8), math.exp(5)]
    np.testing.assert_allclose(w.numpy(), [x / sum(e) for x in e], rtol=1e-6)
    np.testing.assert_allclose(retrieval_weights([0.9, 0.8, 0.5], None).numpy(), [1 / 3] * 3)
    np.testing.assert_allclose(retrieval_weights([0.9, 0.1], math.inf).numpy(), [0.5, 0.5])
    with pytest.raises(QueryError, match="temperature"):
        retrieval_weights([0.9], 0.0)


def test_token_lengths_repeat_to_lcm_like_comfyui() -> None:
    a = torch.arange(77 * 2, dtype=torch.float32).view(77, 2)
    b = torch.arange(154 * 2, dtype=torch.float32).view(154, 2)
    ra, rb = match_token_length([a, b])
    assert ra.shape == rb.shape == (154, 2)
    assert torch.equal(ra, torch.cat([a, a])) and torch.equal(rb, b)
    c = torch.ones(77 * 5, 2)  # lcm(154, 385) = 770 needs 10x: the longest length, b continued by its last token
    rb2, rc = match_token_length([b, c])
    assert rb2.shape == rc.shape == (385, 2)
    assert torch.equal(rb2[:154], b) and torch.equal(rb2[154:], b[-1:].expand(231, 2)) and torch.equal(rc, c)


def test_weighted_conditioning_by_hand() -> None:
    c1, p1 = torch.full((77, 4), 1.0), torch.tensor([1.0, 0.0])
    c2, p2 = torch.full((154, 4), 3.0), torch.tensor([0.0, 1.0])
    c2[77:] = 5.0
    w = torch.tensor([0.25, 0.75])
    enc = weighted_conditioning([(c1, p1), (c2, p2)], w)
    cond, pooled = enc.cond, enc.pooled
    assert cond.shape == (154, 4) and enc.extras == {}
    assert torch.allclose(cond[:77], torch.full((77, 4), 0.25 * 1 + 0.75 * 3))
    assert torch.allclose(cond[77:], torch.full((77, 4), 0.25 * 1 + 0.75 * 5))
    assert torch.allclose(pooled, torch.tensor([0.25, 0.75]))


def test_retrieved_conditioning_batches_one_row_per_crop() -> None:
    results = [_result([0.9, 0.7], ["red eye", "blue eye"]), _result([0.8, 0.8], ["green eye", "red eye"])]
    cond, extras = retrieved_conditioning(results, text_lookup(toy_encode), temperature=0.1)[0]
    assert cond.shape == (2, 77, 8) and extras["pooled_output"].shape == (2, 6)
    w = torch.softmax(torch.tensor([0.9, 0.7]) / 0.1, 0)
    want = w[0] * toy_encode("red eye")[0] + w[1] * toy_encode("blue eye")[0]
    assert torch.allclose(cond[0], want, atol=1e-6)
    want1 = 0.5 * toy_encode("green eye")[0] + 0.5 * toy_encode("red eye")[0]
    assert torch.allclose(cond[1], want1, atol=1e-6)
    want_pooled = 0.5 * toy_encode("green eye")[1] + 0.5 * toy_encode("red eye")[1]
    assert torch.allclose(extras["pooled_output"][1], want_pooled, atol=1e-6)


def test_encoding_cache_avoids_re_encoding() -> None:
    calls: list[str] = []

    def enc(p: str):
        calls.append(p)
        return toy_encode(p)

    cache = EncodingCache()
    lookup = text_lookup(enc, cache, "clip-a")
    results = [_result([0.9, 0.7], ["a", "b"])]
    first = retrieved_conditioning(results, lookup)
    second = retrieved_conditioning(results, lookup)
    assert calls == ["a", "b"] and (cache.hits, cache.misses) == (2, 2)
    assert torch.equal(first[0][0], second[0][0])
    other = text_lookup(enc, cache, "clip-b")  # another encoder is another cache key
    retrieved_conditioning(results, other)
    assert calls == ["a", "b", "a", "b"]
    small = EncodingCache(max_bytes=1)
    for p in "abc":
        small.get("k", p, toy_encode)
    assert len(small) == 1
    hidream = (128 * 4096 + 32 * 128 * 4096 + 2048) * 4  # one HiDream prompt in float32: T5 tokens, Llama layers, pooled
    assert EncodingCache().max_bytes >= 5 * hidream  # a query's k = 5 prompts stay cached for every family


def _user(t: int = 77, d: int = 8, pooled: bool = True) -> list:
    g = torch.Generator().manual_seed(7)
    extras = {"pooled_output": torch.randn(1, 6, generator=g)} if pooled else {}
    extras["other_key"] = "kept"
    return [[torch.randn(1, t, d, generator=g), extras]]


def _retrieved(b: int = 1, t: int = 77, d: int = 8) -> list:
    g = torch.Generator().manual_seed(8)
    return [[torch.randn(b, t, d, generator=g), {"pooled_output": torch.randn(b, 6, generator=g)}]]


def comfy_conditioning_average(conditioning_to: list, conditioning_from: list, to_strength: float) -> list:
    """ComfyUI's ConditioningAverage.addWeighted (nodes.py, v0.3.64), transcribed for comparison."""
    out = []
    cond_from = conditioning_from[0][0]
    pooled_output_from = conditioning_from[0][1].get("pooled_output", None)
    for i in range(len(conditioning_to)):
        t1 = conditioning_to[i][0]
        pooled_output_to = conditioning_to[i][1].get("pooled_output", pooled_output_from)
        t0 = cond_from[:, : t1.shape[1]]
        if t0.shape[1] < t1.shape[1]:
            t0 = torch.cat([t0] + [torch.zeros((1, (t1.shape[1] - t0.shape[1]), t1.shape[2]))], dim=1)
        tw = torch.mul(t1, to_strength) + torch.mul(t0, (1.0 - to_strength))
        t_to = conditioning_to[i][1].copy()
        if pooled_output_from is not None and pooled_output_to is not None:
            t_to["pooled_output"] = torch.mul(pooled_output_to, to_strength) + torch.mul(pooled_output_from, (1.0 - to_strength))
        elif pooled_output_from is not None:
            t_to["pooled_output"] = pooled_output_from
        out.append([tw, t_to])
    return out


@pytest.mark.parametrize(("user_t", "ret_t"), [(77, 77), (154, 77), (77, 154)])
def test_average_equals_comfyui_conditioning_average(user_t: int, ret_t: int) -> None:
    user, ret = _user(user_t), _retrieved(t=ret_t)
    got = blend(user, ret, "average", 0.3)
    want = comfy_conditioning_average(user, ret, 0.7)
    assert torch.allclose(got[0][0], want[0][0], atol=1e-6)
    assert torch.allclose(got[0][1]["pooled_output"], want[0][1]["pooled_output"], atol=1e-6)
    assert got[0][1]["other_key"] == "kept"
    # hand check of one value
    assert torch.isclose(got[0][0][0, 3, 2], 0.7 * user[0][0][0, 3, 2] + 0.3 * ret[0][0][0, 3, 2])
    no_pooled = blend(_user(pooled=False), ret, "average", 0.3)
    assert torch.equal(no_pooled[0][1]["pooled_output"], ret[0][1]["pooled_output"])


def test_average_broadcasts_user_over_a_batch_of_crops() -> None:
    user, ret = _user(), _retrieved(b=3)
    got = blend(user, ret, "average", 0.4)[0]
    assert got[0].shape == (3, 77, 8) and got[1]["pooled_output"].shape == (3, 6)
    for b in range(3):
        assert torch.allclose(got[0][b], 0.6 * user[0][0][0] + 0.4 * ret[0][0][b], atol=1e-6)


def test_concat_combine_replace() -> None:
    user, ret = _user(), _retrieved(t=154)
    cat = blend(user, ret, "concat", 0.3)
    assert cat[0][0].shape == (1, 231, 8)
    assert torch.equal(cat[0][0][:, :77], user[0][0]) and torch.equal(cat[0][0][:, 77:], ret[0][0])
    assert torch.equal(cat[0][1]["pooled_output"], user[0][1]["pooled_output"])
    comb = blend(user, ret, "combine", 0.3)
    assert len(comb) == 2 and comb[1][1]["strength"] == 0.3 and torch.equal(comb[1][0], ret[0][0])
    assert "strength" not in comb[0][1] and comb[1][1]["other_key"] == "kept"  # the user's extras carried over
    assert torch.equal(comb[1][1]["pooled_output"], ret[0][1]["pooled_output"])
    rep = blend(user, ret, "replace", 0.3)
    assert torch.equal(rep[0][0], ret[0][0]) and torch.equal(rep[0][1]["pooled_output"], ret[0][1]["pooled_output"])
    assert rep[0][1]["other_key"] == "kept"
    alone = blend(None, ret, "average", 0.3)
    assert torch.equal(alone[0][0], ret[0][0])


def test_blend_refuses_mismatched_families_and_bad_args() -> None:
    with pytest.raises(TextFamilyMismatchError, match=r"retrieved conditioning is \[\*, 768\] \+ pooled 6 but yours is "
                                                      r"\[\*, 2048\] \+ pooled 6"):
        blend(_user(d=2048), _retrieved(d=768), "average", 0.3)
    sdxl = [[torch.zeros(1, 77, 2048), {"pooled_output": torch.zeros(1, 1280)}]]
    with pytest.raises(TextFamilyMismatchError, match=r"is qwen_image.QwenImageTEModel\[qwen25_7b\], \[\*, 3584\] \(no "
                                                      r"pooled\) but yours is \[\*, 2048\] \+ pooled 1280 \(sdxl\)"):
        blend(sdxl, [[torch.zeros(1, 9, 3584), {"pooled_output": None}]], "average", 0.3,
              family="qwen_image.QwenImageTEModel[qwen25_7b]")
    with pytest.raises(QueryError, match="blend mode"):
        blend(_user(), _retrieved(), "multiply", 0.3)
    with pytest.raises(QueryError, match="strength"):
        blend(_user(), _retrieved(), "average", 1.5)


def test_baked_mode_uses_stored_tensors_and_checks_family(tmp_path: Path) -> None:
    x = clustered(12, 16)
    prompts = [f"prompt number {i % 4}" for i in range(12)]
    build(tmp_path / "b.vault", x, prompts, encoder=EncoderFingerprint("e", 16, "h"), category="eyes",
          text=TextSpec("sd15", 8, 6), encode_text=toy_encode)
    v = Vault.open(tmp_path / "b.vault")
    results = search(v, x[:2], k=3)
    baked = retrieved_conditioning(results, baked_lookup({"b": v}), temperature=0.05)
    text = retrieved_conditioning(results, text_lookup(toy_encode), temperature=0.05)
    assert baked[0][0].shape == text[0][0].shape == (2, 77, 8)
    assert torch.allclose(baked[0][0], text[0][0], atol=5e-3)  # fp16 storage
    check_baked_family(v.text, _user(d=8), "b")
    with pytest.raises(TextFamilyMismatchError, match=r"stores sd15 conditioning \(\[\*, 8\] \+ pooled 6\) but yours is "
                                                      r"\[\*, 2048\].*connect a CLIP"):
        check_baked_family(v.text, _user(d=2048), "b")


# ---- every key the text encoder returns, not only tokens and pooled ------------------------------------------

def _with_extras(prompt: str, t: int, d: int = 8, layers: int = 3, glyph: bool = False) -> tuple:
    """A stand-in encoder with the kinds of extra outputs real families have: a mask over the tokens (Lumina 2), a
    second token stream with a layer axis (HiDream's Llama layers) and, for some prompts only, glyph tokens
    (HunyuanImage's ByT5 for quoted text). Batch dim included, as CLIPTextEncode gives them."""
    cond, _ = toy_encode(prompt, dim=d, tokens=t)
    g = torch.Generator().manual_seed(len(prompt))
    extras = {"attention_mask": torch.ones(1, t, dtype=torch.int64),
              "conditioning_llama3": torch.randn(1, layers, t + 1, d, generator=g)}
    if glyph:
        extras["conditioning_byt5small"] = torch.randn(1, 5, 4, generator=g)
    return cond[None], None, extras


def test_extras_are_averaged_per_key_and_the_note_says_what_is_left_out() -> None:
    a, b = _with_extras("a", 10, glyph=True), _with_extras("bb", 20)
    a[2]["attention_mask"][0, 8:] = 0  # a's last two positions are padding
    w = torch.tensor([0.25, 0.75])
    notes: list[str] = []
    enc = weighted_conditioning([a, b], w, notes)
    # tokens 10 and 20: whole repeats (lcm 20), so every key with a token axis is repeated the same way
    assert enc.cond.shape == (20, 8) and enc.pooled is None
    assert torch.allclose(enc.cond, 0.25 * torch.cat([a[0][0], a[0][0]]) + 0.75 * b[0][0], atol=1e-6)
    llama = enc.extras["conditioning_llama3"]  # lengths 11 and 21: lcm 231 needs 21x, so a is continued by its last token
    a_l = a[2]["conditioning_llama3"][0]
    a_cont = torch.cat([a_l, a_l[:, -1:].expand(3, 10, 8)], dim=1)
    assert llama.shape == (3, 21, 8) and torch.allclose(llama, 0.25 * a_cont + 0.75 * b[2]["conditioning_llama3"][0], atol=1e-6)
    mask = enc.extras["attention_mask"]  # a position is kept where either prompt has a real token: b has all 20
    assert mask.dtype == torch.int64 and mask.shape == (20,) and bool(mask.all())
    only_a = weighted_conditioning([a, a], w).extras["attention_mask"]
    assert only_a.tolist() == [1] * 8 + [0, 0]
    assert "conditioning_byt5small" not in enc.extras
    assert notes == ["conditioning_byt5small: only 1 of the 2 matched prompts have it (the text encoder gives it for "
                     "some prompts only); it is left out of the retrieved conditioning"]
    same = weighted_conditioning([(a[0], None, {"hooks": "h", "n": 1}), (a[0], None, {"hooks": "h", "n": 2})], w, notes)
    assert same.extras == {"hooks": "h"} and any(n.startswith("n: the matched prompts give values") for n in notes)


def test_retrieved_conditioning_stacks_every_key_per_crop() -> None:
    enc = {"red eye": _with_extras("red eye", 10), "blue eye": _with_extras("blue eye", 10),
           "green eye": _with_extras("green eye", 20)}
    results = [_result([0.9, 0.7], ["red eye", "blue eye"]), _result([0.8], ["green eye"])]
    notes: list[str] = []
    cond, extras = retrieved_conditioning(results, text_lookup(lambda p: enc[p]), temperature=0.1, notes=notes)[0]
    assert cond.shape == (2, 20, 8) and extras["pooled_output"] is None and notes == []
    assert extras["attention_mask"].shape == (2, 20) and extras["conditioning_llama3"].shape == (2, 3, 21, 8)
    w = torch.softmax(torch.tensor([0.9, 0.7]) / 0.1, 0)
    crop0 = w[0] * enc["red eye"][2]["conditioning_llama3"][0] + w[1] * enc["blue eye"][2]["conditioning_llama3"][0]
    cont = torch.cat([crop0, crop0[:, -1:].expand(3, 10, 8)], dim=1)  # 11 -> 21 tokens: continued by the last token
    assert torch.allclose(extras["conditioning_llama3"][0], cont, atol=1e-6)
    assert torch.equal(extras["conditioning_llama3"][1], enc["green eye"][2]["conditioning_llama3"][0])


def _family_user(t: int = 12, d: int = 8) -> list:
    cond, _, extras = _with_extras("extreme close-up of an eye", t, d)
    extras["attention_mask"][0, -3:] = 0
    return [[cond, {**extras, "pooled_output": None, "guidance": 3.5, "start_percent": 0.0, "end_percent": 0.8}]]


def test_blend_modes_per_key() -> None:
    user = _family_user()
    ret = [[torch.randn(1, 20, 8), {"pooled_output": None, "attention_mask": torch.ones(1, 20, dtype=torch.int64),
                                    "conditioning_llama3": torch.randn(1, 3, 21, 8)}]]
    notes: list[str] = []
    avg = blend(user, ret, "average", 0.3, notes)  # ConditioningAverage: the user's keys, tokens lerped
    want = comfy_conditioning_average(user, ret, 0.7)
    assert torch.equal(avg[0][0], want[0][0]) and avg[0][1].keys() == want[0][1].keys()
    assert all(avg[0][1][k] is v or torch.equal(avg[0][1][k], v) for k, v in want[0][1].items())
    assert notes == ["conditioning_llama3 of the retrieved prompts is not used in average mode: yours is kept, as "
                     "ConditioningAverage does; combine or replace use it"]  # the all-ones mask says nothing: no note
    notes = []
    cat = blend(user, ret, "concat", 0.3, notes)  # ConditioningConcat: the user's keys as they are, the mask included
    assert torch.equal(cat[0][0], torch.cat([user[0][0], ret[0][0]], dim=1))
    assert cat[0][1]["attention_mask"].tolist() == [[1] * 9 + [0] * 3]
    assert [n for n in notes if n.startswith("your attention_mask covers only your own tokens in concat mode")]
    assert torch.equal(cat[0][1]["conditioning_llama3"], user[0][1]["conditioning_llama3"]) and cat[0][1]["guidance"] == 3.5
    comb = blend(user, ret, "combine", 0.4)  # the retrieved entry: its own text keys, the user's other keys, strength
    assert len(comb) == 2 and comb[0][1] == user[0][1]
    assert comb[1][1].keys() == {"pooled_output", "attention_mask", "conditioning_llama3", "guidance", "start_percent",
                                 "end_percent", "strength"}
    assert torch.equal(comb[1][1]["conditioning_llama3"], ret[0][1]["conditioning_llama3"]) and comb[1][1]["strength"] == 0.4
    assert torch.equal(comb[1][1]["attention_mask"], ret[0][1]["attention_mask"]) and comb[1][1]["guidance"] == 3.5
    user[0][1]["conditioning_byt5small"] = torch.randn(1, 5, 4)
    notes = []
    rep = blend(user, ret, "replace", 0.3, notes)
    assert torch.equal(rep[0][0], ret[0][0]) and rep[0][1]["end_percent"] == 0.8
    assert "conditioning_byt5small" not in rep[0][1] and torch.equal(rep[0][1]["attention_mask"], ret[0][1]["attention_mask"])
    assert notes == ["your conditioning_byt5small is left out in replace mode: it belongs to your prompt's tokens, which "
                     "the retrieved ones replace"]


def test_concat_keeps_keys_as_conditioning_concat_does() -> None:
    user = [[torch.randn(1, 6, 8), {"pooled_output": None}]]
    mask = torch.tensor([[1, 1, 1, 0]])
    notes: list[str] = []
    cat = blend(user, [[torch.randn(2, 4, 8), {"pooled_output": None, "attention_mask": mask.expand(2, 4)}]], "concat",
                notes=notes)
    assert cat[0][0].shape == (2, 10, 8) and "attention_mask" not in cat[0][1] and notes == []


def test_the_encoding_cache_refuses_another_family_under_one_key() -> None:
    cache = EncodingCache()
    cache.get("clip-1", "a", toy_encode, family="sdxl")
    assert cache.get("clip-1", "a", toy_encode, family="sdxl").cond.shape == (77, 8)
    with pytest.raises(TextFamilyMismatchError, match=r"holds sdxl conditioning for text encoder 'clip-1', but "
                                                      r"qwen_image.QwenImageTEModel\[qwen25_7b\] was asked for"):
        cache.get("clip-1", "a", toy_encode, family="qwen_image.QwenImageTEModel[qwen25_7b]")


def test_baked_vault_without_pooled_and_with_a_rebuilt_mask(tmp_path: Path) -> None:
    """A family without a pooled output (Qwen-Image, Lumina 2, Chroma, Wan) bakes tokens only; Lumina 2's all-ones
    attention mask is rebuilt on read (the spec says so), not stored."""
    x = clustered(6, 16)
    prompts = [f"prompt number {i % 3}" for i in range(6)]
    spec = TextSpec("lumina2.LuminaModel[gemma2_2b]", 8, 0, attention_mask=True)
    build(tmp_path / "l.vault", x, prompts, encoder=EncoderFingerprint("e", 16, "h"), category="eyes", text=spec,
          encode_text=lambda p: (toy_encode(p, tokens=5 + len(p) % 3)[0], None))
    v = Vault.open(tmp_path / "l.vault")
    assert v.text == spec and v.baked(0)[1].shape == (0,)
    [r] = search(v, x[:1], k=1)
    cond, extras = retrieved_conditioning([r], baked_lookup({"l": v}))[0]
    want = toy_encode(r.matches[0].prompt, tokens=5 + len(r.matches[0].prompt) % 3)[0]
    assert torch.allclose(cond[0], want, atol=5e-3) and extras["pooled_output"] is None
    assert extras["attention_mask"].tolist() == [[1] * len(want)]
    with pytest.raises(TextFamilyMismatchError, match=r"stores lumina2.LuminaModel\[gemma2_2b\] conditioning \(\[\*, 8\] "
                                                      r"\(no pooled\)\) but yours is \[\*, 2048\] \+ pooled 1280 \(sdxl\)"):
        check_baked_family(v.text, [[torch.zeros(1, 77, 2048), {"pooled_output": torch.zeros(1, 1280)}]], "l")
    from luna_vault.core.errors import VaultError
    from luna_vault.projector.data import target_for_vault

    with pytest.raises(VaultError, match=r"bakes lumina2.LuminaModel\[gemma2_2b\] conditioning \(no pooled output\); the "
                                         r"projector predicts tokens \+ a pooled output only"):
        target_for_vault(v)


def test_retrieved_conditioning_follows_the_users_device() -> None:
    """A text encoder that leaves its output on the GPU gives the user's conditioning there; the retrieved one
    (cached on the CPU) follows it, so ComfyUI's own nodes can mix the two. The meta device stands in for the GPU."""
    from luna_vault.core.conditioning import on_device_of

    retrieved = [[torch.ones(1, 4, 8), {"pooled_output": torch.ones(1, 6), "attention_mask": torch.ones(1, 4), "n": 3}]]
    user = [[torch.zeros(1, 4, 8, device="meta"), {"pooled_output": None}]]
    moved = on_device_of(retrieved, user)
    assert moved[0][0].device.type == "meta" and moved[0][0].shape == (1, 4, 8)
    assert moved[0][1]["pooled_output"].device.type == "meta" and moved[0][1]["attention_mask"].device.type == "meta"
    assert moved[0][1]["n"] == 3 and retrieved[0][0].device.type == "cpu"  # the input is left as it was
    assert on_device_of(retrieved, None) is retrieved
    assert on_device_of(retrieved, [[torch.zeros(1, 4, 8), {}]])[0][0] is retrieved[0][0]  # same device: no copy
