"""Extraction benchmark: pipeline throughput vs the bare encoder forward on the same batches, same run.

Run by hand: `python bench/bench_extract.py [--n 1000] [--model ViT-B-32] [--device cpu|cuda] [--workers 1]`.
The image encoder is an open_clip architecture with random weights, saved to a file and loaded
through the real loader (no download). The reference is `encoder.encode` on batches decoded and
resized in advance; the pipeline reads PNG files, hashes, decodes, resizes, makes thumbnails in
DataLoader workers, encodes, and commits to a vault. Ratio = pipeline images/s / reference images/s.
Text: the share of unique prompts (de-duplication) and prompts/s through ComfyUI's CLIP-L (random
weights, ../shared/comfyui-tools) when ComfyUI is available.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def make_dataset(root: Path, n: int, size: int, per_prompt: int = 4) -> list[str]:
    """n distinct noisy PNGs with .txt prompts (4 images per prompt), written by a thread pool (Pillow
    releases the GIL while encoding); each image's pixels come from its own seed, so the set is fixed."""
    (root / "eyes").mkdir(parents=True)
    prompts = [f"close-up of an eye, variant {i // per_prompt}" for i in range(n)]

    def write(i: int) -> None:
        rng = np.random.default_rng((0, i))
        img = np.clip(rng.uniform(0, 255, 3) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "eyes" / f"{i:06d}.png", compress_level=1)
        (root / "eyes" / f"{i:06d}.txt").write_text(prompts[i])

    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(write, range(n)))
    return prompts


def open_clip_encoder(model: str, device: str, folder: Path):
    import open_clip
    from safetensors.torch import save_file

    from luna_vault.extraction.open_clip_encoder import OpenClipImageEncoder

    torch.manual_seed(0)
    net = open_clip.create_model(model)
    path = folder / f"{model}-random.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    del net
    return OpenClipImageEncoder(model, path, device=device)


def quarter_rates(marks: list[tuple[float, int]]) -> str:
    """Images/s over each quarter of a run's batches, from (time, images done) marks: a pipeline that
    slows down as it goes shows it here (counted from the first batch: the workers' start-up is not in them)."""
    if len(marks) < 5:
        return "too few batches"
    cuts = [round(i * (len(marks) - 1) / 4) for i in range(5)]
    rates = [(marks[b][1] - marks[a][1]) / max(marks[b][0] - marks[a][0], 1e-9) for a, b in zip(cuts, cuts[1:])]
    return " / ".join(f"{r:.0f}" for r in rates)


def bare_rate_while_decoding(enc, batches: list[torch.Tensor], n: int, root: Path, batch: int, workers: int) -> float:
    """The bare forward while the pipeline's decode workers read the same folder in the background (their
    output thrown away): how much the host's load alone slows the encoder, apart from the pipeline's own path."""
    import threading

    from luna_vault.extraction.pipeline import DecodeDataset, Extractor, decode_loader

    items, _ = Extractor(enc, vault=root.parent / "unused.vault").plan(root)
    dataset = DecodeDataset(items, enc.input_size, set(), thumbnails=True)
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            for _ in decode_loader(dataset, batch, workers):
                if stop.is_set():
                    break

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    time.sleep(3.0)  # the workers are up and busy
    t = time.perf_counter()
    for b in batches:
        enc.encode(b)
    rate = n / (time.perf_counter() - t)
    stop.set()
    thread.join()
    return rate


