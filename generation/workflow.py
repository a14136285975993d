"""API-format workflow templates with named placeholders, filled in per job.

A template is a graph exported with ComfyUI's "Save (API)" in which input values hold placeholders:
`"{{prompt}}"`, `"{{negative}}"`, `"{{seed}}"`, `"{{checkpoint}}"`, `"{{width}}"`, `"{{height}}"`,
`"{{batch}}"`, `"{{steps}}"`, `"{{cfg}}"`, `"{{sampler}}"`, `"{{scheduler}}"`, `"{{lora}}"` /
`"{{lora_strength}}"` (the first LoRA; `{{lora_2}}`, `{{lora_2_strength}}`, ... for more). A value
that is exactly one placeholder takes the job's value with its type (a number stays a number);
placeholders inside longer text are replaced as text ("photo, {{prompt}}").
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from .campaign import Job

PLACEHOLDER = re.compile(r"\{\{\s*([a-z0-9_]+)\s*\}\}")
KNOWN = {"prompt", "negative", "seed", "checkpoint", "width", "height", "batch", "steps", "cfg", "sampler", "scheduler",
         "lora", "lora_strength", "category", "campaign", "job_id"}
_LORA_N = re.compile(r"lora_(\d+)(_strength)?$")


class WorkflowError(ValueError):
    """A template that is not an API-format graph, or that uses an unknown placeholder."""


def graph_hash(graph: dict[str, Any]) -> str:
    """A short hash of an API-format graph (key order does not matter): what outputs record they came from."""
    return hashlib.sha256(json.dumps(graph, sort_keys=True).encode()).hexdigest()[:16]


class WorkflowTemplate:
    def __init__(self, graph: dict[str, Any], name: str = "workflow") -> None:
        if not isinstance(graph, dict) or not graph or not all(
                isinstance(n, dict) and "class_type" in n and isinstance(n.get("inputs", {}), dict) for n in graph.values()):
            raise WorkflowError(f"{name} is not an API-format workflow (node id -> {{class_type, inputs}}); "
                                "export it with ComfyUI's 'Save (API)'")
        self.graph, self.name = graph, name
        self.placeholders = sorted({m.group(1) for v in self._strings() for m in PLACEHOLDER.finditer(v)})
        unknown = [p for p in self.placeholders if p not in KNOWN and not _LORA_N.match(p)]
        if unknown:
            raise WorkflowError(f"{name} uses unknown placeholder(s) {', '.join('{{' + u + '}}' for u in unknown)}; "
                                f"known: {', '.join(sorted(KNOWN))}, lora_N, lora_N_strength")
        self.hash = graph_hash(graph)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "WorkflowTemplate":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise WorkflowError(f"workflow file {path} does not exist") from None
        except json.JSONDecodeError as e:
            raise WorkflowError(f"{path} is not JSON ({e})") from None
        if isinstance(data, dict) and "nodes" in data and "links" in data:
            raise WorkflowError(f"{path} is a UI-format workflow; export the API format with 'Save (API)'")
        return cls(data.get("prompt", data) if isinstance(data, dict) else data, path.name)

    def _strings(self) -> list[str]:
        return [v for n in self.graph.values() for v in n.get("inputs", {}).values() if isinstance(v, str)]

    def values(self, job: Job) -> dict[str, Any]:
        v: dict[str, Any] = {"prompt": job.prompt, "negative": job.negative, "seed": job.seed, "checkpoint": job.checkpoint,
                             "width": job.width, "height": job.height, "batch": job.batch, "steps": job.steps,
                             "cfg": job.cfg, "sampler": job.sampler, "scheduler": job.scheduler,
                             "category": job.category, "campaign": job.campaign, "job_id": job.job_id}
        for i, (name, strength) in enumerate(job.loras, 1):
            v[f"lora_{i}"], v[f"lora_{i}_strength"] = name, strength
        if job.loras:
            v["lora"], v["lora_strength"] = v["lora_1"], v["lora_1_strength"]
        return v

    def sidecar(self, job: Job) -> dict[str, Any]:
        """The job's settings, recorded in each image's .json (its prompt also goes to a .txt)."""
        return {"prompt": job.prompt, "negative": job.negative, "seed": job.seed, "checkpoint": job.checkpoint,
                "loras": [{"name": n, "strength": w} for n, w in job.loras], "campaign": job.campaign,
                "category": job.category, "width": job.width, "height": job.height, "steps": job.steps, "cfg": job.cfg,
                "sampler": job.sampler, "scheduler": job.scheduler}

    @staticmethod
    def history_extras(entry: dict[str, Any]) -> dict[str, Any]:
        """Nothing beyond the images: a campaign's outputs carry no scores."""
        return {}

    def fill(self, job: Job) -> dict[str, Any]:
        """The graph for one job (raises when the job lacks a value the template needs, e.g. a checkpoint)."""
        values = self.values(job)
        missing = [p for p in self.placeholders
                   if p not in values or (values[p] == "" and (p == "checkpoint" or p.startswith("lora")))]
        if missing:
            raise WorkflowError(f"{self.name} needs {', '.join(missing)} but job {job.job_id} has none "
                                "(set checkpoints / loras in the campaign)")
        graph = copy.deepcopy(self.graph)
        for node in graph.values():
            for key, val in node.get("inputs", {}).items():
                if not isinstance(val, str):
                    continue
                m = PLACEHOLDER.fullmatch(val.strip())
                if m:
                    node["inputs"][key] = values[m.group(1)]
                elif PLACEHOLDER.search(val):
                    node["inputs"][key] = PLACEHOLDER.sub(lambda mm: str(values[mm.group(1)]), val)
        return graph
