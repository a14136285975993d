"""Prompt siblings: the entries made from the same prompt as a match are re-ranked with it.

A vault of generated images holds a few images (seeds) per prompt. Their embeddings are close to
each other, but each image's own detail moves it across list boundaries: the images of one prompt
land in lists far apart, and a query like them (a new image of that prompt) needs every one of
those lists probed to get its top-5. Once the search has found one of them, the others are known
(they share its prompt id), so the best matches' siblings are re-ranked exactly as well: a few
dozen more rows per query instead of hundreds more lists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .exact import unique_ids

if TYPE_CHECKING:
    from ..store import Vault

SIBLINGS_MAX = 32  # entries of one prompt taken along (a prompt with thousands of images is no neighbourhood)
MIN_SHARE = 0.1  # used only when at least this share of entries has a sibling


class Siblings:
    """Entries grouped by prompt id: which entries share a prompt with given ones."""

    def __init__(self, prompt_of: np.ndarray) -> None:
        self.prompt_of = np.asarray(prompt_of, dtype=np.int64)
        self.order = np.argsort(self.prompt_of, kind="stable")
        counts = np.bincount(self.prompt_of)  # entries per prompt id
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.counts = np.minimum(counts, SIBLINGS_MAX)

    @classmethod
    def of_vault(cls, vault: "Vault") -> "Siblings | None":
        """The vault's siblings, or None when too few entries share a prompt for them to matter."""
        prompt_of = vault.all_prompt_ids()
        # distinct prompts by one counting pass (np.unique sorts or hashes: 2.1 s at 10M entries, against 0.02 s)
        if not len(prompt_of) or np.count_nonzero(np.bincount(prompt_of)) > (1 - MIN_SHARE) * len(prompt_of):
            return None
        return cls(prompt_of)

    def table(self, ids: np.ndarray) -> np.ndarray:
        """[*ids.shape, SIBLINGS_MAX] the entries sharing each id's prompt (itself included), -1 padded; -1 ids
        give a row of -1."""
        safe = np.maximum(ids, 0)
        p = self.prompt_of[safe]
        width = int(self.counts[p].max(initial=1)) if ids.size else 1
        j = np.arange(width)
        at = self.starts[p][..., None] + j
        out = self.order[np.minimum(at, len(self.order) - 1)]
        return np.where((j < self.counts[p][..., None]) & (ids[..., None] >= 0), out, -1)

    def expand(self, cand: np.ndarray, best: int) -> np.ndarray:
        """[B, W]: per row the candidates `cand` [B, C] (best first) and all siblings of the first `best` of them,
        each once, -1 padded."""
        if len(cand) == 1:
            return self._expand_one(cand[0], best)[None]
        extra = self.table(cand[:, :best]).reshape(len(cand), -1)
        rows = [unique_ids(r[r >= 0]) for r in np.concatenate([cand, extra], axis=1)]
        width = max((len(r) for r in rows), default=0) or 1
        out = np.full((len(cand), width), -1, np.int64)
        for b, r in enumerate(rows):
            out[b, : len(r)] = r
        return out

    def _expand_one(self, row: np.ndarray, best: int) -> np.ndarray:
        """`expand` for one query's candidates [C]: sorted ids, each once, no -1 (few array operations: for one
        query they cost more than the arithmetic)."""
        head = row[:best]
        p = self.prompt_of[head[head >= 0]]
        counts = self.counts[p]
        ends = np.cumsum(counts)
        at = np.arange(int(ends[-1]) if len(ends) else 0) + np.repeat(self.starts[p] - ends + counts, counts)
        out = unique_ids(np.concatenate([row, self.order[at]]))
        return out[1:] if len(out) and out[0] < 0 else out