def text_bench(prompts: list[str]) -> dict[str, float] | None:
    comfy = SHARED / "comfyui"
    if not (comfy / "comfy" / "sd.py").is_file():
        return None
    sys.path.insert(0, str(SHARED / "comfyui-tools"))  # run with PYTHONPATH=../shared/comfyui-tools (torchvision)
    try:
        from make_clip_text import text_shapes
        from make_clip_vision import build_sd, save

        from luna_vault.extraction.comfy_loader import load_text_encoder
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip_l.pt"
        save(build_sd(text_shapes("clip_l"), "pt", seed=0), str(path), "pt")
        enc = load_text_encoder(clip_files=[str(path)], clip_type="stable_diffusion", comfyui=comfy)
        unique = list(dict.fromkeys(prompts))
        enc.encode(unique[0])
        t = time.perf_counter()
        sample = unique[:64]
        for p in sample:
            enc.encode(p)
        rate = len(sample) / (time.perf_counter() - t)
    return {"prompts": len(prompts), "unique_prompts": len(unique), "unique_share": len(unique) / len(prompts),
            "clip_l_prompts_per_s": rate}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", default="1", help="decode worker processes; a comma list (12,6) compares counts in one run")
    ap.add_argument("--size", type=int, default=256, help="side of the generated PNGs")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="bench/out/extract.json")
    ap.add_argument("--diagnose", action="store_true",
                    help="also time the bare forward while the decode workers run (host load, no pipeline)")
    args = ap.parse_args()

    from luna_vault.extraction.encoders import resize_crop
    from luna_vault.extraction.pipeline import Extractor

    work = Path(tempfile.mkdtemp(prefix="luna-bench-extract-"))
    os.environ["LUNA_VAULT_CACHE"] = str(work / "cache")
    try:
        t = time.perf_counter()
        prompts = make_dataset(work / "data", args.n, args.size)
        print(f"dataset: {args.n} PNG {args.size}px in {time.perf_counter() - t:.1f} s", flush=True)
        enc = open_clip_encoder(args.model, args.device, work)
        print(f"encoder {enc.fingerprint.name}, {enc.fingerprint.dim}-d")  # the probe forward, outside both timings
        files = sorted((work / "data" / "eyes").glob("*.png"))
        def load(f: Path) -> torch.Tensor:
            return resize_crop(torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), np.float32) / 255)[None],
                               enc.input_size)[0]

        with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
            pixels = list(pool.map(load, files))
        batches = [torch.stack(pixels[a : a + args.batch]) for a in range(0, len(pixels), args.batch)]
        enc.encode(batches[0])  # warm-up
        worker_counts = [int(w) for w in str(args.workers).split(",")]
        rounds: dict[int, list[tuple[float, float, float, int]]] = {w: [] for w in worker_counts}
        for r in range(args.rounds):  # interleaved, so machine noise hits both sides alike
            for workers in worker_counts:
                t = time.perf_counter()
                for b in batches:
                    enc.encode(b)
                ref_rate = args.n / (time.perf_counter() - t)
                ex = Extractor(enc, vault=work / f"bench{r}-w{workers}.vault", batch_size=args.batch, workers=workers,
                               thumbnails=True)
                marks: list[tuple[float, int]] = []
                report = ex.run(work / "data", progress=lambda done, _, marks=marks: marks.append((time.perf_counter(), done)))
                pipe_rate = report.images / report.seconds
                rounds[workers].append((ref_rate, pipe_rate, report.encode_seconds / report.seconds, report.total_added))
                print(f"round {r + 1}, {workers} workers: bare encoder {ref_rate:.1f} img/s, pipeline {pipe_rate:.1f} img/s, "
                      f"ratio {pipe_rate / ref_rate:.2f} (of {report.seconds:.1f} s: encode {report.encode_seconds:.1f}, "
                      f"waiting for workers {report.wait_seconds:.1f}, vault commits {report.write_seconds:.1f}; "
                      f"img/s by quarter of the run: {quarter_rates(marks)})", flush=True)
        rows = []
        for workers, rs in rounds.items():
            ratios = [p / r for r, p, _, _ in rs]
            best = int(np.argsort(ratios)[len(ratios) // 2])
            ref_rate, pipe_rate, busy, added = rs[best]
            rows.append({
                "model": args.model, "device": args.device, "images": args.n, "batch": args.batch, "workers": workers,
                "torch_threads": torch.get_num_threads(), "reference_img_per_s": ref_rate, "pipeline_img_per_s": pipe_rate,
                "ratio": float(np.median(ratios)), "ratios": ratios, "encode_share_of_pipeline": busy,
                "added": added, "images_per_hour": pipe_rate * 3600,
            })
            print(f"{workers} workers: median ratio {rows[-1]['ratio']:.2f} (target >= 0.9) over {args.rounds} rounds; "
                  f"pipeline {pipe_rate:.1f} img/s = {pipe_rate * 3600:,.0f} img/hour ({args.model}, {args.device})", flush=True)
        row = rows[0]
        row["variants"] = rows[1:]
        if args.diagnose:
            workers = worker_counts[0]
            loaded = bare_rate_while_decoding(enc, batches, args.n, work / "data", args.batch, workers)
            row["reference_while_decoding_img_per_s"] = loaded
            ref_rate, pipe_rate = row["reference_img_per_s"], row["pipeline_img_per_s"]
            print(f"diagnosis: bare encoder while {workers} workers decode: {loaded:.1f} img/s "
                  f"({loaded / ref_rate:.2f} of the quiet bare encoder, pipeline {pipe_rate / ref_rate:.2f})", flush=True)
        text = text_bench(prompts)
        if text:
            row["text"] = text
            print(f"text: {text['unique_prompts']} unique of {text['prompts']} prompts "
                  f"({text['unique_share']:.0%} encoded), CLIP-L {text['clip_l_prompts_per_s']:.1f} prompts/s", flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(row, indent=1))
        print(json.dumps(row, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
