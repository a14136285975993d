"""The training run's resume checkpoint, as safetensors (tensors) + JSON (everything else): no pickle.

Tensors are stored flat under `model.*` and `optimizer.<param>.<name>`; the optimizer's param groups,
its non-tensor state, the scheduler's state and the run's own fields (epoch, best loss, history,
settings) go to the header's metadata as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..core.atomic import atomic_write

KIND = "luna-projector-checkpoint"


def save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any,
                    fields: dict[str, Any]) -> None:
    """Atomically write what resuming needs: weights, optimizer and scheduler state, and `fields` (JSON-able)."""
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in opt_state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    meta = {"kind": KIND, "fields": json.dumps(fields),
            "optimizer": json.dumps({"param_groups": opt_state["param_groups"], "scalars": scalars}),
            "scheduler": json.dumps(sched.state_dict())}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any,
                    check: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Restore model, optimizer and scheduler from `path`; returns the run's fields. ValueError if unreadable.

    `check` sees the fields first and may refuse (a run with other settings) before any state is loaded."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("kind") != KIND:
                raise ValueError(f"{path} is not a Luna projector checkpoint (kind {meta.get('kind')!r})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        optimizer = json.loads(meta["optimizer"])
        fields = json.loads(meta["fields"])
        sched_state = json.loads(meta["scheduler"])
    except (SafetensorError, KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is damaged ({e}); pass --no-resume to start over") from e
    if check is not None:
        check(fields)
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, entries in optimizer["scalars"].items():
        state.setdefault(int(pid), {}).update(entries)
    opt.load_state_dict({"state": state, "param_groups": optimizer["param_groups"]})
    sched.load_state_dict(sched_state)
    return fields
