"""Query API: a batch of image embeddings in, the k nearest entries (ids, similarities, prompts, metadata) out.

Also category auto-detection: query several vaults and pick, per crop, the one whose matches are
closest (mean similarity of its top-k), exposing every vault's score.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..core.encoder import EncoderFingerprint
from ..core.errors import DimensionError, EmptyVaultError, EncoderMismatchError, QueryError
from .filters import Filter, parse_filter
from .index import VaultIndex
from .store import Vault

log = logging.getLogger(__name__)


@dataclass
class Match:
    """One retrieved entry."""

    id: int
    similarity: float
    prompt_id: int
    prompt: str
    metadata: dict[str, Any]
    vault: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "similarity": round(self.similarity, 6), "prompt_id": self.prompt_id,
                "prompt": self.prompt, "metadata": self.metadata, "vault": self.vault}


@dataclass
class QueryResult:
    """The matches for one query embedding, best first (fewer than k when a filter leaves fewer)."""

    matches: list[Match]
    vault: str
    scores: dict[str, float] = field(default_factory=dict)  # auto-detect: every vault's score for this crop
    exact: bool = False  # answered by exact search (a small vault, a selective filter, or the index's guard)

    @property
    def ids(self) -> np.ndarray:
        return np.array([m.id for m in self.matches], dtype=np.int64)

    @property
    def similarities(self) -> np.ndarray:
        return np.array([m.similarity for m in self.matches], dtype=np.float32)

    @property
    def prompts(self) -> list[str]:
        return [m.prompt for m in self.matches]

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"vault": self.vault, "answered_by": "exact search" if self.exact else "index",
                             "matches": [m.to_json() for m in self.matches]}
        if self.scores:
            d["scores"] = {k: round(v, 6) for k, v in self.scores.items()}
        return d


def as_query_array(queries: Any, dim: int) -> np.ndarray:
    """Accept [D] or [B, D] numpy/torch embeddings; return L2-normalised float32 [B, D] or raise."""
    if hasattr(queries, "detach"):
        queries = queries.detach().cpu().float().numpy()
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None]
    if q.ndim != 2 or q.shape[1] != dim:
        raise DimensionError(
            f"query embeddings have shape {tuple(np.shape(queries))}, expected [batch, {dim}] "
            f"(the vault's image-encoder dim); use the CLIP vision model the vault was built with"
        )
    if q.shape[0] == 0:
        raise QueryError("no query embeddings were given (empty batch)")
    norms = np.sqrt(np.einsum("ij,ij->i", q, q))[:, None]  # NaN/inf in a row make its norm non-finite
    if not np.isfinite(norms).all():
        raise QueryError("query embeddings contain NaN or infinity")
    if (norms < 1e-12).any():
        raise QueryError("a query embedding is all zeros; cannot compare it")
    return q / norms


def get_index(vault: Vault, spec: str | None = None, **kwargs: Any) -> VaultIndex:
    """The vault's search index, built (or loaded from this machine's cache) on first use."""
    return vault.search_index(spec, **kwargs)


def search(vault: Vault, queries: Any, k: int = 5, filter: "str | Mapping[str, Any] | Filter | None" = None,
           encoder: EncoderFingerprint | None = None) -> list[QueryResult]:
    """The k nearest live entries for each query embedding, with prompts and metadata.

    Raises EncoderMismatchError when `encoder` is not the vault's, DimensionError on a wrong dim,
    EmptyVaultError on an empty vault, QueryError when k is out of range.
    """
    sims, ids, exact = _search(vault, queries, k, filter, encoder)
    results = []
    for srow, irow, ex in zip(sims, ids, exact):
        keep = irow >= 0
        results.append(QueryResult(_matches(vault, irow[keep], srow[keep]), vault.name, exact=bool(ex)))
    return results


def search_arrays(vault: Vault, queries: Any, k: int = 5, filter: Any = None,
                  encoder: EncoderFingerprint | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Like search() but returns only (similarities [B, k], ids [B, k]); -1 ids where a filter leaves < k."""
    sims, ids, _ = _search(vault, queries, k, filter, encoder)
    return sims, ids


def check_answerable(vault: Vault, k: Any, filter: Any = None, encoder: EncoderFingerprint | None = None) -> Filter | None:
    """The one rule for whether `vault` can answer a query, checked before any image is encoded.

    The encoder must be the vault's, k a whole number from 1 to the vault's live entries, and the
    filter must leave at least one entry (it may leave fewer than k: fewer matches come back).
    Raises EncoderMismatchError, QueryError or EmptyVaultError; returns the parsed filter.
    """
    if encoder is not None:
        vault.encoder.check_compatible(encoder, where=f"vault '{vault.name}'")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise QueryError(f"k must be a whole number >= 1, got {k!r}")
    if len(vault) == 0:
        raise EmptyVaultError(f"vault '{vault.name}' has no entries; add some before querying it")
    if k > len(vault):
        raise QueryError(f"k={k} but vault '{vault.name}' holds only {len(vault)} entries; use k <= {len(vault)}")
    flt = parse_filter(filter)
    if flt and not vault.filter_mask(flt).any():
        raise EmptyVaultError(f"no entry of vault '{vault.name}' passes the filter '{flt}'")
    return flt


