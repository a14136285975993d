"""`luna-vault` command line: a map from verbs to core functions.

Start-up stays light: this module and the flags import nothing heavy; each verb checks its paths and
arguments first and imports torch, faiss, PIL or matplotlib only when it needs them, so a wrong path
or flag is answered at once. Every error is one line on stderr (`error: ...`) and exit code 2; `-v`,
anywhere on the line, adds the library's log and, for an unexpected failure, the traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import traceback
from typing import Callable, NoReturn, Sequence

from .common import UsageError, encoder_flags


class _ArgumentError(Exception):
    """argparse found a command line it cannot parse (printed as one line, exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse prints usage + message and exits; we want one line
        raise _ArgumentError(f"{message} (see `{self.prog} --help`)")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)  # flags every verb takes, anywhere on the line
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log what the library does; show the traceback of an unexpected failure")

    p = _Parser(prog="luna-vault", description="Build and query Luna vaults (image embedding -> prompt).")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the library does (also after the verb)")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common])

    def comfyui(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--comfyui", metavar="DIR", help="the ComfyUI whose vault folders plain vault names refer to, and "
                        "whose loaders --clip-vision uses (default: the ComfyUI this pack is installed in, else $LUNA_COMFYUI)")

    vault_help = "a vault folder (path), or a plain name (eyes) for that vault in ComfyUI's models/vaults"

    def entry_files(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--embeddings", required=True, help="safetensors file with an 'embeddings' [N, D] tensor")
        sp.add_argument("--entries", required=True, help="JSONL file, one object per embedding: prompt + metadata")
        sp.add_argument("--encoder-name", help="image encoder name (default: the file's encoder_name metadata)")
        sp.add_argument("--encoder-hash", help="image encoder weights hash (default: the file's encoder_hash metadata)")
        sp.add_argument("--thumbnails", action="store_true", help="store previews from each entry's 'thumbnail' image path")
        sp.add_argument("--no-index", action="store_true", help="do not build the search index now (first query will)")
        comfyui(sp)

    sp = verb("build", "create a vault from embeddings + entries files")
    sp.add_argument("vault", help="the vault to create: a path ending in .vault, or a name (eyes) for ComfyUI's models/vaults")
    entry_files(sp)
    sp.add_argument("--category", required=True, help="what the vault holds, e.g. eyes")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing vault")
    sp.add_argument("--index", default="auto", help="'auto' (by size), 'Flat' (exact) or a FAISS factory string")

    sp = verb("append", "add entries to a vault (existing data is never rewritten)")
    sp.add_argument("vault", help=vault_help)
    entry_files(sp)

    sp = verb("query", "what a vault matches for images (--image) or precomputed embeddings; several vaults = "
                       "category auto-detect, as in the Vault Query node")
    sp.add_argument("vaults", nargs="+", metavar="VAULT", help=f"one vault, or several to auto-detect the category ({vault_help})")
    src = sp.add_argument_group("what to look up (choose one)")
    src.add_argument("--image", nargs="+", metavar="FILE", help="image files (png, jpg, webp): each is embedded with the "
                     "image encoder below and looked up")
    src.add_argument("--embeddings", help="safetensors file with an 'embeddings' [N, D] tensor")
    sp.add_argument("--crop", action="append", metavar="X,Y,SIZE",
                    help="with --image: look up the square at X,Y of SIZE pixels (once for every image, or once per image)")
    sp.add_argument("--rows", help="with --embeddings: which rows to query, e.g. 0,3,10-12 (default: all)")
    encoder_flags(sp)
    comfyui(sp)
    sp.add_argument("-k", "--k", type=int, default=5, help="matches per query (default 5)")
    sp.add_argument("--filter", help="metadata filter, e.g. 'checkpoint=ponyXL, quality>=0.7'")
    sp.add_argument("--encoder-hash", help="with --embeddings: refuse vaults built with another encoder")
    sp.add_argument("--sheet", metavar="PNG", help="with --image: write the contact sheet the Query node shows (one row "
                    "per image: the crop, then each match with its similarity)")

    for name, help in (("info", "what a vault holds"),
                       ("verify", "check checksums, dims and counts (exit code 1 on a problem)"),
                       ("upgrade", "rewrite a vault of an older format version in the current one (entry ids kept)")):
        sp = verb(name, help)
        sp.add_argument("vault", help=vault_help)
        comfyui(sp)

    sp = verb("merge", "merge vaults of the same encoder into a new one")
    sp.add_argument("out", help="the new vault: a path ending in .vault, or a name for ComfyUI's models/vaults")
    sp.add_argument("sources", nargs="+", help=f"vaults to merge ({vault_help})")
    sp.add_argument("--category", help="category of the result (default: the first source's)")
    sp.add_argument("--drop-baked", action="store_true", help="merge vaults with different baked conditioning as text-mode")
    sp.add_argument("--overwrite", action="store_true")
    sp.add_argument("--no-index", action="store_true")
    comfyui(sp)

    sp = verb("delete", "delete entries matching a metadata filter")
    sp.add_argument("vault", help=vault_help)
    sp.add_argument("--filter", required=True, help="e.g. 'quality<0.3' or 'checkpoint=badModel'")
    sp.add_argument("--yes", action="store_true", help="confirm when the filter matches every entry")
    comfyui(sp)

    sp = verb("rebuild", "rebuild the search index (optionally compacting deleted entries away first)")
    sp.add_argument("vault", help=vault_help)
    sp.add_argument("--index", help="'auto', 'Flat' or a FAISS factory string (saved in the vault)")
    sp.add_argument("--compact", dest="compact_", action="store_true", help="rewrite without deleted entries (ids change)")
    sp.add_argument("--recall", type=float, help="recall@5 target for tuning (default: the target every build tunes to, "
                    "0.98 on held-out tuning queries)")
    comfyui(sp)

    sp = verb("pack", "write a vault as one shareable package file (vault files + a card with checksums)")
    sp.add_argument("vault", help=vault_help)
    sp.add_argument("-o", "--out", required=True, help="package file to write, e.g. eyes.lvault (its folder must exist)")
    sp.add_argument("--author", default="", help="who made the vault (on its card)")
    sp.add_argument("--licence", default="", help="the licence you share it under, e.g. CC-BY-4.0")
    sp.add_argument("--description", default="", help="one paragraph for the card")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing package file")
    comfyui(sp)

    sp = verb("install", "check a vault package in full, then install its vault (nothing is written if a check fails)")
    sp.add_argument("package", help="a .lvault file")
    sp.add_argument("--to", metavar="DIR", help="folder of vaults (default: ComfyUI's models/vaults, see --comfyui)")
    sp.add_argument("--name", help="install under this name (default: the name on its card)")
    sp.add_argument("--overwrite", action="store_true", help="replace a vault of the same name")
    sp.add_argument("--card-only", action="store_true", help="only check the package's structure and show its card")
    comfyui(sp)

    sp = verb("card", "write a vault's card: card.json, README.md and a contact sheet")
    sp.add_argument("vault", help=vault_help)
    sp.add_argument("-o", "--out", help="folder for the card files (default: the vault folder)")
    sp.add_argument("--author", default="")
    sp.add_argument("--licence", default="")
    sp.add_argument("--description", default="")
    comfyui(sp)

    sp = verb("extract", "embed a folder of generated images into a vault (resumable, shardable)")
    sp.add_argument("folder", help="images (png/jpg/webp) with .txt/.json sidecars or prompts embedded by ComfyUI/A1111")
    sp.add_argument("--vault", help="one output vault (created if missing, appended otherwise): a path ending in .vault, "
                    "or a name for ComfyUI's models/vaults")
    sp.add_argument("--vault-dir", metavar="DIR", help="one vault per category in this folder (the default, in ComfyUI's "
                    "models/vaults, when --vault is not given)")
    encoder_flags(sp)
    comfyui(sp)
    sp.add_argument("--bake", action="store_true", help="also store each new prompt's conditioning (needs --checkpoint or --clip)")
    sp.add_argument("--checkpoint", help="checkpoint whose CLIP encodes prompts for --bake")
    sp.add_argument("--clip", action="append", help="standalone CLIP file(s) for --bake (repeat for SDXL: clip_l + clip_g)")
    sp.add_argument("--clip-type", default="sdxl", help="with --clip: any of ComfyUI's CLIPLoader types (stable_diffusion, sdxl, flux, sd3, qwen_image, lumina2, hidream, wan, chroma, ...; default sdxl)")
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
    comfyui(sp)

    sp = verb("eval", "compare a projector with vault k-NN, ridge and the mean on the held-out prompts")
    sp.add_argument("vault", help="the baked vault the projector was trained on")
    sp.add_argument("--projector", help="projector file (without it: only the baselines)")
    sp.add_argument("--report", help="folder for report.md / report.json / report.png")
    sp.add_argument("--max-val", type=int, default=2000, help="held-out queries at most")
    comfyui(sp)

    def dispatch_flags(sp: argparse.ArgumentParser, retries: int, what: str) -> None:
        sp.add_argument("--server", action="append", default=[], help="host:port of a ComfyUI server (repeat for many)")
        sp.add_argument("--depth", type=int, default=2, help="prompts kept queued per server")
        sp.add_argument("--retries", type=int, default=retries, help=f"retries of a failed prompt before it is reported (default {retries})")
        sp.add_argument("--retry-failed", action="store_true", help=f"try the {what} that failed in earlier runs again")
        sp.add_argument("--give-up-after", type=float, default=120.0, metavar="SECONDS",
                        help="stop when no server has answered for this long (default 120); run again to resume")

    sp = verb("plan", "show what a generation campaign will make: jobs per category and checkpoint, ETA")
    sp.add_argument("campaign", help="campaign YAML file")
    sp.add_argument("--workflow", help="check this API-format template against the campaign")
    sp.add_argument("--rate", type=float, help="images per second, for the ETA (default: measured in --out)")
    sp.add_argument("--out", help="an output folder where generate has run (measured rate, jobs done)")
    sp.add_argument("--show", type=int, default=3, help="sample prompts per category")

    sp = verb("generate", "generate a campaign's images + sidecars on one or many ComfyUI servers (resumable)")
    sp.add_argument("campaign", help="campaign YAML file")
    sp.add_argument("--workflow", required=True, help="API-format workflow with {{prompt}}, {{seed}}, ... placeholders")
    sp.add_argument("--out", required=True, help="output folder (one subfolder per category; the job ledger)")
    dispatch_flags(sp, 2, "jobs")
    sp.add_argument("--limit", type=int, help="only the first N jobs (a trial run)")

    sp = verb("ab", "A/B-test the detail pass: arms x references x seeds on ComfyUI, scored, with an HTML report")
    sp.add_argument("config", help="A/B config YAML (template, references with regions, seeds, arms)")
    sp.add_argument("--out", help="output folder (default: ab_runs/NAME beside the config); the run resumes there")
    dispatch_flags(sp, 1, "outputs")
    sp.add_argument("--write-defaults", action="store_true",
                    help="store the best vault arm's strength, k, temperature and blend mode in the vault's manifest")

    sp = verb("demo", "build and query a vault from generated crops with a random encoder (no downloads)")
    sp.add_argument("--n", type=int, default=2000, help="generated entries (default 2000)")
    sp.add_argument("--queries", type=int, default=200, help="unseen query crops (default 200)")
    sp.add_argument("-k", "--k", type=int, default=5)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", metavar="DIR", help="keep the demo vault in this folder (default: ComfyUI's models/vaults "
                    "when there is a ComfyUI, else a temporary folder removed at the end)")
    comfyui(sp)
    return p


def _handler(verb: str) -> Callable[[argparse.Namespace], int]:
    """The function that runs a verb; it reads the parsed flags (declared once, in _parser)."""
    if verb == "demo":
        from .demo import run_demo

        return run_demo
    if verb == "extract":
        from .extract_cmd import cmd_extract

        return cmd_extract
    if verb == "query":
        from .query_cmd import cmd_query

        return cmd_query
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


_OS_REASONS = {
    errno.ENOENT: "no such file or folder",
    errno.EISDIR: "is a folder; give a file",
    errno.ENOTDIR: "a part of this path is a file, not a folder",
    errno.EEXIST: "already exists; choose another name",
    errno.EACCES: "permission denied; check who owns it and its folder, and their modes",
    errno.EPERM: "not permitted; check who owns it and its folder, and their modes",
    errno.ENOSPC: "the disk is full; free some space and run again (what was committed before is kept)",
    errno.EROFS: "the file system is read-only; choose another place",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter one",
}
_PIP_NAMES = {"open_clip": "open_clip_torch", "PIL": "pillow", "yaml": "pyyaml", "faiss": "faiss-cpu",
              "skimage": "scikit-image"}


def _ours(e: BaseException) -> bool:
    """Raised on purpose by this package (e.g. generation's DispatchError): its message is written for the user."""
    return type(e).__module__.split(".")[0] == __name__.split(".")[0]


def describe(e: BaseException, verb: str = "") -> str:
    """What went wrong, as one line that names the thing and what to do (never an exception class name)."""
    from ..core.errors import VaultError

    if isinstance(e, ModuleNotFoundError) and e.name:
        top = e.name.split(".")[0]
        text = f"the Python package '{top}' is not installed here: pip install {_PIP_NAMES.get(top, top)}"
    elif isinstance(e, OSError) and e.filename is not None and e.errno is not None:
        reason = _OS_REASONS.get(e.errno, (e.strerror or "failed").lower())
        text = f"{e.filename}: {reason}"
    elif isinstance(e, (UsageError, VaultError, ValueError, OSError, ImportError)) or _ours(e):
        text = str(e) or f"{verb} failed"
    else:  # what no input should cause: still one line; -v shows where
        text = f"{verb} stopped unexpectedly ({e or 'no message'}); run it again with -v for the details and report them"
    return " ".join(text.split())  # one line, whatever the message held


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except _ArgumentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    verbose = bool(args.verbose)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _handler(args.verb)(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every failure becomes one line (with -v, the traceback first)
        if verbose and not isinstance(e, UsageError):  # a command line that cannot work has no code path to show
            traceback.print_exception(e)
        print(f"error: {describe(e, args.verb)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
