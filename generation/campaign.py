"""Campaigns: categories with image quotas, prompt templates, checkpoints, seeds and sizes -> a job plan.

A campaign file (YAML):

    name: detail-v1
    wildcards: [wildcards/]            # folders/files, relative to this file
    seed: 1234
    sizes: [224, 336]                  # square sides, or [[w, h], ...]; spread round-robin
    batch_size: 4                      # images per job (one queued prompt)
    negative: "blurry, lowres"
    checkpoints: {ponyXL.safetensors: 2, juggernautXL.safetensors: 1}   # or a list (round-robin)
    loras: [{name: detail.safetensors, strength: 0.6}]
    categories:
      eyes:
        quota: 50000                   # images, met exactly
        templates: ["close-up of {categories.eyes.color} eyes, {modifiers.angle}"]
        expansion: random              # or systematic (the product in order, cycled to the quota)
        negative: ...                  # any top-level setting can be overridden per category

The plan is a pure function of the campaign: job i of a category always gets the same prompt, seed,
checkpoint and size, so a resumed or re-planned run produces the same files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .wildcards import Where, WildcardError, WildcardLibrary, parse

SETTINGS = ("seed", "sizes", "batch_size", "negative", "checkpoints", "loras", "expansion", "steps", "cfg", "sampler",
            "scheduler")
DEFAULTS: dict[str, Any] = {"seed": 0, "sizes": [224, 336], "batch_size": 4, "negative": "", "checkpoints": [],
                            "loras": [], "expansion": "random", "steps": 25, "cfg": 6.0, "sampler": "euler",
                            "scheduler": "normal"}


class CampaignError(ValueError):
    """A campaign file that cannot be planned (the message names the file and the key)."""


@dataclass(frozen=True)
class Job:
    """One queued prompt: `batch` images of one category with the same prompt and settings."""

    job_id: str
    campaign: str
    category: str
    index: int
    prompt: str
    negative: str
    seed: int
    checkpoint: str
    width: int
    height: int
    batch: int
    loras: tuple[tuple[str, float], ...] = ()
    steps: int = 25
    cfg: float = 6.0
    sampler: str = "euler"
    scheduler: str = "normal"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["loras"] = [{"name": n, "strength": s} for n, s in self.loras]
        return d


@dataclass
class Category:
    name: str
    quota: int
    templates: list[str]
    settings: dict[str, Any]


@dataclass
class Campaign:
    name: str
    path: Path
    library: WildcardLibrary
    categories: list[Category] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Campaign":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            data = yaml.safe_load(text)
        except FileNotFoundError:
            raise CampaignError(f"campaign file {path} does not exist") from None
        except yaml.YAMLError as e:
            raise CampaignError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(data, dict) or not isinstance(data.get("categories"), dict) or not data["categories"]:
            raise CampaignError(f"{path}: a campaign needs a 'categories' mapping (name -> quota, templates)")
        unknown = set(data) - {"name", "wildcards", "categories", *SETTINGS}
        if unknown:
            raise CampaignError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; known: name, wildcards, "
                                f"categories, {', '.join(SETTINGS)}")
        sources = data.get("wildcards") or []
        sources = [sources] if isinstance(sources, str) else sources
        library = WildcardLibrary.load(*[(path.parent / s) for s in sources])
        camp = cls(str(data.get("name") or path.stem), path, library)
        base = {**DEFAULTS, **{k: data[k] for k in SETTINGS if k in data}}
        for name, spec in data["categories"].items():
            where = f"{path}: categories.{name}"
            if not isinstance(spec, dict):
                raise CampaignError(f"{where} must be a mapping with quota and templates")
            bad = set(spec) - {"quota", "templates", "template", *SETTINGS}
            if bad:
                raise CampaignError(f"{where}: unknown key(s) {', '.join(sorted(bad))}")
            quota = spec.get("quota")
            if not isinstance(quota, int) or quota < 0:
                raise CampaignError(f"{where}.quota must be a whole number of images >= 0, got {quota!r}")
            templates = spec.get("templates") or ([spec["template"]] if "template" in spec else [])
            if not templates or not all(isinstance(t, str) for t in templates):
                raise CampaignError(f"{where}.templates must be a list of prompt templates")
            settings = {**base, **{k: spec[k] for k in SETTINGS if k in spec}}
            _check_settings(settings, where)
            for t in templates:
                at = Where(str(path), next((n for n, line in enumerate(text.splitlines(), 1) if t in line), 0))
                try:
                    library.check([parse(t, at)])
                except WildcardError as e:
                    raise CampaignError(f"{e} (template of categories.{name})") from None
            camp.categories.append(Category(str(name), quota, list(templates), settings))
        return camp

    def plan(self) -> list[Job]:
        """Every job of the campaign, in a fixed order (categories interleaved so progress is even)."""
        return _interleave([self._category_jobs(c) for c in self.categories])

    def _category_jobs(self, cat: Category) -> list[Job]:
        s = cat.settings
        batch = int(s["batch_size"])
        n_jobs = math.ceil(cat.quota / batch) if cat.quota else 0
        prompts = self._prompts(cat, n_jobs)
        checkpoints = spread(s["checkpoints"], n_jobs) if s["checkpoints"] else [""] * n_jobs
        sizes = [_size(x) for x in s["sizes"]]
        loras = tuple((str(lr["name"]), float(lr.get("strength", 1.0))) for lr in s["loras"])
        jobs = []
        for i in range(n_jobs):
            w, h = sizes[i % len(sizes)]
            jobs.append(Job(
                job_id=f"{cat.name}-{i:06d}", campaign=self.name, category=cat.name, index=i, prompt=prompts[i],
                negative=str(s["negative"]), seed=job_seed(int(s["seed"]), cat.name, i), checkpoint=checkpoints[i],
                width=w, height=h, batch=min(batch, cat.quota - i * batch), loras=loras, steps=int(s["steps"]),
                cfg=float(s["cfg"]), sampler=str(s["sampler"]), scheduler=str(s["scheduler"])))
        return jobs

    def _prompts(self, cat: Category, n: int) -> list[str]:
        if cat.settings["expansion"] == "systematic":
            combos: list[str] = []
            for t in cat.templates:
                combos += self.library.enumerate(t, limit=max(1, n - len(combos)))
                if len(combos) >= n:
                    break
            return [combos[i % len(combos)] for i in range(n)] if combos else []
        rng = random.Random(job_seed(int(cat.settings["seed"]), cat.name, -1))
        parsed = [parse(t) for t in cat.templates]
        return [self.library.expand(parsed[i % len(parsed)], rng) for i in range(n)]

    def summary(self, jobs: list[Job] | None = None) -> dict[str, Any]:
        """Jobs and images per category and per checkpoint."""
        jobs = self.plan() if jobs is None else jobs
        cats: dict[str, dict[str, Any]] = {}
        for c in self.categories:
            mine = [j for j in jobs if j.category == c.name]
            cats[c.name] = {"quota": c.quota, "jobs": len(mine), "images": sum(j.batch for j in mine),
                            "unique_prompts": len({j.prompt for j in mine}),
                            "checkpoints": dict(Counter(j.checkpoint or "(template's)" for j in mine))}
        per_ckpt = Counter()
        for j in jobs:
            per_ckpt[j.checkpoint or "(template's)"] += j.batch
        return {"campaign": self.name, "jobs": len(jobs), "images": sum(j.batch for j in jobs), "categories": cats,
                "images_per_checkpoint": dict(per_ckpt), "plan_hash": plan_hash(jobs)}


def job_seed(seed: int, category: str, index: int) -> int:
    """A stable 32-bit seed per (campaign seed, category, job) that does not depend on the other categories."""
    h = hashlib.sha256(f"{seed}|{category}|{index}".encode()).digest()
    return int.from_bytes(h[:4], "little")


def spread(checkpoints: list[str] | dict[str, float], n: int) -> list[str]:
    """Assign n jobs to checkpoints: a list round-robin, a {name: weight} mapping by smooth weighted
    round-robin (counts proportional to the weights, within one of the exact share, evenly mixed)."""
    if isinstance(checkpoints, list):
        return [str(checkpoints[i % len(checkpoints)]) for i in range(n)]
    names, weights = list(map(str, checkpoints)), [float(w) for w in checkpoints.values()]
    total = sum(weights)
    current = [0.0] * len(names)
    out = []
    for _ in range(n):
        for k, w in enumerate(weights):
            current[k] += w
        best = max(range(len(names)), key=lambda k: current[k])
        current[best] -= total
        out.append(names[best])
    return out


def plan_hash(jobs: list[Job]) -> str:
    h = hashlib.sha256()
    for j in jobs:
        h.update(json.dumps(j.to_json(), sort_keys=True).encode())
    return h.hexdigest()[:16]


def _interleave(groups: list[list[Job]]) -> list[Job]:
    """Round-robin over categories in proportion to their size, so every category advances together."""
    total = sum(len(g) for g in groups)
    pos = [0] * len(groups)
    out = []
    while len(out) < total:
        # the group furthest behind its share goes next
        k = min((k for k in range(len(groups)) if pos[k] < len(groups[k])), key=lambda k: (pos[k] + 1) / len(groups[k]))
        out.append(groups[k][pos[k]])
        pos[k] += 1
    return out


def _size(x: Any) -> tuple[int, int]:
    if isinstance(x, int):
        return x, x
    if isinstance(x, (list, tuple)) and len(x) == 2 and all(isinstance(v, int) for v in x):
        return int(x[0]), int(x[1])
    raise CampaignError(f"a size is a side (224) or [width, height], got {x!r}")


def _check_settings(s: dict[str, Any], where: str) -> None:
    if not isinstance(s["batch_size"], int) or s["batch_size"] < 1:
        raise CampaignError(f"{where}: batch_size must be a whole number >= 1, got {s['batch_size']!r}")
    if not isinstance(s["sizes"], list) or not s["sizes"]:
        raise CampaignError(f"{where}: sizes must be a non-empty list such as [224, 336]")
    for x in s["sizes"]:
        _size(x)
    if s["expansion"] not in ("random", "systematic"):
        raise CampaignError(f"{where}: expansion must be random or systematic, got {s['expansion']!r}")
    ck = s["checkpoints"]
    if isinstance(ck, dict):
        if not ck or any(not isinstance(w, (int, float)) or w <= 0 for w in ck.values()):
            raise CampaignError(f"{where}: checkpoint weights must be positive numbers")
    elif not isinstance(ck, list):
        raise CampaignError(f"{where}: checkpoints must be a list or a mapping name -> weight")
    if not isinstance(s["loras"], list) or any(not isinstance(x, dict) or "name" not in x for x in s["loras"]):
        raise CampaignError(f"{where}: loras must be a list of {{name: ..., strength: ...}}")
