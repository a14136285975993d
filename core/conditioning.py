"""Conditioning assembly: retrieved prompts + similarities -> CONDITIONING, and blending with the user's.

CONDITIONING is ComfyUI's structure, built here without importing ComfyUI: a list of
`[cond, extras]` with `cond` a float tensor [B, T, D] and `extras` a dict: `pooled_output` [B, P]
(or None: Qwen-Image, Lumina 2, Chroma, Wan have none) and whatever else the text encoder returns
(Lumina 2's `attention_mask` [B, T], HiDream's `conditioning_llama3` [B, 32, T', 4096], HunyuanImage's
`conditioning_byt5small` [B, T', 1472] for quoted text) or later nodes add (FluxGuidance's `guidance`,
an area, a timestep range). Nothing here knows a family: every rule reads the tensors.

- Weights: softmax(similarity / temperature) over a crop's k matches; temperature None = plain mean.
- Token lengths: CLIP prompts longer than 77 tokens give T = 77*n; T5 gives max(min_length, tokens).
  Before averaging, each sequence is repeated whole to the least common multiple of the lengths,
  as ComfyUI does when it batches conds (comfy/conds.py CONDCrossAttn.concat): a sequence repeated
  n times gives the model exactly the same cross-attention (every key and value n times, each with
  1/n of the weight). When that would take more than MAX_REPEAT repeats (T5: 256 and 300 tokens),
  the shorter sequences are continued with copies of their last token, the padding token's
  encoding: what their tokenizer would have produced with a longer minimum length (approximately:
  T5 encodes each padding position a little differently). Cutting a partial repeat instead would
  duplicate some of the prompt's own tokens and shift attention towards them.
- The text encoder's other outputs, per key, across a crop's k prompts: float tensors are averaged
  with the same weights (a token axis, dim -2, matched like the tokens: HiDream's Llama layers); an
  attention mask (an integer tensor as long as the tokens) follows the tokens and keeps a position
  wherever any prompt has a real token; anything else is kept when every prompt agrees. A key that
  only some prompts have (HunyuanImage's ByT5 glyph tokens exist for quoted text only), or that
  cannot be averaged, is left out and said so in the notes.
- A batch of B crops gives ONE conditioning entry whose cond is [B, L, D] (row b for crop b), every
  other tensor stacked the same way; ComfyUI uses row b for latent b when the latent batch is B.
- Blend modes (strength s = weight of the retrieved conditioning), each equal to ComfyUI's core
  nodes (nodes.py) on the tokens and on every key:
  average = ConditioningAverage(to=user, from=retrieved, to_strength=1-s): tokens sliced or
  zero-padded to the user's length and lerped, pooled lerped; every other key is the user's (the
  retrieved side's masks and extra encoder layers are not averaged, as in ComfyUI: the notes say so).
  concat = ConditioningConcat(user, retrieved): tokens appended, the user's keys kept as they are,
  the attention mask included (it keeps the old length: Lumina 2 reads its token count from it and
  so does not see the appended tokens; the notes say so once, average or combine serve such a model).
  combine = ConditioningCombine(user, retrieved): the retrieved entry keeps its own text-encoder keys,
  gets `strength` s (the sampler weighs its noise prediction by it) and the user's other keys
  (`guidance`, SDXL's size, an area, a timestep range) copied onto it, as if the user had passed the
  retrieved conditioning through the same nodes.
  replace = the retrieved conditioning with its own text-encoder keys and the user's other keys.
  A text-encoder key (one the retrieved side has, `pooled_output`, `attention_mask*`, `conditioning_*`)
  belongs to its own tokens and is never copied onto the other side's.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch

from .errors import DimensionError, QueryError, TextFamilyMismatchError
from .families import describe, shapes_text

if TYPE_CHECKING:
    from ..vault.query import Match, QueryResult
    from ..vault.store import Vault
    from .families import TextSpec

Conditioning = list  # list of [cond tensor [B, T, D], extras dict]
TextEncodeFn = Callable[[str], Any]  # prompt -> Encoded, or (cond [T, D] or [1, T, D], pooled [P] or [1, P] or None[, extras])
Notes = list  # human-readable remarks for the report: what was left out and why (each said once)

BLEND_MODES = ("average", "concat", "combine", "replace")
MAX_REPEAT = 4  # ComfyUI refuses to batch conds whose lengths need more than 4x repetition
_MISSING = object()


@dataclass(frozen=True)
class Encoded:
    """One prompt's conditioning as CLIPTextEncode gives it, batch dim removed: tokens [T, D], pooled [P] or None,
    and the text encoder's other outputs (attention_mask [T], conditioning_llama3 [32, T', 4096], ...)."""

    cond: torch.Tensor
    pooled: torch.Tensor | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)

    def nbytes(self) -> int:
        tensors = [self.cond, self.pooled, *self.extras.values()]
        return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def note(notes: Notes | None, text: str) -> None:
    """Add a remark for the report once."""
    if notes is not None and text not in notes:
        notes.append(text)


def is_text_key(key: str) -> bool:
    """ComfyUI's names for what a text encoder returns beside the tokens (pooled_output, attention_mask,
    attention_mask_mt5xl, conditioning_llama3, conditioning_byt5small, ...): keys that belong to their tokens."""
    return key == "pooled_output" or key.startswith(("attention_mask", "conditioning_"))


def is_token_mask(t: Any, length: int) -> bool:
    """An attention mask over `length` tokens: an integer or bool tensor [..., length] (ComfyUI's are int64)."""
    return isinstance(t, torch.Tensor) and not t.is_floating_point() and t.dim() >= 1 and t.shape[-1] == length


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


def _same(values: Sequence[Any]) -> bool:
    first = values[0]
    for v in values[1:]:
        if isinstance(v, torch.Tensor) or isinstance(first, torch.Tensor):
            if not (isinstance(v, torch.Tensor) and isinstance(first, torch.Tensor) and v.shape == first.shape
                    and torch.equal(v, first)):
                return False
            continue
        try:
            if v is not first and not bool(v == first):
                return False
        except Exception:  # noqa: BLE001  (objects without a usable ==: only identity counts)
            return False
    return True


def _merge_key(values: Sequence[Any], lengths: Sequence[int], reduce: Callable[[torch.Tensor], torch.Tensor],
               mask_reduce: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """One extra key across items (k prompts, or B crops): masks follow the tokens, float tensors are reduced
    (after matching a token axis like the tokens), anything else is kept when every item agrees; _MISSING when
    the values cannot be merged."""
    if all(is_token_mask(v, n) for v, n in zip(values, lengths)):
        shapes = {tuple(v.shape[:-1]) for v in values}
        if len(shapes) == 1:
            masks = match_token_length([v.float().unsqueeze(-1) for v in values])
            return mask_reduce(torch.stack([m.squeeze(-1) for m in masks])).to(values[0].dtype)
    if all(isinstance(v, torch.Tensor) and v.is_floating_point() for v in values):
        vs = [v.float() for v in values]
        if len({v.shape for v in vs}) > 1:
            if not all(v.dim() >= 2 and v.shape[:-2] == vs[0].shape[:-2] and v.shape[-1] == vs[0].shape[-1] for v in vs):
                return _MISSING
            vs = match_token_length(vs)
        return reduce(torch.stack(vs))
    return values[0] if _same(values) else _MISSING


def _merge_extras(items: Sequence[Mapping[str, Any]], lengths: Sequence[int], reduce: Callable[[torch.Tensor], torch.Tensor],
                  mask_reduce: Callable[[torch.Tensor], torch.Tensor], what: str, notes: Notes | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in sorted(set().union(*(it.keys() for it in items))):
        values = [it.get(key, _MISSING) for it in items]
        have = sum(v is not _MISSING for v in values)
        if have < len(values):
            note(notes, f"{key}: only {have} of the {len(values)} {what} have it (the text encoder gives it for some "
                        "prompts only); it is left out of the retrieved conditioning")
            continue
        merged = _merge_key(values, lengths, reduce, mask_reduce)
        if merged is _MISSING:
            note(notes, f"{key}: the {what} give values that cannot be combined; it is left out of the retrieved "
                        "conditioning")
            continue
        out[key] = merged
    return out


def weighted_conditioning(items: Sequence[Any], weights: torch.Tensor, notes: Notes | None = None) -> Encoded:
    """Weighted average of k prompts' conditioning (Encoded, or (cond, pooled) pairs) -> Encoded [L, D]."""
    if len(items) != len(weights):
        raise DimensionError(f"{len(items)} conditionings but {len(weights)} weights")
    enc = [as_encoded(it) for it in items]
    conds = match_token_length([e.cond for e in enc])
    dims = {c.shape[-1] for c in conds}
    if len(dims) != 1:
        raise DimensionError(f"retrieved conditionings have different widths {sorted(dims)}; they must come from one text encoder")
    w = weights.to(torch.float32)

    def mean(stacked: torch.Tensor) -> torch.Tensor:
        return torch.einsum("k,k...->...", w, stacked)

    cond = mean(torch.stack(conds))
    pooled = None
    if all(e.pooled is not None for e in enc):
        pooled = mean(torch.stack([e.pooled.reshape(-1) for e in enc]))  # type: ignore[union-attr]
    extras = _merge_extras([e.extras for e in enc], [int(e.cond.shape[0]) for e in enc], mean,
                           lambda m: m.amax(dim=0), "matched prompts", notes)
    return Encoded(cond, pooled, extras)


class EncodingCache:
    """LRU cache of prompt -> Encoded per text encoder, bounded in bytes, so repeated queries never re-encode.
    Each entry remembers its family: asking for a prompt under the same key with another family is refused.
    The default holds the k prompts of a query for every family: an SDXL prompt is 0.6 MB in float32, a Wan
    prompt 8 MB, a HiDream prompt 69 MB (its 32 Llama layers), so 1 GiB keeps ~1,600 SDXL or ~14 HiDream prompts."""

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], tuple[str | None, Encoded]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, encoder_key: str, prompt: str, encode: TextEncodeFn, family: str | None = None) -> Encoded:
        key = (encoder_key, prompt)
        with self._lock:
            if key in self._items:
                cached_family, enc = self._items[key]
                if family is not None and cached_family is not None and cached_family != family:
                    raise TextFamilyMismatchError(
                        f"the encoding cache holds {cached_family} conditioning for text encoder {encoder_key!r}, but "
                        f"{family} was asked for; give each text encoder its own key")
                self._items.move_to_end(key)
                self.hits += 1
                return enc
        enc = as_encoded(encode(prompt), prompt)
        with self._lock:
            self.misses += 1
            if key not in self._items:
                self._items[key] = (family, enc)
                self._bytes += enc.nbytes()
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, (_, old) = self._items.popitem(last=False)
                self._bytes -= old.nbytes()
        return enc

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


def _unbatch(t: torch.Tensor, key: str, prompt: str) -> torch.Tensor:
    if t.dim() == 0 or t.shape[0] != 1:
        raise DimensionError(f"text encoder output {key} for {prompt!r} has shape {tuple(t.shape)}, expected batch 1")
    t = t[0].detach().cpu()
    return t.float() if t.is_floating_point() else t


def as_encoded(out: Any, prompt: str = "") -> Encoded:
    """Normalise a text encoder's output to Encoded (cond [T, D] float32 CPU, pooled [P] or None, extras without
    their batch dim): an Encoded, or (cond, pooled) / (cond, pooled, extras) with or without the batch dim."""
    if isinstance(out, Encoded):
        return out
    if not isinstance(out, (tuple, list)) or len(out) not in (2, 3):
        raise DimensionError(f"a text encoder must return (cond, pooled[, extras]); got {type(out).__name__} for {prompt!r}")
    cond, pooled = out[0], out[1]
    extras = dict(out[2]) if len(out) == 3 and out[2] else {}
    cond = torch.as_tensor(cond).detach().to("cpu", torch.float32)
    if cond.dim() == 3 and cond.shape[0] == 1:
        cond = cond[0]
        extras = {k: _unbatch(v, k, prompt) if isinstance(v, torch.Tensor) else v for k, v in extras.items()}
    if cond.dim() != 2:
        raise DimensionError(f"text encoder cond for {prompt!r} has shape {tuple(cond.shape)}, expected [T, D] or [1, T, D]")
    if pooled is not None:
        pooled = torch.as_tensor(pooled).detach().to("cpu", torch.float32).reshape(-1)
    return Encoded(cond, pooled, extras)


def text_lookup(encode: TextEncodeFn, cache: EncodingCache | None = None, encoder_key: str = "",
                family: str | None = None) -> Callable[["Match"], Encoded]:
    """Text mode: encode each retrieved prompt with the given text encoder (through the cache)."""
    if cache is None:
        return lambda m: as_encoded(encode(m.prompt), m.prompt)
    return lambda m: cache.get(encoder_key, m.prompt, encode, family)


def baked_lookup(vaults: Mapping[str, "Vault"]) -> Callable[["Match"], Encoded]:
    """Baked mode: read each retrieved prompt's stored conditioning from its vault (memory-mapped); the keys a
    family's spec says are rebuilt (an all-ones attention mask) are added back."""

    def lookup(m: "Match") -> Encoded:
        vault = vaults[m.vault]
        cond, pooled = vault.baked(m.prompt_id)
        spec = vault.text
        extras = {"attention_mask": torch.ones(len(cond), dtype=torch.int64)} if spec is not None and spec.attention_mask else {}
        p = torch.from_numpy(pooled.astype("float32")).reshape(-1) if pooled is not None and pooled.size else None
        return Encoded(torch.from_numpy(cond.astype("float32")), p, extras)

    return lookup


def retrieved_conditioning(results: Sequence["QueryResult"], lookup: Callable[["Match"], Any],
                           temperature: float | None = 0.05, notes: Notes | None = None) -> Conditioning:
    """One CONDITIONING entry for a batch of crops: cond [B, L, D], pooled [B, P] (None unless every prompt has
    one), and the text encoder's other keys stacked per crop."""
    if not results:
        raise QueryError("no query results to build conditioning from")
    per_crop: list[Encoded] = []
    for b, r in enumerate(results):
        if not r.matches:
            raise QueryError(f"crop {b} has no matches to build conditioning from")
        items = [lookup(m) for m in r.matches]
        per_crop.append(weighted_conditioning(items, retrieval_weights(r.similarities, temperature), notes))
    conds = match_token_length([e.cond for e in per_crop])
    pooled = torch.stack([e.pooled for e in per_crop]) if all(e.pooled is not None for e in per_crop) else None  # type: ignore[misc]
    extras = _merge_extras([e.extras for e in per_crop], [int(e.cond.shape[0]) for e in per_crop],
                           lambda s: s, lambda s: s, "crops", notes)
    return [[torch.stack(conds), {"pooled_output": pooled, **extras}]]


def on_device_of(cond: Conditioning, user: Conditioning | None) -> Conditioning:
    """`cond` with its tensors on the device of the user's conditioning (a text encoder that leaves its output on
    the GPU): ComfyUI's own nodes (ConditioningAverage, Concat) then take both. Unchanged without a user."""
    if not user or not isinstance(user[0][0], torch.Tensor):
        return cond
    device = user[0][0].device

    def move(v: Any) -> Any:
        return v.to(device) if isinstance(v, torch.Tensor) and v.device != device else v

    return [[move(c), {k: move(v) for k, v in extras.items()}] for c, extras in cond]


def _extras_shapes(extras: Mapping[str, Any]) -> dict[str, tuple[int | None, ...]]:
    return {k: tuple(v.shape[1:]) for k, v in extras.items()
            if isinstance(v, torch.Tensor) and k != "pooled_output" and is_text_key(k)}


def check_text_compatible(user: Conditioning | None, retrieved: Conditioning, what: str = "retrieved",
                          family: str | None = None) -> None:
    """Refuse to blend conditionings whose token or pooled widths differ (e.g. SD1.5 vs SDXL), naming both sides."""
    if not user:
        return
    r_cond, r_extras = retrieved[0]
    r_pooled = r_extras.get("pooled_output")
    r_desc = (f"{family}, " if family else "") + shapes_text(r_cond.shape[-1], r_pooled.shape[-1] if r_pooled is not None else None)
    for u_cond, u_extras in user:
        u_pooled = u_extras.get("pooled_output")
        u_desc = describe(u_cond.shape[-1], u_pooled.shape[-1] if u_pooled is not None else None)
        if u_cond.shape[-1] != r_cond.shape[-1] or (
                u_pooled is not None and r_pooled is not None and u_pooled.shape[-1] != r_pooled.shape[-1]):
            raise TextFamilyMismatchError(
                f"the {what} conditioning is {r_desc} but yours is {u_desc}: they come from different text encoders; "
                "connect the CLIP your conditioning was encoded with (or a vault baked for its family)")


def check_baked_family(text: "TextSpec | None", user: Conditioning | None, vault_name: str) -> None:
    """Baked mode: the vault's stored family/dims must match the conditioning it is blended with."""
    if text is None or not user:
        return
    for u_cond, u_extras in user:
        u_pooled = u_extras.get("pooled_output")
        u_pooled_dim = u_pooled.shape[-1] if u_pooled is not None else 0
        if u_cond.shape[-1] != text.dim or (u_pooled is not None and text.pooled_dim and u_pooled_dim != text.pooled_dim):
            raise TextFamilyMismatchError(
                f"vault '{vault_name}' stores {text.family} conditioning ({shapes_text(text.dim, text.pooled_dim)}) but yours is "
                f"{describe(u_cond.shape[-1], u_pooled_dim or None)}; connect a CLIP to use text mode, or use a vault "
                "baked for your model's family")


def _batch_to(t: torch.Tensor, b: int, what: str) -> torch.Tensor:
    if t.shape[0] == b:
        return t
    if t.shape[0] == 1:
        return t.expand(b, *t.shape[1:])
    raise DimensionError(f"{what} has batch {t.shape[0]}, cannot pair it with batch {b}; use 1 or the same batch size")


def _text_keys(user_extras: Mapping[str, Any], r_extras: Mapping[str, Any]) -> set[str]:
    return {k for k in (*user_extras, *r_extras) if is_text_key(k) or k in r_extras}


def _unused_retrieved_keys(r_extras: Mapping[str, Any], mode: str, notes: Notes | None) -> None:
    """Say which of the retrieved side's text-encoder keys a mode does not use (an all-ones mask says nothing)."""
    for key, value in sorted(r_extras.items()):
        if key == "pooled_output" or value is None:
            continue
        if key.startswith("attention_mask") and (mode == "concat" or (isinstance(value, torch.Tensor) and bool(value.all()))):
            continue
        node = {"average": "ConditioningAverage", "concat": "ConditioningConcat"}[mode]
        note(notes, f"{key} of the retrieved prompts is not used in {mode} mode: yours is kept, as {node} does; "
                    "combine or replace use it")


def blend(user: Conditioning | None, retrieved: Conditioning, mode: str = "average", strength: float = 0.3,
          notes: Notes | None = None, family: str | None = None) -> Conditioning:
    """Blend the retrieved conditioning into the user's (see the module doc for each mode, per key). `notes`
    collects what a mode leaves out; `family` names the retrieved side in mismatch messages."""
    if mode not in BLEND_MODES:
        raise QueryError(f"blend mode {mode!r} unknown; choose one of {', '.join(BLEND_MODES)}")
    if not 0.0 <= strength <= 1.0:
        raise QueryError(f"strength must lie in 0..1, got {strength}")
    r_cond, r_extras = retrieved[0]
    if not user:
        return [[r_cond, dict(r_extras)]]
    check_text_compatible(user, retrieved, family=family)
    if mode in ("combine", "replace"):
        text = _text_keys(user[0][1], r_extras)
        carried = {k: v for k, v in user[0][1].items() if k not in text and k != "strength"}
        dropped = sorted(k for k in user[0][1] if k in text and k not in r_extras and user[0][1][k] is not None)
        if mode == "combine":
            return [[c, dict(e)] for c, e in user] + [[r_cond, {**carried, **r_extras, "strength": strength}]]
        for key in dropped:
            note(notes, f"your {key} is left out in replace mode: it belongs to your prompt's tokens, which the "
                        "retrieved ones replace")
        out = []
        for u_cond, u_extras in user:
            keep = {k: v for k, v in u_extras.items() if k not in text}
            out.append([r_cond.to(u_cond.device, u_cond.dtype), {**keep, **r_extras}])
        return out
    _unused_retrieved_keys(r_extras, mode, notes)
    r_pooled = r_extras.get("pooled_output")
    out = []
    for u_cond, u_extras in user:
        b = max(u_cond.shape[0], r_cond.shape[0])
        t1 = _batch_to(u_cond, b, "your conditioning")
        t0 = _batch_to(r_cond.to(u_cond.device, u_cond.dtype), b, "the retrieved conditioning")
        extras = dict(u_extras)
        if mode == "concat":  # exactly ConditioningConcat: your keys, your attention mask as it is
            if is_token_mask(u_extras.get("attention_mask"), t1.shape[1]):
                note(notes, "your attention_mask covers only your own tokens in concat mode, as ConditioningConcat "
                            "leaves it: a model that reads its token count from the mask (Lumina 2) does not see the "
                            "appended ones; use average or combine with such a model")
            out.append([torch.cat([t1, t0], dim=1), extras])
            continue
        # average: exactly ConditioningAverage(to=user, from=retrieved, conditioning_to_strength=1 - strength)
        to_strength = 1.0 - strength
        t0 = t0[:, : t1.shape[1]]
        if t0.shape[1] < t1.shape[1]:
            t0 = torch.cat([t0, torch.zeros(b, t1.shape[1] - t0.shape[1], t1.shape[2], dtype=t1.dtype, device=t1.device)], dim=1)
        tw = torch.mul(t1, to_strength) + torch.mul(t0, (1.0 - to_strength))
        u_pooled = u_extras.get("pooled_output", r_pooled)
        if r_pooled is not None and u_pooled is not None:
            rp = _batch_to(r_pooled.to(u_pooled.device, u_pooled.dtype), b, "the retrieved pooled output")
            extras["pooled_output"] = (torch.mul(_batch_to(u_pooled, b, "your pooled output"), to_strength)
                                       + torch.mul(rp, (1.0 - to_strength)))
        elif r_pooled is not None:
            extras["pooled_output"] = r_pooled.to(u_cond.device, u_cond.dtype)
        out.append([tw, extras])
    return out
