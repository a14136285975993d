"""`luna-vault extract`: a folder of generated images -> vault(s), optional baked conditioning and pairs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..extraction.readers import IMAGE_EXTENSIONS  # light: the dataset readers import no model code
from .common import UsageError, check_encoder_flags, emit, image_encoder, progress_bar
from .paths import MANIFEST, input_file, input_folder, new_vault, output_file, vaults_folder


def _has_an_image(folder: Path) -> bool:
    """Whether the folder (or a subfolder) holds a file extract reads; stops at the first one."""
    return any(p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() for p in folder.rglob("*"))


def cmd_extract(a: argparse.Namespace) -> int:
    folder = input_folder(a.folder, "dataset folder")
    if a.vault is not None and a.vault_dir is not None:
        raise UsageError("give --vault FILE.vault (one vault) or --vault-dir DIR (one vault per category), not both")
    if a.pairs and a.vault is None:
        raise UsageError("--pairs needs a single output vault: use --vault, not --vault-dir")
    check_encoder_flags(a)
    if a.bake and not (a.checkpoint or a.clip):
        raise UsageError("--bake needs the text encoder: --checkpoint FILE or --clip FILE [--clip FILE]")
    for flag, files in (("--checkpoint", [a.checkpoint] if a.checkpoint else []), ("--clip", a.clip or []),
                        ("--object-info", [a.object_info] if a.object_info else [])):
        for f in files:
            input_file(f, flag)
    if not _has_an_image(folder):
        raise UsageError(f"no images in {folder} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))} files, in subfolders too); "
                         "give the folder that holds the dataset's images")
    vault = vault_dir = None
    if a.vault is not None:
        vault = new_vault(a.vault, a.comfyui, "--vault")
        if not (vault / MANIFEST).is_file():
            from ..vault.store import check_new_vault_folder

            check_new_vault_folder(vault)  # before anything is encoded
    else:
        vault_dir = vaults_folder(a.vault_dir, a.comfyui, "--vault-dir")
    if a.report:
        output_file(a.report, "--report")
    from .read_cmd import node_types

    types = node_types(a.object_info)
    from ..extraction.pipeline import Extractor, default_report_path, parse_shard, write_report

    shard_spec = parse_shard(a.shard)
    import os

    import torch

    if "LOCAL_RANK" in os.environ and torch.cuda.is_available():  # under torchrun: one GPU per process
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    encoder = image_encoder(a)
    text_encoder = None
    if a.bake:
        from ..extraction.comfy_loader import load_text_encoder

        text_encoder = load_text_encoder(checkpoint=a.checkpoint, clip_files=a.clip, clip_type=a.clip_type, comfyui=a.comfyui)
    elif a.checkpoint or a.clip:
        print("note: --checkpoint/--clip only matter with --bake; building a text-mode vault", file=sys.stderr)
    extractor = Extractor(encoder, vault=vault, vault_dir=vault_dir, text_encoder=text_encoder, batch_size=a.batch_size,
                          workers=a.workers, thumbnails=not a.no_thumbnails, commit_every=a.commit_every, shard=shard_spec,
                          node_types=types)
    with progress_bar("extracting", "img", not a.json) as cb:
        result = extractor.run(folder, category=a.category, progress=cb)
    report_path = a.report or str(default_report_path(extractor.vault, extractor.vault_dir))
    if result.skipped:
        write_report(result, report_path)
    data = result.to_json()
    data["report"] = report_path if result.skipped else None
    lines = [result.summary()]
    for path, n in result.added.items():
        lines.append(f"  {Path(path).resolve()}: +{n} entries")
    if result.skipped:
        lines.append(f"  skipped items listed in {report_path}")
    if a.pairs:
        from ..extraction.pairs import export_pairs
        from ..vault import Vault

        targets = [t.path for t in extractor.targets.values()]
        info = export_pairs(Vault.open(targets[0]), a.pairs)
        data["pairs"] = info
        lines.append(f"  {info['pairs']} training pairs written to {a.pairs}")
    emit(data, a.json, "\n".join(lines))
    return 0
