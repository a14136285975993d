"""An example A/B report from synthetic outputs, and its screenshot for the README (docs/ab/report.png).

`python scripts/ab_report_example.py [--out docs/ab] [--chromium /usr/bin/chromium]`: four generated eye
crops as references, four arms × three seeds, each output the reference with a hue shift of a known
size per arm (no-vault 40°, vault-0.1 39.5°, vault-0.3 8°, vault-0.6 6°, each ± 2°) plus pixel noise, and
probe CLIP similarities drawn around a known mean per arm (0.78, 0.781, 0.80, 0.785; sd 0.01). The report is scored exactly as a real run's
(run_ab on finished outputs, no server); only the pictures and the CLIP numbers are made up.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ARMS = {"no-vault": (40.0, 0.78), "vault-0.1": (39.5, 0.781), "vault-0.3": (8.0, 0.80), "vault-0.6": (6.0, 0.785)}  # hue
# shift (degrees) and CLIP similarity mean of each arm's outputs


def _shift_hue(img: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    hsv = np.asarray(Image.fromarray(img).convert("HSV")).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + degrees / 360 * 255) % 255
    out = np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")).astype(np.float32)
    return np.clip(out + rng.normal(0, 6, out.shape), 0, 255).astype(np.uint8)


def make_run(work: Path) -> Path:
    """A config, its references and every output on disk, as a finished run leaves them; returns the config."""
    from luna_vault.ab.arms import AbTemplate
    from luna_vault.ab.config import load_config
    from luna_vault.cli.demo import make_dataset
    from luna_vault.generation.dispatch import LEDGER, Ledger

    crops, _, _ = make_dataset(4, seed=7)
    refs = []
    for i, crop in enumerate(crops):
        crop.convert("RGB").save(work / f"eye{i}.png")
        refs.append({"image": f"eye{i}.png", "crop": True})
    (work / "detailer.json").write_text((REPO / "workflows" / "api" / "luna_crop_detailer_vault.json").read_text())
    arms = {"no-vault": {"vault": "off"}, **{a: {"set": {"LunaVaultQuery.strength": float(a[6:])}} for a in ARMS if a != "no-vault"}}
    (work / "ab.yaml").write_text(yaml.safe_dump({"name": "eyes-strength (synthetic)", "template": "detailer.json",
                                                  "servers": ["127.0.0.1:1"], "seeds": [1, 2, 3], "references": refs,
                                                  "arms": arms}))
    cfg = load_config(work / "ab.yaml")
    tpl = AbTemplate(cfg, cfg.template_graph())
    out = work / "run"
    out.mkdir()
    ledger = Ledger(out / LEDGER)
    jobs = tpl.jobs()
    ledger.sync(jobs)
    rng = np.random.default_rng(0)
    for j in jobs:
        ledger.set(j.job_id, "done")
        shift, clip = ARMS[j.arm]
        ref = np.asarray(Image.open(work / f"{j.reference}.png").convert("RGB"))
        (out / j.arm).mkdir(exist_ok=True)
        Image.fromarray(_shift_hue(ref, shift + rng.normal(0, 2), rng)).save(out / j.arm / f"{j.job_id}_0.png")
        (out / j.arm / f"{j.job_id}_0.json").write_text(json.dumps(
            {"comfy_seconds": 4.2, "probe": {"clip_similarity": clip + float(rng.normal(0, 0.01)), "encoder": "demo"}}))
    ledger.close()
    return work / "ab.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "ab"))
    ap.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser") or "chromium")
    args = ap.parse_args()
    from luna_vault.ab.config import load_config
    from luna_vault.ab.run import run_ab

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = run_ab(load_config(make_run(work)), work / "run", progress=False)
        page = work / "run" / "ab_report.html"
        for line in json.loads((work / "run" / "ab_summary.json").read_text())["meta"]["verdicts"].values():
            print(line)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run([args.chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--screenshot={out / 'report.png'}", "--window-size=1400,1500", page.as_uri()],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        shot = Image.open(out / "report.png").convert("RGB")  # 256 colours: a third of the bytes, no visible loss
        shot.quantize(256, Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out / "report.png", optimize=True)
        print(f"{len(run.rows)} outputs scored; {out / 'report.png'}")


if __name__ == "__main__":
    sys.exit(main())
