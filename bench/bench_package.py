"""Pack and install throughput against plain file copies of the same bytes, measured in the same run.

`python bench/bench_package.py [--n 200000] [--dim 1024] [--thumbnails]`: builds a text-mode vault of
N random unit embeddings (distinct prompts, metadata, optional 96 px previews), then times
`pack` (read + zip) and `install` (every check: sizes, checksums, manifest, norms, prompt ids,
metadata, preview headers, then the rename) against `shutil.copyfile` of the vault's files.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from luna_vault.vault import EncoderFingerprint, build
from luna_vault.vault.package import install, pack
from luna_vault.vault.thumbnails import make_thumbnail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--thumbnails", action="store_true", help="store a 96 px preview per entry (slower to build)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="luna-bench-pack-") as tmp:
        work = Path(tmp)
        x = rng.standard_normal((args.n, args.dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        prompts = [f"prompt {i} of a detailed eye, green iris" for i in range(args.n)]
        metas = [{"checkpoint": "ponyXL" if i % 3 else "sdxl", "seed": i} for i in range(args.n)]
        thumbs = None
        if args.thumbnails:
            tiles = [make_thumbnail(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)) for _ in range(64)]
            thumbs = [tiles[i % 64] for i in range(args.n)]
        src = work / "src" / "eyes.vault"
        build(src, x, prompts, metas, thumbs, encoder=EncoderFingerprint("bench", args.dim, "w"), category="eyes",
              index="Flat")
        files = [f for f in src.iterdir() if f.is_file()]
        size = sum(f.stat().st_size for f in files)
        print(f"vault: {args.n:,} entries, {args.dim}-d, {size / 1e6:.0f} MB in {len(files)} files")
        rows = []
        for r in range(3):
            t = time.perf_counter()
            dst = work / f"copy{r}"
            dst.mkdir()
            for f in files:
                shutil.copyfile(f, dst / f.name)
            copy_s = time.perf_counter() - t
            t = time.perf_counter()
            pack(src, work / f"eyes{r}.lvault")
            pack_s = time.perf_counter() - t
            t = time.perf_counter()
            install(work / f"eyes{r}.lvault", work / f"vaults{r}")
            install_s = time.perf_counter() - t
            rows.append((copy_s, pack_s, install_s))
            shutil.rmtree(dst)
            shutil.rmtree(work / f"vaults{r}")
            (work / f"eyes{r}.lvault").unlink()
        copy_s, pack_s, install_s = (float(np.median(c)) for c in zip(*rows))
        mb = size / 1e6
        print(f"copy    {mb / copy_s:7.0f} MB/s (reference)")
        print(f"pack    {mb / pack_s:7.0f} MB/s  ratio to copy {copy_s / pack_s:.2f}")
        print(f"install {mb / install_s:7.0f} MB/s  ratio to copy {copy_s / install_s:.2f}  (every check included)")


if __name__ == "__main__":
    main()
