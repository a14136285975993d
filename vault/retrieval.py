"""One call from crop embeddings to blended conditioning: search (or auto-detect), assemble, blend.

This is what the Vault Query node does, kept here so a script, a test or a service can do the same.
Text mode encodes retrieved prompts with the given text encoder (cached); without one, the vaults'
baked conditioning is used, and a vault without it is a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ..core.conditioning import (
    Conditioning,
    EncodingCache,
    baked_lookup,
    blend,
    check_baked_family,
    on_device_of,
    retrieval_weights,
    retrieved_conditioning,
    text_lookup,
)
from ..core.encoder import EncoderFingerprint
from ..core.errors import VaultError
from .query import QueryResult, detect_category, get_index, search
from .store import Vault

SHARED_TEXT_CACHE = EncodingCache()


@dataclass
class Retrieval:
    """Everything a query produced, per crop."""

    results: list[QueryResult]
    retrieved: Conditioning
    blended: Conditioning
    mode: str  # "text" or "baked"
    temperature: float | None
    skipped_vaults: dict[str, str] = field(default_factory=dict)
    index: dict[str, Any] = field(default_factory=dict)  # per vault searched: its index and how it was tuned
    family: str | None = None  # the text family of the retrieved conditioning (text mode: the CLIP's; baked: the vault's)
    notes: list[str] = field(default_factory=list)  # what the assembly or the blend left out, and why (each once)

    @property
    def best_prompts(self) -> list[str]:
        """The best match's prompt for each crop."""
        return [r.matches[0].prompt if r.matches else "" for r in self.results]

    def report(self) -> dict[str, Any]:
        crops = []
        for r in self.results:
            weights = retrieval_weights(r.similarities, self.temperature).tolist() if r.matches else []
            crop = r.to_json()
            for m, w in zip(crop["matches"], weights):
                m["weight"] = round(float(w), 6)
            crops.append(crop)
        return {"mode": self.mode, "family": self.family, "temperature": self.temperature, "crops": crops,
                "skipped_vaults": self.skipped_vaults, "index": self.index, "notes": self.notes}


def prompt_lookup(vaults: dict[str, Vault], used: set[str], text_encoder: Any, cache: EncodingCache | None,
                  against: Conditioning | None) -> tuple[Any, str]:
    """(match -> Encoded, "text" | "baked"): encode matched prompts with `text_encoder` (everything CLIPTextEncode
    gives when it has `encode_conditioning`), or read the vaults' baked conditioning, refusing vaults without it
    or of another family than `against`."""
    if text_encoder is not None:
        encode = getattr(text_encoder, "encode_conditioning", text_encoder.encode)
        return text_lookup(encode, cache, getattr(text_encoder, "key", ""), getattr(text_encoder, "family", None)), "text"
    for name in sorted(used):
        if vaults[name].text is None:
            raise VaultError(
                f"vault '{name}' stores no baked conditioning (it is a text-mode vault): connect a CLIP to the "
                "query so the matched prompts are encoded, or rebuild the vault with baking (--bake)"
            )
        check_baked_family(vaults[name].text, against, name)
    return baked_lookup(vaults), "baked"


def retrieve(vaults: Sequence[Vault], embeddings: Any, *, k: int = 5, filter: Any = None,
             encoder: EncoderFingerprint | None = None, text_encoder: Any = None, user: Conditioning | None = None,
             mode: str = "average", strength: float = 0.3, temperature: float | None = 0.05,
             cache: EncodingCache | None = SHARED_TEXT_CACHE) -> Retrieval:
    """Search one vault (or auto-detect across several), build the retrieved conditioning, blend it.

    `text_encoder` needs `.encode(prompt) -> (cond, pooled)` (or `.encode_conditioning(prompt) -> Encoded`, with
    every key the text encoder returns) and `.key`; None means baked mode.
    """
    if not vaults:
        raise VaultError("no vault to query: put a vault in models/vaults (luna-vault build/extract, or Luna Vault Builder)")
    skipped: dict[str, str] = {}
    if len(vaults) == 1:
        results = search(vaults[0], embeddings, k=k, filter=filter, encoder=encoder)
    else:
        detection, results = detect_category(vaults, embeddings, k=k, filter=filter, encoder=encoder)
        skipped = detection.skipped
    vaults_by_name = {v.name: v for v in vaults}
    lookup, text_mode = prompt_lookup(vaults_by_name, {r.vault for r in results}, text_encoder, cache, user)
    if text_encoder is not None:
        family = getattr(text_encoder, "family", None)
    else:
        families = sorted({vaults_by_name[r.vault].text.family for r in results})  # type: ignore[union-attr]
        family = " + ".join(families)
    notes: list[str] = []
    retrieved = on_device_of(retrieved_conditioning(results, lookup, temperature=temperature, notes=notes), user)
    blended = blend(user, retrieved, mode, strength, notes=notes, family=family)
    index = {v.name: index_summary(v) for v in vaults if v.name not in skipped}
    return Retrieval(results, retrieved, blended, text_mode, temperature, skipped, index, family, notes)


def index_summary(vault: Vault) -> dict[str, Any]:
    """What a user should know of a vault's index: its kind, whether its tuning reached the target, and what would
    make it faster (`advice`, "" when nothing)."""
    d = get_index(vault).describe()
    keep = ("spec", "exact", "nprobe", "k_factor", "recall_at_5", "miss_share", "exact_share", "target_met", "note",
            "advice", "queries", "exact_answers")
    return {k: d[k] for k in keep if k in d}