def check_query(vaults: Sequence[Vault], k: Any, filter: Any = None,
                encoder: EncoderFingerprint | None = None) -> dict[str, str]:
    """check_answerable for one vault (raises) or for auto-detect over several: the vaults that cannot
    answer are returned with the reason (they are skipped); raises QueryError when none can."""
    if len(vaults) == 1:
        check_answerable(vaults[0], k, filter, encoder)
        return {}
    skipped: dict[str, str] = {}
    for vault in vaults:
        try:
            check_answerable(vault, k, filter, encoder)
        except (DimensionError, EncoderMismatchError, EmptyVaultError, QueryError) as e:
            skipped[vault.name] = str(e)
    if len(skipped) == len(vaults):
        raise QueryError("no vault can answer this query: " + "; ".join(f"{n}: {why}" for n, why in skipped.items()))
    return skipped


def _search(vault: Vault, queries: Any, k: int, filter: Any, encoder: EncoderFingerprint | None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    flt = check_answerable(vault, k, filter, encoder)
    q = as_query_array(queries, vault.dim)
    allowed = vault.filter_mask(flt) if (flt or vault.manifest.deleted_count) else None
    sims, ids, exact = get_index(vault).search_detailed(q, int(k), allowed)
    # stored vectors are unit length within NORM_TOLERANCE (fp16 rounding), so a cosine can come out at
    # 1 + 1e-3 at most: clamped, never reported above 1
    return np.clip(sims, -1.0, 1.0), ids, exact


def _matches(vault: Vault, ids: np.ndarray, sims: np.ndarray) -> list[Match]:
    pids = vault.prompt_ids(ids) if len(ids) else np.zeros(0, np.int64)
    return [
        Match(id=int(i), similarity=float(s), prompt_id=int(p), prompt=vault.prompt(int(p)),
              metadata=vault.metadata(int(i)), vault=vault.name)
        for i, s, p in zip(ids, sims, pids)
    ]


@dataclass
class Detection:
    """Auto-detect outcome: the chosen vault per query, and each vault's score per query."""

    chosen: list[str]
    scores: dict[str, np.ndarray]  # vault name -> [B] mean top-k similarity (NaN where skipped)
    skipped: dict[str, str]  # vault name -> why it was not considered


def detect_category(vaults: Sequence[Vault], queries: Any, k: int = 5, filter: Any = None,
                    encoder: EncoderFingerprint | None = None) -> tuple[Detection, list[QueryResult]]:
    """Query every compatible vault; for each crop keep the vault whose top-k matches are closest.

    A vault is skipped (with the reason recorded) when it cannot answer (see check_answerable: another
    encoder, fewer than k entries, nothing passes the filter) or the query dim is not its own. Raises
    QueryError if none is left.
    """
    if not vaults:
        raise QueryError("auto-detect needs at least one vault")
    names = [v.name for v in vaults]
    if len(set(names)) != len(names):
        raise QueryError(f"vault names must be distinct for auto-detect, got {names}")
    per_vault: dict[str, list[QueryResult]] = {}
    scores: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    B = None
    for vault in vaults:
        try:  # the same rule as for one vault (check_answerable): a vault that cannot answer is skipped
            results = search(vault, queries, k, filter, encoder)
        except (DimensionError, EncoderMismatchError, EmptyVaultError, QueryError) as e:
            skipped[vault.name] = str(e)
            continue
        per_vault[vault.name] = results
        scores[vault.name] = np.array([float(r.similarities.mean()) if r.matches else np.nan for r in results])
        B = len(results)
    if not per_vault:
        raise QueryError("no vault can answer this query: " + "; ".join(f"{n}: {why}" for n, why in skipped.items()))
    assert B is not None
    table = np.stack([scores[n] for n in per_vault])  # [V, B]
    best = np.nanargmax(np.where(np.isnan(table), -np.inf, table), axis=0)
    order = list(per_vault)
    chosen = [order[i] for i in best]
    out = []
    for b, name in enumerate(chosen):
        r = per_vault[name][b]
        r.scores = {n: float(scores[n][b]) for n in order}
        out.append(r)
    for name in skipped:
        scores[name] = np.full(B, np.nan)
    return Detection(chosen, scores, skipped), out
