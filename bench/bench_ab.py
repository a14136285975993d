"""What `luna-vault ab` adds to the time ComfyUI spends sampling, against the same graphs queued bare.

`PYTHONPATH=../shared/comfyui-tools python bench/bench_ab.py [--steps 4] [--refs 2] [--seeds 2] [--size 64]`
starts a headless ComfyUI (../shared/comfyui) with random-initialised SD1.5 and CLIP-vision ViT-L models
(tests/random_models.py), builds a vault with the build-from-generation workflow, then runs the crop
detailer in 2 arms x refs x seeds twice, each on a warm server:
  1. bare: the graphs `ab` would queue without its scoring node, posted to /prompt (2 queued at a time);
  2. `ab`: run_ab from scratch (upload, dispatch with the Luna A/B Probe in each graph, colour/SSIM
     scoring here, report).
It prints both wall times, ComfyUI's own execution time (from /history), and the harness's parts.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from comfy_server import ComfyServer, save_random_models  # noqa: E402
from luna_vault.ab.arms import AbTemplate  # noqa: E402
from luna_vault.ab.config import load_config  # noqa: E402
from luna_vault.ab.run import run_ab  # noqa: E402
from luna_vault.generation.client import execution_seconds  # noqa: E402
from random_models import save_sd15_checkpoint  # noqa: E402


def _small(graph: dict, steps: int, size: int) -> dict:
    for n in graph.values():
        ct, i = n["class_type"], n["inputs"]
        if ct == "CheckpointLoaderSimple":
            i["ckpt_name"] = "sd15.ckpt"
        elif ct == "CLIPVisionLoader":
            i["clip_name"] = "vit-l-random.pt"
        elif ct == "EmptyLatentImage":
            i.update(width=size, height=size, batch_size=6)
        elif ct == "ImageScale" and not isinstance(i["width"], list):
            i.update(width=size, height=size)
        elif ct == "KSampler":
            i["steps"] = steps
    return graph


def _bare(server: ComfyServer, graphs: list[dict], depth: int = 2) -> tuple[float, float]:
    """Post every graph keeping `depth` queued; (wall seconds, ComfyUI execution seconds)."""
    t0, pending, executed, todo = time.perf_counter(), [], 0.0, list(graphs)
    while todo or pending:
        while todo and len(pending) < depth:
            code, body = server.post("/prompt", {"prompt": todo.pop(0), "client_id": uuid.uuid4().hex})
            assert code == 200, body
            pending.append(body["prompt_id"])
        for pid in list(pending):
            entry = server.get(f"/history/{pid}").get(pid)
            if entry and entry.get("status", {}).get("completed"):
                executed += execution_seconds(entry) or 0.0
                pending.remove(pid)
        time.sleep(0.2)
    return time.perf_counter() - t0, executed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--refs", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--size", type=int, default=64, help="sampling size in pixels (the crop is upscaled to it)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="luna-bench-ab-") as tmp:
        work = Path(tmp)
        server = ComfyServer(work / "server")
        server.prepare()
        save_random_models(server.base)
        save_sd15_checkpoint(server.base / "models" / "checkpoints" / "sd15.ckpt")
        server.start()
        try:
            build = _small(json.loads((REPO / "workflows/api/luna_build_vault_from_generation.json").read_text()), 1, 64)
            assert server.run(build, timeout=900)["status"]["status_str"] == "success"
            (work / "detailer.json").write_text(json.dumps(_small(json.loads(
                (REPO / "workflows/api/luna_crop_detailer_vault.json").read_text()), args.steps, args.size)))
            refs = []
            for i in range(args.refs):
                rng = np.random.default_rng(i)
                arr = np.clip(rng.uniform(0.2, 0.8, 3) + rng.normal(0, 0.05, (96, 96, 3)), 0, 1)
                Image.fromarray((arr * 255).astype(np.uint8)).save(work / f"ref{i}.png")
                refs.append({"image": f"ref{i}.png", "region": [16, 16, 48, 48]})
            cfg_path = work / "ab.yaml"
            cfg_path.write_text(json.dumps({
                "template": "detailer.json", "servers": [server.url], "seeds": list(range(1, args.seeds + 1)),
                "vault": str(server.base / "models/vaults/eyes.vault"), "references": refs,
                "arms": {"no-vault": {"vault": False}, "vault-0.3": {"set": {"LunaVaultQuery.strength": 0.3}}}}))
            config = load_config(cfg_path)
            template = AbTemplate(config, config.template_graph())
            graphs = [template.fill(j) for j in template.jobs()]
            for g in graphs:  # bare: the detail pass alone, without the scoring node ab adds
                del g["luna_ab_probe"]
            for r in config.references:  # the bare run needs the references in the server's input folder
                dest = server.base / "input" / template.uploads[r.name]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(r.image.read_bytes())
            _bare(server, graphs[:2])  # warm: models loaded, caches filled
            for g in graphs:  # new seeds so neither run hits ComfyUI's cache of the other's results
                for n in g.values():
                    if "seed" in n["inputs"]:
                        n["inputs"]["seed"] += 1000
            wall_bare, exec_bare = _bare(server, graphs)
            run = run_ab(config, work / "run", progress=False)
            t = run.timings
            n = len(graphs)
            print(json.dumps({"outputs": n, "steps": args.steps, "size": args.size,
                              "bare": {"wall_s": round(wall_bare, 2), "comfy_s": round(exec_bare, 2)},
                              "ab": {k: round(v, 2) for k, v in t.items()}}, indent=1))
            print(f"bare: {wall_bare:.1f} s wall for {n} outputs, ComfyUI executing {exec_bare:.1f} s")
            print(f"ab:   {t['total_s']:.1f} s total = setup {t['setup_s']:.1f} s (check the config, template and vault) "
                  f"+ dispatch {t['dispatch_s']:.1f} s (ComfyUI executing {t['comfy_this_run_s']:.1f} s; "
                  f"scoring {t['scoring_s']:.1f} s of it ran alongside) + after {t['scoring_after_s']:.1f} s + report "
                  f"{t.get('report_s', 0):.1f} s")
            print(f"dispatch / bare wall: {t['dispatch_s'] / wall_bare:.3f}; whole ab / bare wall: {t['total_s'] / wall_bare:.3f}")
            print(f"per output: bare {wall_bare / n:.2f} s, ab dispatch {t['dispatch_s'] / n:.2f} s, "
                  f"fixed cost (setup + report) {t['setup_s'] + t.get('report_s', 0):.1f} s per run")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
