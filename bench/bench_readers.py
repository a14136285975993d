"""Prompt readers over a folder of real images: counts per outcome and per cause, and the time they take.

Run by hand: `python bench/bench_readers.py DIR [--list] [--expect expected.json] [--json out.json]`.
Every image under DIR (png, jpg, webp) goes through the reader `extract` and the Builder use
(`extraction.image_meta.read_prompt`). Printed: images with a prompt per generator, images without
one per cause, and with --list one line per image (what was read, or why not). With --expect (a JSON
object: relative path -> the expected positive prompt or {"sha1": of it}, or null for "no prompt in
this image"), each reading is also scored: exact, wrong (another text), missed (none read where one
was expected). bench/data/comfyui_examples_expected.json holds the reviewed expectations for
github.com/comfyanonymous/ComfyUI_examples at commit f9431bb (117 images with their files).
Develop against public corpora (e.g. github.com/comfyanonymous/ComfyUI_examples) without committing them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

from luna_vault.extraction.image_meta import read_prompt
from luna_vault.extraction.readers import IMAGE_EXTENSIONS


def norm(text: str | None) -> str:
    return " ".join((text or "").split())


def digest(text: str | None) -> str:
    return hashlib.sha1(norm(text).encode("utf-8")).hexdigest()


def matches(want: object, got: str | None) -> bool:
    """`want` is the expected text, or {"sha1": ...} of its whitespace-normalised form (corpora we do not copy)."""
    if isinstance(want, dict):
        return got is not None and digest(got) == want.get("sha1")
    return got is not None and norm(got) == norm(str(want))


def load_expect(path: Path) -> dict:
    """An --expect file: path -> expectation, or a corpus manifest (bench/corpora/<name>.json) that lists them."""
    data = json.loads(path.read_text())
    if isinstance(data, dict) and isinstance(data.get("files"), list):
        return {f["path"]: f["expect"] for f in data["files"]}
    return data


def verdict(want: object, got: str | None) -> str:
    if want is None:
        return "no prompt, as expected" if not got else "false read"
    return "exact" if matches(want, got) else "missed" if not got else "wrong"


def cause(reason: str | None) -> str:
    """A skip reason with node ids, counts and sizes masked, so that reasons of one kind count together."""
    text = re.sub(r"#[\w:]+", "#…", reason or "?")
    text = re.sub(r"\b\d+x\d+\b", "WxH", text)
    return re.sub(r"\b\d+\b", "N", text)[:160]


def run(root: Path, expect: dict | None, listing: bool = False) -> tuple[list[dict], Counter, Counter, Counter, float]:
    """Read every image under `root`: the rows, prompts per generator, skip causes, verdicts, and the seconds taken."""
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    found, causes, score = Counter(), Counter(), Counter()
    rows = []
    t0 = time.perf_counter()
    for path in files:
        rel = str(path.relative_to(root))
        r = read_prompt(path)
        if r.prompt:
            found[r.generator] += 1
        else:
            causes[cause(r.reason)] += 1
        row = {"file": rel, **r.to_json()}
        if expect is not None and rel in expect:
            row["verdict"] = verdict(expect[rel], r.prompt)
            score[row["verdict"]] += 1
        rows.append(row)
        if listing:
            what = f"[{r.generator}] {norm(r.prompt)[:90]}" if r.prompt else f"(none) {r.reason}"
            print(f"{rel:62s} {what}" + (f"  <- {row['verdict']}" if "verdict" in row else ""))
    return rows, found, causes, score, time.perf_counter() - t0


def table(corpora: Path, manifests: Path) -> None:
    """One markdown row per corpus manifest whose images are under `corpora`, then the skip causes over all."""
    print("| corpus | images | with prompt | read right | wrong | missed | without prompt | false reads | ms/image |")
    print("|---|---|---|---|---|---|---|---|---|")
    total, all_causes = Counter(), Counter()
    for manifest in sorted(manifests.glob("*.json")):
        folder = corpora / manifest.stem
        if not folder.is_dir():
            continue
        expect = load_expect(manifest)
        rows, _found, causes, score, seconds = run(folder, expect)
        carrying = sum(1 for r in rows if expect.get(r["file"]) is not None)
        counts = {"images": len(rows), "with": carrying, "right": score["exact"], "wrong": score["wrong"],
                  "missed": score["missed"], "without": len(rows) - carrying, "false": score["false read"]}
        total.update(counts)
        all_causes.update(causes)
        print(f"| {manifest.stem} | {counts['images']} | {carrying} | {score['exact']} ({score['exact'] / max(carrying, 1):.0%}) | "
              f"{score['wrong']} | {score['missed']} | {counts['without']} | {score['false read']} | "
              f"{seconds / max(len(rows), 1) * 1e3:.0f} |")
    print(f"| **all** | {total['images']} | {total['with']} | {total['right']} ({total['right'] / max(total['with'], 1):.1%}) | "
          f"{total['wrong']} | {total['missed']} | {total['without']} | {total['false']} | |")
    print("\nimages without a prompt, by cause:")
    for text, n in all_causes.most_common():
        print(f"  {n:4d}  {text}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="a folder of images, or with --corpora the folder fetch.py filled")
    ap.add_argument("--list", action="store_true", help="one line per image")
    ap.add_argument("--expect", help="JSON: relative path -> expected prompt, or {\"sha1\": ...} of it (null: none expected); "
                    "or a corpus manifest bench/corpora/<name>.json")
    ap.add_argument("--corpora", nargs="?", const=str(Path(__file__).with_name("corpora")), metavar="MANIFESTS",
                    help="score every corpus of bench/corpora (or MANIFESTS) found under the folder: a markdown table")
    ap.add_argument("--write-expect", help="write the readings as an --expect file (sha1 only), to review and keep")
    ap.add_argument("--json", help="write every reading here")
    args = ap.parse_args()
    root = Path(args.folder)
    if args.corpora:
        table(root, Path(args.corpora))
        return
    expect = load_expect(Path(args.expect)) if args.expect else None
    rows, found, causes, score, seconds = run(root, expect, args.list)
    if not rows:
        sys.exit(f"no images under {root}")
    print(f"\n{len(rows)} images in {seconds:.2f} s ({seconds / len(rows) * 1e3:.1f} ms each)")
    print(f"prompt read: {sum(found.values())} ({', '.join(f'{n} {g}' for g, n in found.most_common())})")
    print(f"no prompt: {sum(causes.values())}")
    for text, n in causes.most_common():
        print(f"  {n:4d}  {text}")
    if expect is not None:
        carrying = sum(1 for r in rows if expect.get(r["file"]) is not None)
        print(f"against {args.expect}: {dict(score)}; exact on {score['exact']} of {carrying} images that carry a prompt "
              f"({score['exact'] / max(carrying, 1):.1%})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    if args.write_expect:
        Path(args.write_expect).write_text(json.dumps(
            {r["file"]: ({"sha1": digest(r["prompt"]), "starts": norm(r["prompt"])[:24]} if r["prompt"] else None)
             for r in rows}, indent=1, ensure_ascii=False, sort_keys=True))


if __name__ == "__main__":
    main()
