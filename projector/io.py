"""Projector files: safetensors weights (fp16) with config, encoder fingerprint and training stats in the header."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..core.atomic import atomic_write
from ..core.encoder import EncoderFingerprint
from ..core.errors import EncoderMismatchError
from .model import Projector, ProjectorConfig

FORMAT = "luna-projector"
VERSION = 1


class ProjectorFileError(ValueError):
    """Not a projector file, an unknown version, or weights that do not fit the saved config."""


def save_projector(model: Projector, path: str | os.PathLike[str], encoder: EncoderFingerprint,
                   stats: dict[str, Any] | None = None) -> Path:
    """Write weights as fp16 safetensors (atomically) with everything needed to load and check them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "version": str(VERSION), "config": json.dumps(model.cfg.to_json()),
            "family": model.cfg.target.family, "encoder": json.dumps(encoder.to_json()),
            "stats": json.dumps(stats or {}), "parameters": str(model.parameter_count())}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return path


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Config, family, encoder and stats of a projector file, without loading its weights."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"projector file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise ProjectorFileError(f"{path.name} is not a readable safetensors file ({e})") from e
    if meta.get("format") != FORMAT:
        raise ProjectorFileError(f"{path.name} is not a Luna projector (format={meta.get('format')!r})")
    if meta.get("version") != str(VERSION):
        raise ProjectorFileError(f"{path.name} has projector format version {meta.get('version')}; this Luna Vault "
                                 f"reads version {VERSION}: upgrade luna-vault")
    return {"config": ProjectorConfig.from_json(json.loads(meta["config"])), "family": meta["family"],
            "encoder": EncoderFingerprint.from_json(json.loads(meta["encoder"])), "stats": json.loads(meta["stats"])}


def load_projector(path: str | os.PathLike[str], encoder: EncoderFingerprint | None = None,
                   device: str | torch.device = "cpu") -> tuple[Projector, dict[str, Any]]:
    """Load a projector (strict, fp32 on `device`); with `encoder`, refuse one trained on another encoder."""
    header = read_header(path)
    if encoder is not None:
        try:
            header["encoder"].check_compatible(encoder, where=f"projector '{Path(path).name}'")
        except EncoderMismatchError as e:
            raise EncoderMismatchError(str(e)) from None
    model = Projector(header["config"])
    with safe_open(str(path), framework="pt") as f:
        state = {k: f.get_tensor(k).float() for k in f.keys()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ProjectorFileError(f"{Path(path).name}: weights do not match its config ({e})") from e
    return model.to(device).eval(), header
