"""`luna-vault` command line: a map from verbs to core functions (heavy imports happen in the verbs)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="luna-vault", description="Build and query Luna vaults (image embedding -> prompt).")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the library does")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("--json", action="store_true", help="print machine-readable JSON")
        return sp

    def entry_files(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--embeddings", required=True, help="safetensors file with an 'embeddings' [N, D] tensor")
        sp.add_argument("--entries", required=True, help="JSONL file, one object per embedding: prompt + metadata")
        sp.add_argument("--encoder-name", help="image encoder name (default: the file's encoder_name metadata)")
        sp.add_argument("--encoder-hash", help="image encoder weights hash (default: the file's encoder_hash metadata)")
        sp.add_argument("--thumbnails", action="store_true", help="store previews from each entry's 'thumbnail' image path")
        sp.add_argument("--no-index", action="store_true", help="do not build the search index now (first query will)")

    sp = verb("build", "create a vault from embeddings + entries files")
    sp.add_argument("vault", help="vault folder to create, e.g. models/vaults/eyes.vault")
    entry_files(sp)
    sp.add_argument("--category", required=True, help="what the vault holds, e.g. eyes")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing vault")
    sp.add_argument("--index", default="auto", help="'auto' (by size), 'Flat' (exact) or a FAISS factory string")

    sp = verb("append", "add entries to a vault (existing data is never rewritten)")
    sp.add_argument("vault")
    entry_files(sp)

    sp = verb("query", "nearest entries for embeddings; several vaults = category auto-detect")
    sp.add_argument("vaults", nargs="+", help="one vault, or several to auto-detect the category")
    sp.add_argument("--embeddings", required=True, help="safetensors file with an 'embeddings' [N, D] tensor")
    sp.add_argument("--rows", help="which rows to query, e.g. 0,3,10-12 (default: all)")
    sp.add_argument("-k", "--k", type=int, default=5, help="matches per query (default 5)")
    sp.add_argument("--filter", help="metadata filter, e.g. 'checkpoint=ponyXL, quality>=0.7'")
    sp.add_argument("--encoder-hash", help="refuse vaults built with another encoder")

    sp = verb("info", "what a vault holds")
    sp.add_argument("vault")

    sp = verb("verify", "check checksums, dims and counts (exit code 1 on a problem)")
    sp.add_argument("vault")

    sp = verb("merge", "merge vaults of the same encoder into a new one")
    sp.add_argument("out", help="the new vault")
    sp.add_argument("sources", nargs="+", help="vaults to merge")
    sp.add_argument("--category", help="category of the result (default: the first source's)")
    sp.add_argument("--drop-baked", action="store_true", help="merge vaults with different baked conditioning as text-mode")
    sp.add_argument("--overwrite", action="store_true")
    sp.add_argument("--no-index", action="store_true")

    sp = verb("delete", "delete entries matching a metadata filter")
    sp.add_argument("vault")
    sp.add_argument("--filter", required=True, help="e.g. 'quality<0.3' or 'checkpoint=badModel'")
    sp.add_argument("--yes", action="store_true", help="confirm when the filter matches every entry")

    sp = verb("upgrade", "rewrite a vault of an older format version in the current one (entry ids kept)")
    sp.add_argument("vault")

    sp = verb("rebuild", "rebuild the search index (optionally compacting deleted entries away first)")
    sp.add_argument("vault")
    sp.add_argument("--index", help="'auto', 'Flat' or a FAISS factory string (saved in the vault)")
    sp.add_argument("--compact", dest="compact_", action="store_true", help="rewrite without deleted entries (ids change)")
    sp.add_argument("--recall", type=float, default=0.97, help="recall@5 target for tuning (default 0.97)")

    sp = verb("pack", "write a vault as one shareable package file (vault files + a card with checksums)")
    sp.add_argument("vault")
    sp.add_argument("-o", "--out", required=True, help="package file to write, e.g. eyes.lvault")
    sp.add_argument("--author", default="", help="who made the vault (on its card)")
    sp.add_argument("--licence", default="", help="the licence you share it under, e.g. CC-BY-4.0")
    sp.add_argument("--description", default="", help="one paragraph for the card")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing package file")

    sp = verb("install", "check a vault package in full, then install its vault (nothing is written if a check fails)")
    sp.add_argument("package", help="a .lvault file")
    sp.add_argument("--to", default="models/vaults", help="folder of vaults (default: models/vaults)")
    sp.add_argument("--name", help="install under this name (default: the name on its card)")
    sp.add_argument("--overwrite", action="store_true", help="replace a vault of the same name")
    sp.add_argument("--card-only", action="store_true", help="only check the package's structure and show its card")

    sp = verb("card", "write a vault's card: card.json, README.md and a contact sheet")
    sp.add_argument("vault")
    sp.add_argument("-o", "--out", help="folder for the card files (default: the vault folder)")
    sp.add_argument("--author", default="")
    sp.add_argument("--licence", default="")
    sp.add_argument("--description", default="")

    sp = verb("extract", "embed a folder of generated images into a vault (resumable, shardable)")
    sp.add_argument("folder", help="images (png/jpg/webp) with .txt/.json sidecars or prompts embedded by ComfyUI/A1111")
    sp.add_argument("--vault", help="output vault (created if missing, appended otherwise)")
    sp.add_argument("--vault-dir", help="instead of --vault: one vault per category in this folder")
    enc = sp.add_argument_group("image encoder (choose one)")
    enc.add_argument("--clip-vision", help="a ComfyUI clip_vision file, loaded with ComfyUI's own loader")
    enc.add_argument("--open-clip", help="an open_clip model name, e.g. ViT-H-14 (with --weights)")
    enc.add_argument("--weights", help="local weights file for --open-clip")
    enc.add_argument("--open-clip-config", help="extra open_clip model config JSON (for custom architectures)")
    enc.add_argument("--random-encoder", type=int, metavar="DIM", help="random-initialised encoder (tests/demo only)")
    sp.add_argument("--comfyui", help="ComfyUI folder for its loaders (default: $LUNA_COMFYUI or the one this pack is in)")
    sp.add_argument("--bake", action="store_true", help="also store each new prompt's conditioning (needs --checkpoint or --clip)")
    sp.add_argument("--checkpoint", help="checkpoint whose CLIP encodes prompts for --bake")
    sp.add_argument("--clip", action="append", help="standalone CLIP file(s) for --bake (repeat for SDXL: clip_l + clip_g)")
    sp.add_argument("--clip-type", default="sdxl", help="with --clip: stable_diffusion, sdxl, flux or sd3 (default sdxl)")
    sp.add_argument("--category", help="category for items whose sidecar has none (default: their folder name)")
    sp.add_argument("--batch-size", type=int, default=32)
    sp.add_argument("--workers", type=int, help="decoding processes (default: min(4, CPUs))")
    sp.add_argument("--no-thumbnails", action="store_true", help="do not store 96 px previews")
    sp.add_argument("--shard", help="i/n: process shard i of n (default: torchrun's RANK/WORLD_SIZE); merge the parts after")
    sp.add_argument("--commit-every", type=int, default=2048, help="images per atomic vault append (default 2048)")
    sp.add_argument("--pairs", help="also export projector training pairs to this folder")
    sp.add_argument("--report", help="where to list skipped items (default: next to the vault)")
    sp.add_argument("--object-info", help="your ComfyUI's /object_info saved as JSON: reads graphs with your custom nodes")

    sp = verb("read", "what prompt, model and settings an image carries (ComfyUI, A1111, NovelAI, InvokeAI, ...)")
    sp.add_argument("files", nargs="+", help="image files (png, webp, jpg)")
    sp.add_argument("--object-info", help="your ComfyUI's /object_info saved as JSON: reads graphs with your custom nodes")

    sp = verb("train", "train a projector (image embedding -> conditioning) on a baked vault; torchrun for DDP")
    sp.add_argument("vault", help="a vault with baked conditioning (extract --bake)")
    sp.add_argument("--out", required=True, help="projector file to write, e.g. models/luna_projectors/eyes-sdxl.safetensors")
    sp.add_argument("--target", help="sd15, sdxl or flux (default: the vault's baked family)")
    sp.add_argument("--epochs", type=int, default=20)
    sp.add_argument("--batch-size", type=int, default=64)
    sp.add_argument("--lr", type=float, default=1e-3)
    sp.add_argument("--weight-decay", type=float, default=0.01)
    sp.add_argument("--dropout", type=float, default=0.1)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--clip-l-weight", type=float, default=2.0, help="loss weight of the CLIP-L part (others 1)")
    sp.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint is there")
    sp.add_argument("--workers", type=int, default=0, help="data loading processes")

    sp = verb("eval", "compare a projector with vault k-NN, ridge and the mean on the held-out prompts")
    sp.add_argument("vault", help="the baked vault the projector was trained on")
    sp.add_argument("--projector", help="projector file (without it: only the baselines)")
    sp.add_argument("--report", help="folder for report.md / report.json / report.png")
    sp.add_argument("--max-val", type=int, default=2000, help="held-out queries at most")

    sp = verb("plan", "show what a generation campaign will make: jobs per category and checkpoint, ETA")
    sp.add_argument("campaign", help="campaign YAML file")
    sp.add_argument("--workflow", help="check this API-format template against the campaign")
    sp.add_argument("--rate", type=float, help="images per second, for the ETA (default: measured in --out)")
    sp.add_argument("--out", help="an output folder where generate has run (measured rate, jobs done)")
    sp.add_argument("--show", type=int, default=3, help="sample prompts per category")

    sp = verb("generate", "generate a campaign's images + sidecars on one or many ComfyUI servers (resumable)")
    sp.add_argument("campaign", help="campaign YAML file")
    sp.add_argument("--workflow", required=True, help="API-format workflow with {{prompt}}, {{seed}}, ... placeholders")
    sp.add_argument("--server", action="append", default=[], help="host:port of a ComfyUI server (repeat for many)")
    sp.add_argument("--out", required=True, help="output folder (one subfolder per category; the job ledger)")
    sp.add_argument("--depth", type=int, default=2, help="prompts kept queued per server")
    sp.add_argument("--retries", type=int, default=2, help="retries of a failed prompt before it is reported")
    sp.add_argument("--retry-failed", action="store_true", help="try the jobs that failed in earlier runs again")
    sp.add_argument("--limit", type=int, help="only the first N jobs (a trial run)")

    sp = verb("ab", "A/B-test the detail pass: arms x references x seeds on ComfyUI, scored, with an HTML report")
    sp.add_argument("config", help="A/B config YAML (template, references with regions, seeds, arms)")
    sp.add_argument("--out", help="output folder (default: ab_runs/NAME beside the config); the run resumes there")
    sp.add_argument("--server", action="append", default=[], help="host:port of a ComfyUI server (replaces the config's)")
    sp.add_argument("--depth", type=int, default=2, help="prompts kept queued per server")
    sp.add_argument("--retries", type=int, default=1, help="retries of a failed prompt before it is reported")
    sp.add_argument("--retry-failed", action="store_true", help="try the outputs that failed in earlier runs again")
    sp.add_argument("--give-up-after", type=float, default=120.0, help="seconds with every server down before stopping")
    sp.add_argument("--write-defaults", action="store_true",
                    help="store the best vault arm's strength, k, temperature and blend mode in the vault's manifest")

    sp = verb("demo", "build and query a vault from generated crops with a random encoder (no downloads)")
    sp.add_argument("--n", type=int, default=2000, help="generated entries (default 2000)")
    sp.add_argument("--queries", type=int, default=200, help="unseen query crops (default 200)")
    sp.add_argument("-k", "--k", type=int, default=5)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", help="keep the demo vault in this folder")
    return p


def _handler(verb: str) -> Callable[[argparse.Namespace], int]:
    """The function that runs a verb; it reads the parsed flags (declared once, in _parser)."""
    if verb == "demo":
        from .demo import run_demo

        return run_demo
    if verb == "extract":
        from .extract_cmd import cmd_extract

        return cmd_extract
    if verb == "read":
        from .read_cmd import cmd_read

        return cmd_read
    if verb in ("plan", "generate"):
        from . import generate_cmds

        return getattr(generate_cmds, f"cmd_{verb}")
    if verb == "ab":
        from .ab_cmd import cmd_ab

        return cmd_ab
    if verb in ("train", "eval"):
        from . import projector_cmds

        return getattr(projector_cmds, f"cmd_{verb}")
    from . import vault_cmds

    return getattr(vault_cmds, f"cmd_{verb}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from ..core.errors import VaultError
    from .common import UsageError

    try:
        return _handler(args.verb)(args)
    except (VaultError, UsageError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (OSError, MemoryError, RecursionError, RuntimeError, TypeError, KeyError, IndexError) as e:
        # what no input should cause: still one line (exit 2, "cannot do that"), the details with -v
        if args.verbose:
            raise
        print(f"error: {type(e).__name__}: {e} (run with -v for the details)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
