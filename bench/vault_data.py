"""Synthetic embedding sets for the vault benchmarks: five generators of different shape, queries that are never stored.

`Dataset(n, d, kind)` holds the vectors in memory (x [n, d] float32, prompt_of [n]); `ClipLike` is the
CLIP-shaped generator, which can also stream its entries in blocks (for sets larger than memory).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

KINDS = ("hierarchical", "isotropic", "mixture", "anisotropic", "clip")


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _around(centres: np.ndarray, cos_lo: float, cos_hi: float, rng: np.random.Generator) -> np.ndarray:
    """One unit vector per centre, at a cosine to it drawn from cos_lo..cos_hi (isotropic noise)."""
    d = centres.shape[1]
    cos = rng.uniform(cos_lo, cos_hi, len(centres)).astype(np.float32)
    sigma = np.sqrt((1 / cos**2 - 1) / d).astype(np.float32)
    return unit(centres + sigma[:, None] * rng.standard_normal(centres.shape, dtype=np.float32))


def _with_noise(centres: np.ndarray, norm: float, rng: np.random.Generator) -> np.ndarray:
    """Each centre plus a random vector of the given norm, renormalised."""
    noise = rng.standard_normal(centres.shape, dtype=np.float32)
    noise *= norm / np.linalg.norm(noise, axis=1, keepdims=True)
    return unit(centres + noise)


def zipf_sizes(n: int, clusters: int) -> np.ndarray:
    """`clusters` sizes proportional to 1/rank, largest first, summing to n, none below 1."""
    w = 1.0 / np.arange(1, clusters + 1)
    sizes = np.maximum(1, np.floor(n * w / w.sum())).astype(np.int64)
    sizes[0] += n - sizes.sum()
    return sizes


class ClipLike:
    """Shaped like CLIP image embeddings of generated images (ViT-H: 1024-d), at any size, in blocks.

    - a cone: every vector is a common direction m (|m|^2 = 0.5 before normalising) plus a centred
      part, so unrelated images sit at cosine ~0.5;
    - a decaying spectrum over all d dims (variance of axis i ~ i^-alpha in a random rotation):
      clusters alpha 1.0, prompts 0.8, images 0.5 (the finest detail is the most spread out);
    - Zipf-sized clusters (categories): n/100 of them, sizes ~1/rank, at 500k from 55,000 entries
      down to 11; a prompt holds 4 images; same prompt ~0.87, same cluster ~0.7;
    - 5% near-duplicates: an entry re-encoded (cosine ~0.995 to another entry of the same prompt);
    - `appended`: a drift set from clusters never in the stored set (`new_clusters` of them).
    Queries (`queries`): new images of stored prompts, new prompts of stored clusters, images of
    clusters with no stored entry (out of distribution) and near-duplicates of stored entries,
    a quarter each.
    """

    VAR = {"common": 0.5, "cluster": 0.20, "prompt": 0.17, "image": 0.13, "dup": 0.005}
    ALPHA = {"cluster": 1.0, "prompt": 0.8, "image": 0.5, "dup": 0.5}
    PER_PROMPT = 4
    DUP_SHARE = 0.05
    BLOCK_PROMPTS = 16384  # generation unit: fixed, so the data never depends on how it is read

    def __init__(self, n: int, d: int, seed: int = 1, appended: int = 0, new_clusters: int = 0) -> None:
        self.n, self.d, self.seed = n, d, seed
        rng = np.random.default_rng(seed)
        self.rotation = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
        axis = np.arange(1, d + 1, dtype=np.float64)
        self.scale = {}
        for part, alpha in self.ALPHA.items():
            var = axis**-alpha
            self.scale[part] = np.sqrt(var / var.sum() * self.VAR[part]).astype(np.float32)
        self.common = (unit(rng.standard_normal(d)) * np.sqrt(self.VAR["common"])).astype(np.float32)
        self.sizes = zipf_sizes(n, max(1, n // 100))
        self.new_sizes = zipf_sizes(appended, max(1, new_clusters or appended // 100)) if appended else np.zeros(0, np.int64)
        k = len(self.sizes) + len(self.new_sizes)
        self.centres = self._draw(rng, "cluster", k + 4096).astype(np.float16)  # the last 4,096: never stored
        self.unstored = np.arange(k, k + 4096)
        self.query_rng = np.random.default_rng((seed, 99))
        # prompts: (cluster, number of images); stored clusters in a random order, then the appended ones
        self.stored_prompts = self._prompts(self.sizes, np.arange(len(self.sizes)), rng)
        self.new_prompts = self._prompts(self.new_sizes, len(self.sizes) + np.arange(len(self.new_sizes)), rng)
        self._seen: dict[str, dict[int, np.ndarray]] = {}

    def _draw(self, rng: np.random.Generator, part: str, m: int) -> np.ndarray:
        """m draws of one part's centred Gaussian (the spectrum in the common random rotation)."""
        z = rng.standard_normal((m, self.d), dtype=np.float32) * self.scale[part]
        return z @ self.rotation.T

    def _prompts(self, sizes: np.ndarray, clusters: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """[p, 2] (cluster, images) per prompt, shuffled across clusters."""
        rows = []
        for c, s in zip(clusters, sizes):
            full, rest = divmod(int(s), self.PER_PROMPT)
            counts = [self.PER_PROMPT] * full + ([rest] if rest else [])
            rows.append(np.stack([np.full(len(counts), c), counts], axis=1))
        table = np.concatenate(rows) if rows else np.zeros((0, 2), np.int64)
        return table[rng.permutation(len(table))]

    def blocks(self, region: str = "stored") -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(x [b, d] float32 unit rows, prompt index [b]) for the stored entries (or the appended ones), in order.

        Remembers, as it goes, the prompt vectors and entries that `queries` draws from.
        """
        table = self.stored_prompts if region == "stored" else self.new_prompts
        offset = 0 if region == "stored" else len(self.stored_prompts)
        seen = self._seen.setdefault(region, {})
        for b, a in enumerate(range(0, len(table), self.BLOCK_PROMPTS)):
            rng = np.random.default_rng((self.seed, 0 if region == "stored" else 1, b))
            part = table[a : a + self.BLOCK_PROMPTS]
            prompts = self.centres[part[:, 0]].astype(np.float32) + self._draw(rng, "prompt", len(part))
            local = np.repeat(np.arange(len(part)), part[:, 1])
            x = unit(self.common + prompts[local] + self._draw(rng, "image", len(local)))
            dup = np.flatnonzero(rng.random(len(local)) < self.DUP_SHARE)
            if len(dup):  # a near-copy of the previous entry of its prompt (itself, for a prompt's first)
                src = np.maximum(dup - 1, 0)
                src = np.where(local[src] == local[dup], src, dup)
                x[dup] = unit(x[src] + self._draw(rng, "dup", len(dup)))
            pick = np.flatnonzero(_hash01(offset + a + np.arange(len(part)), self.seed) < 0.02)
            for p in pick:
                seen[offset + a + int(p)] = prompts[p].copy()  # a copy: a row view would keep the whole block alive
            seen.setdefault(-1, np.zeros((0, self.d), np.float32))
            take = np.flatnonzero(_hash01(offset * 7 + a * 4 + np.arange(len(local)), self.seed + 1) < 0.01)
            seen[-1] = np.concatenate([seen[-1], x[take]])[-20000:]
            yield x, offset + a + local

    def all(self, region: str = "stored") -> tuple[np.ndarray, np.ndarray]:
        xs, ps = zip(*self.blocks(region)) if (self.n if region == "stored" else len(self.new_prompts)) else ((), ())
        if not xs:
            return np.zeros((0, self.d), np.float32), np.zeros(0, np.int64)
        return np.concatenate(xs), np.concatenate(ps)

    def queries(self, m: int, region: str = "stored", seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """(m unit queries [m, d], kind [m]: 0 stored prompt, 1 new prompt of a stored cluster, 2 no stored
        cluster, 3 near-duplicate of a stored entry). Needs `blocks(region)` to have been read once."""
        seen = self._seen.get(region)
        if not seen:
            raise RuntimeError("read blocks() of this region before asking for its queries")
        rng = np.random.default_rng((self.seed, seed, 0 if region == "stored" else 1))
        kinds = np.arange(m) % 4
        out = np.empty((m, self.d), np.float32)
        prompt_ids = np.array(sorted(k for k in seen if k >= 0))
        table = np.concatenate([self.stored_prompts, self.new_prompts])
        sel = np.flatnonzero(kinds == 0)
        ps = np.stack([seen[int(p)] for p in rng.choice(prompt_ids, len(sel))])
        out[sel] = unit(self.common + ps + self._draw(rng, "image", len(sel)))
        sel = np.flatnonzero(kinds == 1)  # a cluster of a random stored entry (big clusters get more queries)
        cl = table[rng.choice(prompt_ids, len(sel)), 0]
        out[sel] = unit(self.common + self.centres[cl].astype(np.float32) + self._draw(rng, "prompt", len(sel))
                        + self._draw(rng, "image", len(sel)))
        sel = np.flatnonzero(kinds == 2)
        cl = rng.choice(self.unstored, len(sel))
        out[sel] = unit(self.common + self.centres[cl].astype(np.float32) + self._draw(rng, "prompt", len(sel))
                        + self._draw(rng, "image", len(sel)))
        sel = np.flatnonzero(kinds == 3)
        src = seen[-1][rng.integers(0, len(seen[-1]), len(sel))]
        out[sel] = unit(src + self._draw(rng, "dup", len(sel)))
        order = rng.permutation(m)
        return out[order], kinds[order]


QUERY_KINDS = ("stored prompt", "new prompt", "no stored cluster", "near-duplicate")


def _hash01(keys: np.ndarray, salt: int) -> np.ndarray:
    """A fixed pseudo-random number in [0, 1) per integer key."""
    with np.errstate(over="ignore"):  # wrapping multiplication is the point
        h = (np.asarray(keys, np.uint64) + np.uint64(salt) * np.uint64(0x9E3779B97F4A7C15)) * np.uint64(0xBF58476D1CE4E5B9)
    return ((h >> np.uint64(11)) & np.uint64((1 << 53) - 1)) / float(1 << 53)


class Dataset:
    """Synthetic CLIP-like embeddings of generated images, from five generators of different shape.

    hierarchical: looks (N/250 centres) -> prompts (N/4, cosine 0.6..0.95 to their look) -> images
      (cosine 0.92..0.97 to their prompt), i.e. ~4 seeds per prompt as in a generated dataset.
    isotropic (worst case for approximate search): images scattered directly around the N/250 look
      centres, so a cluster's members are nearly equidistant from a query.
    mixture (issue 12's data): 4,000 random looks whatever N; N/4 prompts, each its look plus noise
      of norm 0.55, renormalised; 4 images per prompt, each its prompt plus noise of norm 0.35. At
      100k entries a look has only 25 images: clusters smaller than an IVF list of the old rule.
    anisotropic: every vector shares a strong common direction and the structure lives in a 64-d
      subspace with a decaying spectrum (plus isotropic noise), so unrelated images sit at cosine
      ~0.5 and neighbours at ~0.9-0.96.
    clip (issue 29's geometry, see ClipLike): a cone, a decaying spectrum over all dims, Zipf-sized
      clusters from n/9 down to 11 entries, 5% near-duplicates, out-of-distribution queries.
    Queries are never stored entries: for the first four, half are new images of stored prompts,
    half images of prompts the vault has never seen (of stored looks); for clip see ClipLike.
    """

    def __init__(self, n: int, d: int, kind: str, seed: int = 1, extra: int = 0) -> None:
        """n stored entries (x, prompt_of) and `extra` more to append later (x_extra)."""
        if kind not in KINDS:
            raise SystemExit(f"unknown data kind {kind!r}; expected one of {', '.join(KINDS)}")
        self.kind, self.d, self.n = kind, d, n
        self.query_kinds: np.ndarray | None = None
        if kind == "clip":
            self.clip = ClipLike(n, d, seed, appended=extra)
            self.x, self.prompt_of = self.clip.all()
            self.x_extra, _ = self.clip.all("appended")
            return
        n_all = n + extra
        self.rng = rng = np.random.default_rng(seed)
        if kind in ("hierarchical", "isotropic"):
            self.looks = unit(rng.standard_normal((max(50, n_all // 250), d), dtype=np.float32))
        if kind == "hierarchical":
            look_of_prompt = rng.integers(0, len(self.looks), max(1, n_all // 4))
            self.prompts = self._blocks(self.looks[look_of_prompt], 0.6, 0.95, rng)
            prompt_of = rng.integers(0, len(self.prompts), n_all)
            x = self._blocks(self.prompts[prompt_of], 0.92, 0.97, rng)
        elif kind == "isotropic":
            prompt_of = np.arange(n_all) // 4
            x = self._blocks(self.looks[rng.integers(0, len(self.looks), n_all)], 0.6, 0.95, rng)
        elif kind == "mixture":
            looks = unit(rng.standard_normal((4000, d), dtype=np.float32))
            self.prompts = _with_noise(looks[rng.integers(0, len(looks), n_all // 4 + 2000)], 0.55, rng)
            prompt_of = np.arange(n_all) // 4
            x = self._map(lambda ids: _with_noise(self.prompts[ids], 0.35, rng), prompt_of)
        else:
            self.common = unit(rng.standard_normal(d).astype(np.float32))
            r = 64
            self.basis = np.linalg.qr(rng.standard_normal((d, r)))[0].astype(np.float32)
            spectrum = np.arange(1, r + 1, dtype=np.float32) ** -0.5
            self.spectrum = spectrum / np.linalg.norm(spectrum)
            looks = self._latent(max(50, n_all // 125), 1.0)
            self.prompts = looks[rng.integers(0, len(looks), n_all // 4 + 2000)] + self._latent(n_all // 4 + 2000, 0.45)
            prompt_of = np.arange(n_all) // 4
            x = self._map(lambda ids: self._aniso(self.prompts[ids] + self._latent(len(ids), 0.25)), prompt_of)
        self.x, self.x_extra, self.prompt_of, self._stored = x[:n], x[n:], prompt_of[:n], int(prompt_of.max()) + 1

    def _latent(self, m: int, scale: float) -> np.ndarray:
        return self.rng.standard_normal((m, len(self.spectrum)), dtype=np.float32) * self.spectrum * scale

    def _aniso(self, z: np.ndarray) -> np.ndarray:
        iso = self.rng.standard_normal((len(z), self.d), dtype=np.float32) * np.float32(0.22 / np.sqrt(self.d))
        return unit(self.common + z @ self.basis.T + iso)

    @staticmethod
    def _map(fn: Callable[[np.ndarray], np.ndarray], ids: np.ndarray) -> np.ndarray:
        return np.concatenate([fn(ids[a : a + 50_000]) for a in range(0, len(ids), 50_000)])

    @staticmethod
    def _blocks(centres: np.ndarray, lo: float, hi: float, rng: np.random.Generator) -> np.ndarray:
        out = np.empty_like(centres)
        for a in range(0, len(centres), 50_000):
            out[a : a + 50_000] = _around(centres[a : a + 50_000], lo, hi, rng)
        return out

    def queries(self, m: int, seed: int = 2) -> np.ndarray:
        """m unit queries, none of them a stored vector (see the class docstring); sets query_kinds for clip."""
        if self.kind == "clip":
            q, self.query_kinds = self.clip.queries(m, seed=seed)
            return q
        rng = np.random.default_rng(seed)
        if self.kind == "isotropic":
            return _around(self.looks[rng.integers(0, len(self.looks), m)], 0.6, 0.95, rng)
        if self.kind == "hierarchical":
            known = _around(self.prompts[rng.integers(0, len(self.prompts), m // 2)], 0.92, 0.97, rng)
            new_prompts = _around(self.looks[rng.integers(0, len(self.looks), m - m // 2)], 0.6, 0.95, rng)
            return np.concatenate([known, _around(new_prompts, 0.92, 0.97, rng)])
        stored = self._stored  # prompts from this one on were never stored (nor appended)
        ids = np.concatenate([rng.integers(0, stored, m // 2), rng.integers(stored, len(self.prompts), m - m // 2)])
        self.rng = rng
        if self.kind == "mixture":
            return _with_noise(self.prompts[ids], 0.35, rng)
        return self._aniso(self.prompts[ids] + self._latent(len(ids), 0.25))


def describe(x: np.ndarray, rng: Any = None, pairs: int = 20000) -> dict[str, float]:
    """Shape statistics of a set: mean cosine of random pairs, norm of the mean, spectrum decay."""
    rng = rng or np.random.default_rng(0)
    a, b = rng.integers(0, len(x), (2, pairs))
    sample = x[rng.choice(len(x), min(len(x), 20000), replace=False)].astype(np.float64)
    centred = sample - sample.mean(0)
    ev = np.linalg.eigvalsh(centred.T @ centred / len(sample))[::-1]
    share = np.cumsum(ev) / ev.sum()
    return {"random_pair_cos": float(np.mean(np.sum(x[a] * x[b], axis=1))),
            "mean_norm": float(np.linalg.norm(sample.mean(0))),
            "dims_for_50pct": int(np.searchsorted(share, 0.5)) + 1, "dims_for_90pct": int(np.searchsorted(share, 0.9)) + 1,
            "participation_ratio": float(ev.sum() ** 2 / (ev**2).sum())}
