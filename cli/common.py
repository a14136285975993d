"""Shared CLI helpers: tqdm progress callbacks, JSON/table printing, input files, the image encoder.

Nothing heavy at import (numpy, tqdm, torch come inside the functions): every verb imports this first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Iterator

from ..core.text import printable


class UsageError(Exception):
    """A command line that cannot work as given; printed as one `error:` line, exit code 2."""


@contextlib.contextmanager
def progress_bar(desc: str, unit: str = "it", enabled: bool = True) -> Iterator[Any]:
    """Yield a (done, total) callback drawing a tqdm bar on stderr; None when disabled or when stderr is not
    a terminal (a log file or a pipe would get the bar's last state as a stray line before any error)."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True, file=sys.stderr, leave=False)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()


def emit(data: Any, as_json: bool, text: str) -> None:
    """Print the result: JSON (ASCII, every control character escaped by JSON itself), or the text with
    control characters escaped (prompts and names from a stranger's vault reach the terminal here)."""
    print(json.dumps(data, indent=1, default=_jsonable) if as_json else printable(text))


def _jsonable(x: Any) -> Any:
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot write {type(x).__name__} as JSON")


FLOAT_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}  # safetensors' names


def read_embeddings(path: str) -> tuple[Any, dict[str, str]]:
    """An `embeddings` [N, D] float array (and header metadata) from a safetensors file, as float32.

    fp16/bf16/fp32/fp64 are accepted; integer or boolean tensors are not embeddings and are refused. Read
    with numpy (torch only for bfloat16, which numpy lacks): a bad file is answered without torch's start-up.
    """
    from safetensors import SafetensorError, safe_open

    from .paths import input_file

    p = input_file(path, "embeddings file")
    try:
        with safe_open(str(p), framework="numpy") as f:
            if "embeddings" not in f.keys():
                raise UsageError(f"{p} has no tensor named 'embeddings' (found: {', '.join(list(f.keys())[:10]) or 'none'})")
            view = f.get_slice("embeddings")
            dtype, shape = view.get_dtype(), tuple(view.get_shape())
            meta = dict(f.metadata() or {})
            if dtype not in FLOAT_DTYPES:
                raise UsageError(f"{p}: embeddings are {dtype.lower()}; expected floating-point image embeddings "
                                 "(float16/bfloat16/float32)")
            if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
                raise UsageError(f"{p}: embeddings have shape {shape}; expected [N, D] with N, D > 0")
            x = f.get_tensor("embeddings") if dtype != "BF16" else None
        if x is None:
            with safe_open(str(p), framework="pt") as f:
                x = f.get_tensor("embeddings").float().numpy()
    except SafetensorError as e:
        raise UsageError(f"{p} is not a readable safetensors file ({e})") from e
    return x.astype("float32", copy=False), {str(k): str(v) for k, v in meta.items()}


def read_jsonl(path: str) -> list[dict[str, Any] | None]:
    """One JSON object per line; a line that is not an object becomes None (and is skipped later)."""
    from .paths import input_file

    p = input_file(path, "entries file")
    rows: list[dict[str, Any] | None] = []
    for line in p.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            obj = None
        rows.append(obj if isinstance(obj, dict) else None)
    return rows


def read_yaml_file(path: str, what: str) -> None:
    """Check that a YAML file reads, so a syntax error is one line naming where it is (the loaders then
    check what it says)."""
    from .paths import input_file

    p = input_file(path, what)
    import yaml

    try:
        yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"{what} {path} is not a text file (not UTF-8); give the YAML file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UsageError(f"{what} {path} is not valid YAML: {problem}{where}; fix it and run again") from None


def encoder_flags(sp: argparse.ArgumentParser) -> None:
    """The image encoder flags `extract` and `query --image` share (declared once)."""
    enc = sp.add_argument_group("image encoder (choose one)")
    enc.add_argument("--clip-vision", help="a ComfyUI clip_vision file, loaded with ComfyUI's own loader")
    enc.add_argument("--open-clip", help="an open_clip model name, e.g. ViT-H-14 (with --weights)")
    enc.add_argument("--weights", help="local weights file for --open-clip")
    enc.add_argument("--open-clip-config", help="extra open_clip model config JSON (for custom architectures)")
    enc.add_argument("--random-encoder", type=int, metavar="DIM", help="random-initialised encoder (tests/demo only)")


def check_encoder_flags(a: argparse.Namespace) -> None:
    """The encoder flags make sense and name files that exist: checked before any model is loaded."""
    from .paths import input_file

    chosen = [x for x in (a.clip_vision, a.open_clip, a.random_encoder) if x is not None]
    if len(chosen) != 1:
        raise UsageError("choose one image encoder: --clip-vision FILE (ComfyUI loader), "
                         "--open-clip NAME --weights FILE, or --random-encoder DIM (tests/demo only)")
    if a.clip_vision:
        input_file(a.clip_vision, "--clip-vision")
    if a.open_clip:
        if not a.weights:
            raise UsageError("--open-clip needs --weights FILE (a local weights file; nothing is downloaded)")
        input_file(a.weights, "--weights")
        if a.open_clip_config:
            input_file(a.open_clip_config, "--open-clip-config")
    elif a.weights:
        raise UsageError("--weights goes with --open-clip NAME")
    if a.random_encoder is not None and a.random_encoder < 1:
        raise UsageError(f"--random-encoder takes the embedding size (a whole number >= 1), got {a.random_encoder}")


def image_encoder(a: argparse.Namespace) -> Any:
    """The image encoder the flags choose (check_encoder_flags first): ComfyUI's loader, open_clip or random."""
    check_encoder_flags(a)
    if a.clip_vision:
        from ..extraction.comfy_loader import load_clip_vision

        return load_clip_vision(a.clip_vision, a.comfyui)
    if a.open_clip:
        from ..extraction.open_clip_encoder import OpenClipImageEncoder

        return OpenClipImageEncoder(a.open_clip, a.weights, config=a.open_clip_config)
    from ..extraction.encoders import RandomImageEncoder

    return RandomImageEncoder(dim=int(a.random_encoder))
