"""Conditioning assembly: retrieved prompts + similarities -> CONDITIONING, and blending with the user's.

CONDITIONING is ComfyUI's structure, built here without importing ComfyUI: a list of
`[cond, extras]` with `cond` a float tensor [B, T, D] and `extras["pooled_output"]` [B, P].

- Weights: softmax(similarity / temperature) over a crop's k matches; temperature None = plain mean.
- Token lengths: CLIP prompts longer than 77 tokens give T = 77*n; Flux's T5 gives max(256, tokens).
  Before averaging, each sequence is repeated whole to the least common multiple of the lengths,
  as ComfyUI does when it batches conds (comfy/conds.py CONDCrossAttn.concat): a sequence repeated
  n times gives the model exactly the same cross-attention (every key and value n times, each with
  1/n of the weight). When that would take more than MAX_REPEAT repeats (T5: 256 and 300 tokens),
  the shorter sequences are continued with copies of their last token, the padding token's
  encoding: what their tokenizer would have produced with a longer minimum length (approximately:
  T5 encodes each padding position a little differently). Cutting a partial repeat instead would
  duplicate some of the prompt's own tokens and shift attention towards them.
- A batch of B crops gives ONE conditioning entry whose cond is [B, L, D] (row b for crop b) and
  pooled [B, P]; ComfyUI uses row b for latent b when the latent batch is B.
- Blend modes (strength s = weight of the retrieved conditioning):
  average = ConditioningAverage(to=user, from=retrieved, to_strength=1-s), tokens sliced or
  zero-padded to the user's length, pooled lerped too; concat = ConditioningConcat(user, retrieved)
  (s not used); combine = ConditioningCombine(user, retrieved) with the retrieved entry's
  `strength` extra set to s (the sampler weighs its noise prediction by it) and the user's other
  extras copied onto it (Flux's `guidance`, SDXL's size, an area), as if the user had passed the
  retrieved conditioning through the same nodes; replace = retrieved only, keeping the user's
  other extras. Every extra key of the user's conditioning is kept in every mode.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch

from .errors import DimensionError, QueryError, TextFamilyMismatchError

if TYPE_CHECKING:
    from ..vault.query import Match, QueryResult
    from ..vault.store import Vault
    from .families import TextSpec

Conditioning = list  # list of [cond tensor [B, T, D], extras dict]
CondPair = tuple[torch.Tensor, "torch.Tensor | None"]  # (cond [T, D], pooled [P] or None)
TextEncodeFn = Callable[[str], Any]  # prompt -> (cond [T, D] or [1, T, D], pooled [P] or [1, P] or None)

BLEND_MODES = ("average", "concat", "combine", "replace")
MAX_REPEAT = 4  # ComfyUI refuses to batch conds whose lengths need more than 4x repetition


def retrieval_weights(similarities: Any, temperature: float | None = 0.05) -> torch.Tensor:
    """Weights over the last axis: softmax(sim / temperature); None or inf = plain mean."""
    s = torch.as_tensor(similarities, dtype=torch.float32)
    if s.shape[-1] == 0:
        raise QueryError("no matches to weight (empty similarity list)")
    if temperature is None or math.isinf(temperature):
        return torch.full_like(s, 1.0 / s.shape[-1])
    if not temperature > 0:
        raise QueryError(f"temperature must be > 0 (or None for a plain mean), got {temperature}")
    return torch.softmax(s / temperature, dim=-1)


def match_token_length(conds: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Bring [..., T_i, D] sequences to one length: whole repeats to the LCM of the lengths, or, when
    that takes more than MAX_REPEAT repeats of the shortest, the longest length with each shorter
    sequence continued by copies of its last (padding) token. See the module doc for why."""
    lengths = [int(c.shape[-2]) for c in conds]
    if len(set(lengths)) == 1:
        return list(conds)
    target = math.lcm(*lengths)
    out = []
    if target // min(lengths) <= MAX_REPEAT:
        for c in conds:
            out.append(c.repeat(*([1] * (c.dim() - 2)), target // c.shape[-2], 1))
        return out
    target = max(lengths)
    for c in conds:
        short = target - c.shape[-2]
        out.append(torch.cat([c, c[..., -1:, :].expand(*c.shape[:-2], short, c.shape[-1])], dim=-2) if short else c)
    return out


def weighted_conditioning(pairs: Sequence[CondPair], weights: torch.Tensor) -> CondPair:
    """Weighted average of k (cond [T_i, D], pooled [P]) pairs -> (cond [L, D], pooled [P] or None)."""
    if len(pairs) != len(weights):
        raise DimensionError(f"{len(pairs)} conditionings but {len(weights)} weights")
    conds = match_token_length([c.float() for c, _ in pairs])
    dims = {c.shape[-1] for c in conds}
    if len(dims) != 1:
        raise DimensionError(f"retrieved conditionings have different widths {sorted(dims)}; they must come from one text encoder")
    w = weights.to(torch.float32)
    cond = torch.einsum("k,ktd->td", w, torch.stack(conds))
    pooled = None
    if all(p is not None for _, p in pairs):
        pooled = torch.einsum("k,kp->p", w, torch.stack([p.float().reshape(-1) for _, p in pairs]))  # type: ignore[union-attr]
    return cond, pooled


class EncodingCache:
    """LRU cache of prompt -> (cond, pooled), bounded in bytes, so repeated queries never re-encode."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], CondPair] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    @staticmethod
    def _size(pair: CondPair) -> int:
        c, p = pair
        return c.numel() * c.element_size() + (p.numel() * p.element_size() if p is not None else 0)

    def get(self, encoder_key: str, prompt: str, encode: TextEncodeFn) -> CondPair:
        key = (encoder_key, prompt)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
        pair = as_cond_pair(encode(prompt), prompt)
        with self._lock:
            self.misses += 1
            if key not in self._items:
                self._items[key] = pair
                self._bytes += self._size(pair)
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._bytes -= self._size(old)
        return pair

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


def as_cond_pair(out: Any, prompt: str = "") -> CondPair:
    """Normalise a text encoder's output to (cond [T, D] float32 CPU, pooled [P] or None)."""
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise DimensionError(f"a text encoder must return (cond, pooled); got {type(out).__name__} for {prompt!r}")
    cond, pooled = out
    cond = torch.as_tensor(cond).detach().to("cpu", torch.float32)
    if cond.dim() == 3 and cond.shape[0] == 1:
        cond = cond[0]
    if cond.dim() != 2:
        raise DimensionError(f"text encoder cond for {prompt!r} has shape {tuple(cond.shape)}, expected [T, D] or [1, T, D]")
    if pooled is not None:
        pooled = torch.as_tensor(pooled).detach().to("cpu", torch.float32).reshape(-1)
    return cond, pooled


def text_lookup(encode: TextEncodeFn, cache: EncodingCache | None = None, encoder_key: str = "") -> Callable[["Match"], CondPair]:
    """Text mode: encode each retrieved prompt with the given text encoder (through the cache)."""
    if cache is None:
        return lambda m: as_cond_pair(encode(m.prompt), m.prompt)
    return lambda m: cache.get(encoder_key, m.prompt, encode)


def baked_lookup(vaults: Mapping[str, "Vault"]) -> Callable[["Match"], CondPair]:
    """Baked mode: read each retrieved prompt's stored conditioning from its vault (memory-mapped)."""

    def lookup(m: "Match") -> CondPair:
        cond, pooled = vaults[m.vault].baked(m.prompt_id)
        return torch.from_numpy(cond.astype("float32")), torch.from_numpy(pooled.astype("float32"))

    return lookup


def retrieved_conditioning(results: Sequence["QueryResult"], lookup: Callable[["Match"], CondPair],
                           temperature: float | None = 0.05) -> Conditioning:
    """One CONDITIONING entry for a batch of crops: cond [B, L, D], pooled [B, P] (when every prompt has one)."""
    if not results:
        raise QueryError("no query results to build conditioning from")
    per_crop: list[CondPair] = []
    for b, r in enumerate(results):
        if not r.matches:
            raise QueryError(f"crop {b} has no matches to build conditioning from")
        pairs = [lookup(m) for m in r.matches]
        per_crop.append(weighted_conditioning(pairs, retrieval_weights(r.similarities, temperature)))
    conds = match_token_length([c for c, _ in per_crop])
    extras: dict[str, Any] = {}
    if all(p is not None for _, p in per_crop):
        extras["pooled_output"] = torch.stack([p for _, p in per_crop])  # type: ignore[misc]
    return [[torch.stack(conds), extras]]


def check_text_compatible(user: Conditioning | None, retrieved: Conditioning, what: str = "retrieved") -> None:
    """Refuse to blend conditionings whose token or pooled widths differ (e.g. SD1.5 vs SDXL)."""
    if not user:
        return
    r_cond, r_extras = retrieved[0]
    r_pooled = r_extras.get("pooled_output")
    for u_cond, u_extras in user:
        if u_cond.shape[-1] != r_cond.shape[-1]:
            raise TextFamilyMismatchError(
                f"the {what} conditioning is {r_cond.shape[-1]}-wide but yours is {u_cond.shape[-1]}-wide "
                f"({_family_hint(r_cond.shape[-1])} vs {_family_hint(u_cond.shape[-1])}); use a CLIP / vault of "
                "the same model family as the checkpoint"
            )
        u_pooled = u_extras.get("pooled_output")
        if u_pooled is not None and r_pooled is not None and u_pooled.shape[-1] != r_pooled.shape[-1]:
            raise TextFamilyMismatchError(
                f"pooled output widths differ: {what} {r_pooled.shape[-1]}, yours {u_pooled.shape[-1]}"
            )


def check_baked_family(text: "TextSpec | None", user: Conditioning | None, vault_name: str) -> None:
    """Baked mode: the vault's stored family/dims must match the conditioning it is blended with."""
    if text is None or not user:
        return
    for u_cond, u_extras in user:
        u_pooled = u_extras.get("pooled_output")
        if u_cond.shape[-1] != text.dim or (u_pooled is not None and u_pooled.shape[-1] != text.pooled_dim):
            raise TextFamilyMismatchError(
                f"vault '{vault_name}' stores {text.family} conditioning ([*, {text.dim}] + pooled {text.pooled_dim}) "
                f"but your conditioning is [*, {u_cond.shape[-1]}]"
                + (f" + pooled {u_pooled.shape[-1]}" if u_pooled is not None else "")
                + f" ({_family_hint(u_cond.shape[-1])}); connect a CLIP to use text mode, or use a {_family_hint(u_cond.shape[-1])} vault"
            )


def _family_hint(dim: int) -> str:
    return {768: "SD1.5 / CLIP-L", 2048: "SDXL", 4096: "Flux / T5"}.get(int(dim), f"{dim}-d")


def _batch_to(t: torch.Tensor, b: int, what: str) -> torch.Tensor:
    if t.shape[0] == b:
        return t
    if t.shape[0] == 1:
        return t.expand(b, *t.shape[1:])
    raise DimensionError(f"{what} has batch {t.shape[0]}, cannot pair it with batch {b}; use 1 or the same batch size")


def blend(user: Conditioning | None, retrieved: Conditioning, mode: str = "average", strength: float = 0.3) -> Conditioning:
    """Blend the retrieved conditioning into the user's (see module doc for each mode's meaning)."""
    if mode not in BLEND_MODES:
        raise QueryError(f"blend mode {mode!r} unknown; choose one of {', '.join(BLEND_MODES)}")
    if not 0.0 <= strength <= 1.0:
        raise QueryError(f"strength must lie in 0..1, got {strength}")
    r_cond, r_extras = retrieved[0]
    if not user:
        return [[r_cond, dict(r_extras)]]
    check_text_compatible(user, retrieved)
    r_pooled = r_extras.get("pooled_output")
    if mode == "combine":
        carried = {k: v for k, v in user[0][1].items() if k not in ("pooled_output", "strength")}
        return [[c, dict(e)] for c, e in user] + [[r_cond, {**carried, **r_extras, "strength": strength}]]
    out = []
    for u_cond, u_extras in user:
        b = max(u_cond.shape[0], r_cond.shape[0])
        t1 = _batch_to(u_cond, b, "your conditioning")
        t0 = _batch_to(r_cond.to(u_cond.device, u_cond.dtype), b, "the retrieved conditioning")
        extras = dict(u_extras)
        if mode == "concat":
            out.append([torch.cat([t1, t0], dim=1), extras])
            continue
        if mode == "replace":
            if r_pooled is not None:
                extras["pooled_output"] = r_pooled.to(u_cond.device, u_cond.dtype)
            out.append([t0, extras])
            continue
        # average: exactly ConditioningAverage(to=user, from=retrieved, to_strength=1 - strength)
        t0 = t0[:, : t1.shape[1]]
        if t0.shape[1] < t1.shape[1]:
            t0 = torch.cat([t0, torch.zeros(b, t1.shape[1] - t0.shape[1], t1.shape[2], dtype=t1.dtype, device=t1.device)], dim=1)
        tw = t1 * (1.0 - strength) + t0 * strength
        u_pooled = u_extras.get("pooled_output")
        if r_pooled is not None and u_pooled is not None:
            rp = _batch_to(r_pooled.to(u_pooled.device, u_pooled.dtype), b, "the retrieved pooled output")
            extras["pooled_output"] = _batch_to(u_pooled, b, "your pooled output") * (1.0 - strength) + rp * strength
        elif r_pooled is not None:
            extras["pooled_output"] = r_pooled.to(u_cond.device, u_cond.dtype)
        out.append([tw, extras])
    return out
