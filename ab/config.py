"""The A/B config file (YAML): template, references with regions, seeds, arms, and what to score with.

    name: eyes-strength
    template: detailer_api.json        # an API-format graph ("Save (API)"), relative to this file
    servers: [127.0.0.1:8188]          # --server on the command line replaces these
    vault: models/vaults/eyes.vault    # agreement is scored with the server's vault of this name; --write-defaults
                                       # writes here (a path on this machine)
    seeds: [1, 2, 3]                   # the same seeds in every arm: paired comparisons
    references:
      - {image: refs/portrait.png, region: [320, 256, 256, 256]}   # x, y, width, height
      - {image: refs/eye.png, crop: true}                           # already the crop
    baseline: no-vault                 # default: the first arm
    arms:
      no-vault: {vault: off}           # KSampler gets the Query's own conditioning; the Query is removed
      vault-0.3: {set: {LunaVaultQuery.strength: 0.3}}
      ipadapter: {vault: off, set: {IPAdapterAdvanced.weight: 0.6}}
    set: {KSampler.steps: 20}          # edits every arm shares (applied before each arm's own)
    relevance: {ciede2000: 2.0}        # the smallest difference that matters, per score (defaults: ab/stats.py)
    bind: {}                           # where images, regions and seeds go; found in the template if left out
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.atomic import UnsafeNameError, check_name

SCORES = ("clip_similarity", "ciede2000", "hue_distance", "vault_agreement", "ssim")
HIGHER_IS_BETTER = {"clip_similarity": True, "ciede2000": False, "hue_distance": False, "vault_agreement": True,
                    "ssim": None}  # SSIM: closeness to the first pass, not a quality (too high = over-constrained)
_KEYS = {"name", "template", "servers", "vault", "seeds", "references", "baseline", "arms", "bind", "agreement_k",
         "tune_on", "set", "relevance"}
NO_CATEGORY = "(none)"
_ARM_KEYS = {"set", "remove", "vault"}
_BIND_KEYS = {"image", "x", "y", "width", "height", "seed", "output", "clip_vision"}


class AbConfigError(ValueError):
    """A config that cannot run: the message names the file, the key (the arm, the reference) and the fix."""


@dataclass(frozen=True)
class Reference:
    name: str  # unique, from the file name
    image: Path
    region: tuple[int, int, int, int] | None  # x, y, width, height; None = the whole image is the crop
    category: str
    size: tuple[int, int]  # width, height of the image


@dataclass(frozen=True)
class Arm:
    name: str
    set: dict[str, Any] = field(default_factory=dict)
    remove: tuple[str, ...] = ()
    vault_off: bool = False


@dataclass
class AbConfig:
    path: Path
    name: str
    template: Path
    servers: list[str]
    references: list[Reference]
    seeds: list[int]
    arms: list[Arm]
    baseline: str
    bind: dict[str, Any]
    vault: Path | None = None
    agreement_k: int = 5
    tune_on: str = "clip_similarity"
    common: Arm | None = None  # the top-level `set:`, applied to every arm first
    relevance: dict[str, float] = field(default_factory=dict)  # per score: the smallest difference that matters

    def template_graph(self) -> dict[str, Any]:
        """The template as an API-format graph (the same reading and checks as generation templates)."""
        from ..generation.workflow import WorkflowError, WorkflowTemplate

        try:
            return WorkflowTemplate.load(self.template).graph
        except WorkflowError as e:
            raise AbConfigError(f"{self.path}: template: {e}") from None


def _path(base: Path, value: Any, key: str, where: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise AbConfigError(f"{where}: '{key}' must be a file path, got {value!r}")
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def load_config(path: str | Path) -> AbConfig:
    """Read and check a config; every problem is one AbConfigError naming the key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AbConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise AbConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise AbConfigError(f"{path} must be a mapping (template, references, seeds, arms, ...)")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise AbConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}")
    base = path.parent
    for key in ("template", "references", "arms"):
        if key not in raw:
            raise AbConfigError(f"{path}: '{key}' is missing")
    name = str(raw.get("name") or path.stem)
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                          for s in seeds) or len(set(seeds)) != len(seeds):
        raise AbConfigError(f"{path}: 'seeds' must be a list of distinct whole numbers >= 0, got {seeds!r}")
    servers = raw.get("servers", [])
    if isinstance(servers, str):
        servers = [servers]
    if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
        raise AbConfigError(f"{path}: 'servers' must be a list like [127.0.0.1:8188]")
    refs = _references(raw["references"], base, path)
    arms = _arms(raw["arms"], path)
    common = _arms({"(every arm)": {"set": raw["set"]}}, path)[0] if raw.get("set") else None
    baseline = raw.get("baseline", arms[0].name)
    if baseline not in {a.name for a in arms}:
        raise AbConfigError(f"{path}: baseline '{baseline}' is not one of the arms ({', '.join(a.name for a in arms)})")
    bind = raw.get("bind") or {}
    if not isinstance(bind, dict) or set(bind) - _BIND_KEYS:
        raise AbConfigError(f"{path}: 'bind' takes {', '.join(sorted(_BIND_KEYS))} (each 'NODE.input'; output: NODE)")
    tune_on = raw.get("tune_on", "clip_similarity")
    if tune_on not in SCORES or HIGHER_IS_BETTER[tune_on] is None:
        raise AbConfigError(f"{path}: tune_on must be one of "
                            f"{', '.join(s for s in SCORES if HIGHER_IS_BETTER[s] is not None)}, got {tune_on!r}")
    k = raw.get("agreement_k", 5)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 100:
        raise AbConfigError(f"{path}: agreement_k must be 1..100, got {k!r}")
    relevance = raw.get("relevance", {})
    scored = [s for s in SCORES if HIGHER_IS_BETTER[s] is not None]
    if not isinstance(relevance, dict) or not all(
            s in scored and isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < float("inf")
            for s, v in relevance.items()):
        raise AbConfigError(f"{path}: relevance maps scores ({', '.join(scored)}) to the smallest difference that "
                            f"matters (a number >= 0), got {relevance!r}")
    return AbConfig(
        path=path, name=name, template=_path(base, raw["template"], "template", path), servers=servers,
        references=refs, seeds=list(seeds), arms=arms, baseline=baseline, bind=bind,
        vault=_path(base, raw["vault"], "vault", path) if raw.get("vault") else None,
        agreement_k=k, tune_on=tune_on, common=common, relevance={s: float(v) for s, v in relevance.items()})


