"""`luna-vault extract`: a folder of generated images -> vault(s), optional baked conditioning and pairs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .common import UsageError, emit, progress_bar


def _image_encoder(clip_vision: str | None, comfyui: str | None, open_clip: str | None, weights: str | None,
                   open_clip_config: str | None, random_encoder: int | None) -> Any:
    chosen = [x for x in (clip_vision, open_clip, random_encoder) if x]
    if len(chosen) != 1:
        raise UsageError("choose one image encoder: --clip-vision FILE (ComfyUI loader), "
                         "--open-clip NAME --weights FILE, or --random-encoder DIM (tests/demo only)")
    if clip_vision:
        from ..extraction.comfy_loader import load_clip_vision

        return load_clip_vision(clip_vision, comfyui)
    if open_clip:
        if not weights:
            raise UsageError("--open-clip needs --weights FILE (a local weights file; nothing is downloaded)")
        from ..extraction.open_clip_encoder import OpenClipImageEncoder

        return OpenClipImageEncoder(open_clip, weights, config=open_clip_config)
    from ..extraction.encoders import RandomImageEncoder

    return RandomImageEncoder(dim=int(random_encoder))  # type: ignore[arg-type]


def cmd_extract(a: argparse.Namespace) -> int:
    from ..extraction.pipeline import Extractor, default_report_path, parse_shard, write_report

    if (a.vault is None) == (a.vault_dir is None):
        raise UsageError("give --vault FILE.vault (one vault) or --vault-dir DIR (one vault per category)")
    import os

    import torch

    if "LOCAL_RANK" in os.environ and torch.cuda.is_available():  # under torchrun: one GPU per process
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    encoder = _image_encoder(a.clip_vision, a.comfyui, a.open_clip, a.weights, a.open_clip_config, a.random_encoder)
    text_encoder = None
    if a.bake:
        if not (a.checkpoint or a.clip):
            raise UsageError("--bake needs the text encoder: --checkpoint FILE or --clip FILE [--clip FILE]")
        from ..extraction.comfy_loader import load_text_encoder

        text_encoder = load_text_encoder(checkpoint=a.checkpoint, clip_files=a.clip, clip_type=a.clip_type, comfyui=a.comfyui)
    elif a.checkpoint or a.clip:
        print("note: --checkpoint/--clip only matter with --bake; building a text-mode vault", file=sys.stderr)
    shard_spec = parse_shard(a.shard)
    from .read_cmd import node_types

    extractor = Extractor(encoder, vault=a.vault, vault_dir=a.vault_dir, text_encoder=text_encoder, batch_size=a.batch_size,
                          workers=a.workers, thumbnails=not a.no_thumbnails, commit_every=a.commit_every, shard=shard_spec,
                          node_types=node_types(a.object_info))
    with progress_bar("extracting", "img", not a.json) as cb:
        result = extractor.run(a.folder, category=a.category, progress=cb)
    report_path = a.report or str(default_report_path(extractor.vault, extractor.vault_dir))
    if result.skipped:
        write_report(result, report_path)
    data = result.to_json()
    data["report"] = report_path if result.skipped else None
    lines = [result.summary()]
    for path, n in result.added.items():
        lines.append(f"  {path}: +{n} entries")
    if result.skipped:
        lines.append(f"  skipped items listed in {report_path}")
    if a.pairs:
        from ..extraction.pairs import export_pairs
        from ..vault import Vault

        targets = [t.path for t in extractor.targets.values()]
        if len(targets) != 1:
            raise UsageError("--pairs needs a single output vault (use --vault, not --vault-dir)")
        info = export_pairs(Vault.open(targets[0]), a.pairs)
        data["pairs"] = info
        lines.append(f"  {info['pairs']} training pairs written to {a.pairs}")
    emit(data, a.json, "\n".join(lines))
    return 0
