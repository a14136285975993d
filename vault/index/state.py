"""The cached index on this machine: where it lives, what index.json records, and how index.faiss is written and read.

A FAISS binary is only ever loaded from this machine's cache (never from a vault someone shared):
`<cache>/index/<hash of the vault path>/` holds `index.faiss`, `coarse.faiss` (the coarse step's fast
pass), `outliers.faiss` (the outlier pool) and `index.json`, which binds them to the vault's id and to a
digest of the entries they cover.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...core.atomic import atomic_write, atomic_write_bytes

if TYPE_CHECKING:
    from ..store import Vault
    from .coarse import Coarse

INDEX_STATE_VERSION = 5


def default_cache_dir() -> Path:
    """Where this machine keeps vault indexes: $LUNA_VAULT_CACHE, else the user cache folder."""
    if os.environ.get("LUNA_VAULT_CACHE"):
        return Path(os.environ["LUNA_VAULT_CACHE"])
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "luna-vault" / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "luna-vault"


def index_cache_folder(vault: "Vault", cache_dir: Path | None = None) -> Path:
    """This machine's cache folder for one vault's index (keyed by the vault's absolute path)."""
    key = hashlib.sha256(str(vault.path.resolve()).encode()).hexdigest()[:24]
    return (Path(cache_dir) if cache_dir else default_cache_dir()) / "index" / key


@dataclass
class IndexState:
    """What index.json records: which vault content the cached index covers and how it is tuned."""

    spec: str
    vault_path: str
    vault_id: str = ""
    covered_digest: str = ""  # of the entries 0..ntotal-1 (see content_digest)
    coarse_digest: str = ""  # of the list centroids the fast pass in coarse.faiss was made from
    ntotal: int = 0
    trained_n: int = 0
    train_share: float = 1.0  # prompts (entries, when negative) whose hash is below this trained the partition
    nprobe: int = 16  # lists every query probes at least (the probing rule's floor, see coarse.ProbeRule)
    drop: float = 0.0  # ... and every list within this of its best centroid score
    max_probe: int = 0  # ... up to this many
    far_floor: int = 0  # ... and at least this many when the best centroid score is below far_score (0: no such tier)
    far_score: float | None = None
    mean_probe: float = 0.0  # lists probed per tuning query, on average
    k_factor: int = 8
    guard: float | None = None  # queries whose best centroid score is below this are answered exactly
    reach: int = 0  # the fixed nprobe the neighbourhoods would need without the drop (see reach.py), for comparison
    recall: float | None = None  # recall@5 on the tuning queries (guarded ones count as exact)
    gap_share: float | None = None  # share of tuning queries whose similarity gap exceeds GAP_LIMIT
    exact_share: float | None = None  # share of tuning queries the guard answered exactly
    tune_ms: float | None = None  # one query at the chosen setting, on the machine that tuned it
    exact_ms: float | None = None  # one exact search, same machine
    target_met: bool = True
    note: str = ""
    tuned_n: int = 0
    tune_queries: int = 0
    drift_rate: float | None = None  # the highest expected miss rate an append's entries had under the rule tuned
    # before it, since the partition was trained (above REACH_RATE: the index was tuned again for them, see `advice`)
    drift_reach: int = 0  # ... and the fixed nprobe those entries would need
    outliers: list[int] | None = None  # entries least like their list's centroid, scanned for every query (outliers.py)
    built_at: float = 0.0
    version: int = INDEX_STATE_VERSION


def content_digest(vault: "Vault", n: int) -> str:
    """Digest of the vault's first n entries as an index sees them: its id, and a fixed sample of vectors.

    Stable when small segments are merged (the entries stay), different for another vault or when
    entries are rewritten (a compaction renumbers them).
    """
    h = hashlib.sha256(f"{vault.manifest.vault_id}|{n}|{vault.dim}".encode())
    if n:
        ids = np.unique(np.linspace(0, n - 1, min(n, 256)).astype(np.int64))
        h.update(np.ascontiguousarray(vault.embeddings(ids)).tobytes())
    return h.hexdigest()


def read_state(folder: Path, vault: "Vault") -> IndexState | None:
    """index.json of this vault's cached index, or None when missing, unreadable, old or for another path."""
    try:
        d = json.loads((folder / "index.json").read_text())
        known = {f.name for f in fields(IndexState)}
        state = IndexState(**{k: v for k, v in d.items() if k in known})
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if state.version != INDEX_STATE_VERSION or state.vault_path != str(vault.path.resolve()):
        return None
    return state


def save(folder: Path, index: Any, state: IndexState, coarse: "Coarse | None", pool: Any | None = None) -> None:
    """Write index.faiss (coarse centroids as fp16), coarse.faiss (the coarse step's fast pass, if any),
    outliers.faiss (the outlier pool, if any) and index.json (last: it is what binds the files to the vault),
    each atomically."""
    import faiss

    folder.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with _compact_quantizer(faiss, index):
            faiss.write_index(index, str(tmp))

    atomic_write(folder / "index.faiss", write)
    if coarse is not None:
        save_coarse(folder, coarse, state)
    if pool is not None:
        save_pool(folder, pool)
    save_state(folder, state)


def save_coarse(folder: Path, coarse: "Coarse", state: IndexState) -> None:
    """Write coarse.faiss (the coarse step's fast pass, if it has one) and record in `state` which centroids it
    was made from (index.json is the caller's to write)."""
    import faiss

    if coarse.fast is not None:
        atomic_write(folder / "coarse.faiss", lambda tmp: faiss.write_index(coarse.fast, str(tmp)))
        state.coarse_digest = centroid_digest(coarse.centroids)


def save_pool(folder: Path, pool: Any) -> None:
    """Write outliers.faiss (the outlier pool's codes, so that an open reads a few hundred bytes per entry instead of
    gathering and coding its scattered vectors again), atomically."""
    import faiss

    atomic_write(folder / "outliers.faiss", lambda tmp: faiss.write_index(pool, str(tmp)))


def load_pool(folder: Path, index: Any, ids: np.ndarray) -> Any | None:
    """The outlier pool from outliers.faiss when it holds exactly the entries `ids`, coded with this index's own
    PQ codebook; None otherwise (missing, unreadable, or written for another state: the caller codes it again)."""
    import faiss

    try:
        pool = faiss.read_index(str(folder / "outliers.faiss"))
    except RuntimeError:
        return None
    if not isinstance(pool, faiss.IndexIDMap) or pool.ntotal != len(ids):
        return None
    if not np.array_equal(faiss.vector_to_array(pool.id_map), ids):
        return None
    ivf, codes = faiss.downcast_index(ivf_of(faiss, index)), faiss.downcast_index(pool.index)
    if (not isinstance(codes, faiss.IndexPQFastScan) or codes.d != ivf.d or codes.pq.M != ivf.pq.M
            or codes.pq.nbits != ivf.pq.nbits
            or not np.array_equal(faiss.vector_to_array(codes.pq.centroids), faiss.vector_to_array(ivf.pq.centroids))):
        return None
    return pool


def save_state(folder: Path, state: IndexState) -> None:
    """Write index.json alone, atomically (the index files it describes are already in place)."""
    atomic_write_bytes(folder / "index.json", json.dumps(asdict(state), indent=1).encode())


def load(folder: Path) -> Any:
    """index.faiss as written by `save` (coarse centroids back to float32). RuntimeError when unreadable."""
    import faiss

    return _expand_quantizer(faiss, faiss.read_index(str(folder / "index.faiss")))


def centroid_digest(centroids: np.ndarray) -> str:
    """Digest of list centroids as index.faiss saves them, to bind coarse.faiss to the index.faiss it was made for.

    The fp16 codes are made by faiss itself, as `save` makes them: faiss rounds a tie away from zero where
    numpy rounds it to even, so a numpy cast of the float32 centroids (about 1 value in 16,000 is a tie)
    differs from the centroids read back, and every open would make the fast pass again.
    """
    import faiss

    c = np.ascontiguousarray(centroids, dtype=np.float32)
    sq = faiss.IndexScalarQuantizer(c.shape[1], faiss.ScalarQuantizer.QT_fp16)
    return hashlib.sha256(sq.sa_encode(c).tobytes()).hexdigest()


def load_coarse(folder: Path, index: Any, state: IndexState) -> "tuple[Coarse | None, bool]":
    """The coarse step of a loaded IVF index (None for an index without lists): its centroids, and the fast pass
    from coarse.faiss when that file was made from the same centroids, else made again (then the flag is True)."""
    import faiss

    from .coarse import Coarse, fast_pass

    ivf = ivf_of(faiss, index)
    if ivf is None:
        return None, False
    centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    try:
        if state.coarse_digest != centroid_digest(centroids):
            raise RuntimeError("coarse.faiss was made for other centroids")
        fast = faiss.read_index(str(folder / "coarse.faiss"))
        if fast.ntotal != ivf.nlist or fast.d != ivf.d:
            raise RuntimeError("coarse.faiss does not match the index")
    except RuntimeError:
        fast = fast_pass(centroids)
        return Coarse(centroids, fast), fast is not None
    return Coarse(centroids, fast), False


def ivf_of(faiss: Any, index: Any) -> Any:
    """The IVF part of an index (None when it has none)."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


class _compact_quantizer:
    """While saving: hold an IVF's flat coarse quantizer as fp16 (half the bytes on disk, same ranking)."""

    def __init__(self, faiss: Any, index: Any) -> None:
        self.faiss, self.ivf, self.saved = faiss, ivf_of(faiss, index), None

    def __enter__(self) -> None:
        faiss, ivf = self.faiss, self.ivf
        if ivf is None or not isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat):
            return
        centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
        small = faiss.IndexScalarQuantizer(ivf.d, faiss.ScalarQuantizer.QT_fp16, ivf.quantizer.metric_type)
        small.add(centroids)
        self.saved = swap_quantizer(ivf, small)

    def __exit__(self, *exc: Any) -> None:
        if self.saved is not None:
            swap_quantizer(self.ivf, self.saved)


def _expand_quantizer(faiss: Any, index: Any) -> Any:
    """After loading: turn an fp16 coarse quantizer back into a flat float32 one (BLAS for batches)."""
    ivf = ivf_of(faiss, index)
    if ivf is not None:
        q = faiss.downcast_index(ivf.quantizer)
        if isinstance(q, faiss.IndexScalarQuantizer) and q.sq.qtype == faiss.ScalarQuantizer.QT_fp16:
            flat = faiss.IndexFlat(ivf.d, q.metric_type)
            flat.add(q.reconstruct_n(0, q.ntotal))
            swap_quantizer(ivf, flat)
    return index


def swap_quantizer(ivf: Any, new: Any) -> Any:
    """Give `new` to the IVF index (which then owns it); return the old quantizer, now owned by Python."""
    old = ivf.quantizer
    new.this.disown()
    ivf.quantizer = new
    old.this.acquire()
    return old
