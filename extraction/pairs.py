"""Projector training pairs exported from a vault: image embedding <-> prompt id (<-> conditioning).

Shards `pairs-NNNNN.safetensors` hold `embeddings` [n, D] fp16, `prompt_ids` [n] int32 and
`entry_ids` [n] int64 of the vault's live entries; `pairs.json` names the vault and its content key.
Conditioning is not copied per image: it lives once per unique prompt in the vault's prompt table
(baked vaults), read with `Vault.baked(prompt_id)`. Exporting again rewrites the shards, so it is
always in step with the vault, also after a resumed or sharded extraction.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from ..core.atomic import atomic_write, atomic_write_bytes
from ..vault.store import Vault


def export_pairs(vault: Vault, out_dir: str | os.PathLike[str], shard_size: int = 65536) -> dict:
    """Write the vault's live entries as pair shards; returns what pairs.json says."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("pairs-*.safetensors"):
        old.unlink()
    live = np.flatnonzero(vault.live_mask())
    shards = []
    for n, a in enumerate(range(0, len(live), shard_size)):
        ids = live[a : a + shard_size]
        tensors = {"embeddings": np.ascontiguousarray(vault.embeddings(ids)),
                   "prompt_ids": vault.prompt_ids(ids).astype(np.int32), "entry_ids": ids.astype(np.int64)}
        name = f"pairs-{n:05d}.safetensors"
        atomic_write(out / name, lambda tmp, t=tensors: save_file(t, str(tmp), metadata={"kind": "luna-vault-pairs"}))
        shards.append({"file": name, "pairs": int(len(ids))})
    info = {
        "vault": str(vault.path.resolve()), "content_key": vault.manifest.content_key,
        "encoder": vault.encoder.to_json(), "text": None if vault.text is None else vars(vault.text),
        "prompts": vault.n_prompts, "pairs": int(len(live)), "shards": shards,
    }
    atomic_write_bytes(out / "pairs.json", json.dumps(info, indent=1).encode())
    return info