def _references(items: Any, base: Path, where: Path) -> list[Reference]:
    from PIL import Image, UnidentifiedImageError

    if not isinstance(items, list) or not items:
        raise AbConfigError(f"{where}: 'references' must be a non-empty list of {{image, region}} items")
    refs: list[Reference] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items, 1):
        if isinstance(item, str):
            item = {"image": item}
        if not isinstance(item, dict) or "image" not in item:
            raise AbConfigError(f"{where}: reference {i} needs an 'image'")
        img = _path(base, item["image"], f"references[{i}].image", where)
        label = f"reference {i} ({item['image']})"
        try:
            with Image.open(img) as im:
                size = im.size
        except FileNotFoundError:
            raise AbConfigError(f"{where}: {label}: the file does not exist") from None
        except (UnidentifiedImageError, OSError) as e:
            raise AbConfigError(f"{where}: {label} is not an image Pillow can read ({e})") from None
        region = item.get("region")
        if region is None:
            if item.get("crop") is not True:
                raise AbConfigError(f"{where}: {label} has no region: give region: [x, y, width, height] (the part the "
                                    "detailer re-draws), or crop: true if the image already is the crop")
        else:
            if (not isinstance(region, list) or len(region) != 4
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in region)):
                raise AbConfigError(f"{where}: {label}: region must be [x, y, width, height] in pixels, got {region!r}")
            x, y, w, h = region
            if x < 0 or y < 0 or w < 8 or h < 8 or x + w > size[0] or y + h > size[1]:
                raise AbConfigError(f"{where}: {label}: region {region} is not inside the {size[0]}x{size[1]} image "
                                    "(or smaller than 8 px)")
            region = (x, y, w, h)
        stem = img.stem
        seen[stem] = seen.get(stem, 0) + 1
        name = stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"
        try:
            check_name(name, "reference name")
        except UnsafeNameError:
            name = f"ref{i}"
        refs.append(Reference(name, img, region, str(item.get("category", NO_CATEGORY)), size))
    return refs


def _arms(items: Any, where: Path) -> list[Arm]:
    if not isinstance(items, dict) or not items:
        raise AbConfigError(f"{where}: 'arms' must map arm names to their changes, e.g. "
                            "{no-vault: {vault: off}, vault-0.3: {set: {LunaVaultQuery.strength: 0.3}}}")
    arms = []
    for name, spec in items.items():
        try:
            if name != "(every arm)":
                check_name(str(name), "arm name")
        except UnsafeNameError as e:
            raise AbConfigError(f"{where}: {e}") from None
        spec = spec or {}
        if not isinstance(spec, dict) or set(spec) - _ARM_KEYS:
            raise AbConfigError(f"{where}: arm '{name}' takes set: {{NODE.input: value}}, remove: [NODE, ...] and "
                                f"vault: off; got {spec!r}")
        sets = spec.get("set") or {}
        if not isinstance(sets, dict) or not all(isinstance(k, str) and "." in k for k in sets):
            raise AbConfigError(f"{where}: arm '{name}': set must map 'NODE.input' (a node id or class name) to a value")
        remove = spec.get("remove") or []
        if not isinstance(remove, list):
            raise AbConfigError(f"{where}: arm '{name}': remove must be a list of node ids or class names")
        vault = spec.get("vault", "on")
        if vault not in ("on", "off", True, False):
            raise AbConfigError(f"{where}: arm '{name}': vault is on or off, got {vault!r}")
        arms.append(Arm(str(name), dict(sets), tuple(str(r) for r in remove), vault in ("off", False)))
    return arms
