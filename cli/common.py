"""Shared CLI helpers: tqdm progress callbacks, JSON/table printing, input files."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm


class UsageError(Exception):
    """A command line that cannot work as given; printed as one `error:` line, exit code 2."""


@contextlib.contextmanager
def progress_bar(desc: str, unit: str = "it", enabled: bool = True) -> Iterator[Any]:
    """Yield a (done, total) callback drawing a tqdm bar on stderr; None when disabled or when stderr is not
    a terminal (a log file or a pipe would get the bar's last state as a stray line before any error)."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
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
    print(json.dumps(data, indent=1, default=_jsonable) if as_json else text)


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot write {type(x).__name__} as JSON")


def read_embeddings(path: str) -> tuple[np.ndarray, dict[str, str]]:
    """An `embeddings` [N, D] float tensor (and header metadata) from a safetensors file, as float32.

    fp16/bf16/fp32/fp64 are accepted; integer or boolean tensors are not embeddings and are refused.
    """
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"embeddings file {p} does not exist")
    try:
        with safe_open(str(p), framework="pt") as f:
            if "embeddings" not in f.keys():
                raise UsageError(f"{p} has no tensor named 'embeddings' (found: {', '.join(list(f.keys())[:10]) or 'none'})")
            t = f.get_tensor("embeddings")
            meta = dict(f.metadata() or {})
    except SafetensorError as e:
        raise UsageError(f"{p} is not a readable safetensors file ({e})") from e
    if not t.is_floating_point():
        raise UsageError(f"{p}: embeddings are {str(t.dtype).replace('torch.', '')}; expected floating-point "
                         "image embeddings (float16/bfloat16/float32)")
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise UsageError(f"{p}: embeddings have shape {tuple(t.shape)}; expected [N, D] with N, D > 0")
    return t.float().numpy(), {str(k): str(v) for k, v in meta.items()}


def read_jsonl(path: str) -> list[dict[str, Any] | None]:
    """One JSON object per line; a line that is not an object becomes None (and is skipped later)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"entries file {p} does not exist")
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
