"""Arms as edits of one API-format graph, and where each job's reference, region and seed go.

An arm sets inputs (`NODE.input`, NODE = a node id or a class name found once in the graph), removes
nodes, or turns the vault off: every input fed by a Luna Vault Query's `blended` output gets the
Query's own `conditioning` source instead, and the Query (with what only it fed) is removed. Every
edit is checked against the template before anything is queued, with the arm and node named.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import Any

from ..generation.workflow import graph_hash
from .config import AbConfig, AbConfigError, Arm, Reference

QUERY = "LunaVaultQuery"
SEED_INPUTS = ("seed", "noise_seed")
CHECKPOINT_INPUTS = (("CheckpointLoaderSimple", "ckpt_name"), ("UNETLoader", "unet_name"))
PRIMITIVES = ("PrimitiveInt", "PrimitiveFloat", "PrimitiveNode")
UPLOADS = "luna_ab"  # the subfolder of the servers' input folder the references are uploaded to
PROBE = "luna_ab_probe"  # the scoring node added to every queued graph (nodes/ab_probe.py)


@dataclass(frozen=True)
class AbJob:
    """One output: an arm, a reference and a seed (category = the arm: its outputs' folder)."""

    job_id: str
    arm: str
    reference: str
    seed: int
    batch: int = 1

    @property
    def category(self) -> str:
        return self.arm

    def to_json(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "arm": self.arm, "reference": self.reference, "seed": self.seed}


def _is_link(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)


def _node(graph: dict[str, Any], ref: str, what: str) -> str:
    """A node id from an id or a class name that occurs once."""
    if ref in graph:
        return ref
    ids = [nid for nid, n in graph.items() if n["class_type"] == ref]
    if len(ids) == 1:
        return ids[0]
    kinds = ", ".join(sorted({n["class_type"] for n in graph.values()}))
    if not ids:
        raise AbConfigError(f"{what}: the template has no node '{ref}' (its nodes: {kinds})")
    raise AbConfigError(f"{what}: the template has {len(ids)} {ref} nodes ({', '.join(ids)}); name one by its id")


def _input(graph: dict[str, Any], key: str, what: str) -> tuple[str, str]:
    ref, _, name = key.rpartition(".")
    nid = _node(graph, ref, what)
    inputs = graph[nid]["inputs"]
    if name not in inputs:
        raise AbConfigError(f"{what}: node {nid} ({graph[nid]['class_type']}) has no input '{name}' "
                            f"(it has: {', '.join(inputs)})")
    return nid, name


def _remove(graph: dict[str, Any], ids: set[str], protect: str, what: str) -> None:
    """Remove nodes and, in turn, every node that took an input from a removed one."""
    while ids:
        for nid in ids:
            graph.pop(nid, None)
        ids = {nid for nid, n in graph.items() if any(_is_link(v) and v[0] not in graph for v in n["inputs"].values())}
        if protect in ids or protect not in graph:
            raise AbConfigError(f"{what}: removing nodes would remove the scored output node {protect}")


def apply_arm(template: dict[str, Any], arm: Arm, output: str) -> dict[str, Any]:
    """The template with the arm's edits (a copy); AbConfigError names the arm and the node on a bad edit."""
    g = copy.deepcopy(template)
    what = f"arm '{arm.name}'"
    if arm.vault_off:
        queries = [nid for nid, n in g.items() if n["class_type"] == QUERY]
        if not queries:
            raise AbConfigError(f"{what}: vault: off, but the template has no {QUERY} node")
        for q in queries:
            own = g[q]["inputs"].get("conditioning")
            for nid, n in g.items():
                for key, v in n["inputs"].items():
                    if _is_link(v) and v[0] == q and v[1] in (0, 1):
                        if v[1] == 1 or not _is_link(own):
                            raise AbConfigError(
                                f"{what}: vault: off cannot rewire node {nid} ({n['class_type']}).{key}: it takes the "
                                f"Query {q}'s {'retrieved' if v[1] == 1 else 'blended'} output and "
                                f"{'there is no user conditioning to use instead' if v[1] == 0 else 'has no stand-in'}; "
                                "use set: and remove: instead")
                        n["inputs"][key] = list(own)
        _remove(g, set(queries), output, what)
    for key, value in arm.set.items():
        nid, name = _input(g, key, f"{what}, set {key}")
        if value is not None and not isinstance(value, (int, float, str, bool, list)):
            raise AbConfigError(f"{what}: set {key}: {value!r} is not a value or a link [node, output]")
        if isinstance(value, list) and not (_is_link(value) and value[0] in g):
            raise AbConfigError(f"{what}: set {key}: a list must be a link [node id, output] to a node of the graph")
        g[nid]["inputs"][name] = value
    if arm.remove:
        _remove(g, {_node(g, r, f"{what}, remove {r}") for r in arm.remove}, output, what)
    return g


def arm_settings(graph: dict[str, Any]) -> dict[str, Any]:
    """What the vault does in an arm's graph: its Query's strength, k, temperature, blend mode (or vault off)."""
    q = [n for n in graph.values() if n["class_type"] == QUERY]
    if not q:
        return {"vault": "off", "strength": 0.0}
    i = q[0]["inputs"]
    out = {"vault": i.get("vault"), "strength": i.get("strength"), "k": i.get("k"), "temperature": i.get("temperature"),
           "blend_mode": i.get("blend_mode")}
    return {k: (v if not _is_link(v) else None) for k, v in out.items()}


def checkpoint_of(graph: dict[str, Any]) -> str | None:
    for n in graph.values():
        for cls, key in CHECKPOINT_INPUTS:
            if n["class_type"] == cls and isinstance(n["inputs"].get(key), str):
                return n["inputs"][key]
    return None


class AbTemplate:
    """Fills one job's graph: its arm's edited template with the reference's uploaded image, region and seed."""

    def __init__(self, config: AbConfig, graph: dict[str, Any]) -> None:
        self.config, self.template = config, graph
        self.name = config.template.name
        self.hash = graph_hash(graph)
        self.bind = self._bind(graph, config.bind)
        base = apply_arm(graph, config.common, self.bind["output"]) if config.common else graph
        self.arms = {a.name: apply_arm(base, a, self.bind["output"]) for a in config.arms}
        self.settings = {arm: arm_settings(g) for arm, g in self.arms.items()}
        self.encoder = self._encoder(graph, config.bind)
        needed: dict[str, str] = {}
        for key in ("image", "x", "y", "width", "height"):
            if self.bind.get(key):
                needed.setdefault(self.bind[key][0], f"where the reference's {key} goes")
        if self.encoder:
            needed.setdefault(self.encoder[0], "the CLIP vision model the outputs are scored with")
        for arm, g in self.arms.items():  # what the job's values and the probe go into must survive the arm's edits
            for nid, why in needed.items():
                if nid not in g:
                    raise AbConfigError(f"arm '{arm}' removes node {nid}, {why}")
        out_images = graph[self.bind["output"]]["inputs"].get("images")
        if not _is_link(out_images):
            raise AbConfigError(f"the output node {self.bind['output']} ({graph[self.bind['output']]['class_type']}) "
                                "has no linked 'images' input to score")
        self.output_images = out_images
        self.probe_vault = self._probe_vault(graph, config)
        self.notes = []
        if self.encoder is None:
            self.notes.append("the template has no CLIP vision model to score with (bind clip_vision: NODE): "
                              "CLIP similarity and vault agreement are not scored")
        elif not self.probe_vault:
            self.notes.append("no vault to compare prompts in (set vault:, or name one in the Query): vault agreement "
                              "is not scored")
        self.refs = {r.name: r for r in config.references}
        self.uploads = {r.name: upload_name(r) for r in config.references}
        square = self.bind.get("width") and self.bind.get("width") == self.bind.get("height")
        for r in config.references:
            if r.region is not None and not self.bind.get("x"):
                raise AbConfigError(f"reference {r.name} has a region, but the template has no ImageCrop to put it in "
                                    "(bind x, y, width, height, or give ready crops with crop: true)")
            w, h = (r.region[2], r.region[3]) if r.region else r.size
            if square and w != h:
                raise AbConfigError(f"reference {r.name}: the template crops a square (width and height both go to "
                                    f"{'.'.join(self.bind['width'])}), but its region is {w}x{h}; make it square")

    # ---- where things go ----------------------------------------------------------------------------
    @staticmethod
    def _encoder(g: dict[str, Any], given: dict[str, Any]) -> list[Any] | None:
        """The CLIP vision output the vault is queried with: the Query's, a bound node's, or the only loader's."""
        if "clip_vision" in given:
            return [_node(g, str(given["clip_vision"]), "bind clip_vision"), 0]
        for n in g.values():
            if n["class_type"] == QUERY and _is_link(n["inputs"].get("clip_vision")):
                return list(n["inputs"]["clip_vision"])
        loaders = [nid for nid, n in g.items() if n["class_type"] == "CLIPVisionLoader"]
        return [loaders[0], 0] if len(loaders) == 1 else None

    @staticmethod
    def _probe_vault(g: dict[str, Any], config: AbConfig) -> str:
        from ..vault.manifest import vault_name

        if config.vault is not None:
            return vault_name(config.vault)
        named = [n["inputs"].get("vault") for n in g.values() if n["class_type"] == QUERY]
        return named[0] if named and isinstance(named[0], str) and named[0] != "auto-detect" else ""

    @staticmethod
    def _bind(g: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
        def one(cls: str, key: str) -> str:
            ids = [nid for nid, n in g.items() if n["class_type"] == cls]
            if len(ids) != 1:
                raise AbConfigError(f"the template has {len(ids)} {cls} nodes ({', '.join(ids) or 'none'}); "
                                    f"say which one with bind: {{{key}: NODE{'' if key == 'output' else '.input'}}}")
            return ids[0]

        bind: dict[str, Any] = {}
        bind["image"] = _input(g, given["image"], "bind image") if "image" in given else (one("LoadImage", "image"), "image")
        bind["output"] = _node(g, str(given["output"]), "bind output") if "output" in given else one("SaveImage", "output")
        crops = [nid for nid, n in g.items() if n["class_type"] == "ImageCrop"]
        for key in ("x", "y", "width", "height"):
            if key in given:
                bind[key] = _input(g, given[key], f"bind {key}")
            elif len(crops) == 1:
                v = g[crops[0]]["inputs"].get(key)
                if _is_link(v) and g.get(v[0], {}).get("class_type") in PRIMITIVES:
                    bind[key] = (v[0], "value")  # the shipped detailers share one size primitive for width and height
                elif not _is_link(v):
                    bind[key] = (crops[0], key)
                else:
                    raise AbConfigError(f"the ImageCrop's {key} comes from node {v[0]}; bind {key} to the input to set")
        seeds = given.get("seed")
        if seeds is not None:
            seeds = seeds if isinstance(seeds, list) else [seeds]
            bind["seed"] = [_input(g, s, "bind seed") for s in seeds]
        else:
            bind["seed"] = [(nid, k) for nid, n in g.items() for k in SEED_INPUTS
                            if k in n["inputs"] and not _is_link(n["inputs"][k])]
            if not bind["seed"]:
                raise AbConfigError("the template has no sampler seed to set; bind: {seed: NODE.input}")
        return bind

    def fill(self, job: AbJob) -> dict[str, Any]:
        g = copy.deepcopy(self.arms[job.arm])
        ref = self.refs[job.reference]
        nid, key = self.bind["image"]
        g[nid]["inputs"][key] = self.uploads[ref.name]
        x, y, w, h = ref.region or (0, 0, *ref.size)
        for key, value in (("x", x), ("y", y), ("width", w), ("height", h)):
            if self.bind.get(key) and self.bind[key][0] in g:
                g[self.bind[key][0]]["inputs"][self.bind[key][1]] = value
        for nid, key in self.bind["seed"]:
            if nid in g:
                g[nid]["inputs"][key] = job.seed
        if self.encoder is not None:
            g[PROBE] = {"class_type": "LunaAbProbe", "inputs": {
                "image": list(self.output_images), "reference": [self.bind["image"][0], 0],
                "clip_vision": list(self.encoder), "x": x, "y": y, "width": w, "height": h, "vault": self.probe_vault,
                "k": self.config.agreement_k}}
        return g

    @staticmethod
    def history_extras(entry: dict[str, Any]) -> dict[str, Any]:
        """The probe's scores from a finished prompt's /history entry (kept in the output's .json)."""
        found = ((entry.get("outputs") or {}).get(PROBE) or {}).get("luna_ab") or [{}]
        return {"probe": found[0] if isinstance(found[0], dict) else {}}

    def sidecar(self, job: AbJob) -> dict[str, Any]:
        ref = self.refs[job.reference]
        return {"arm": job.arm, "reference": job.reference, "seed": job.seed, "reference_image": str(ref.image),
                "region": list(ref.region) if ref.region else None, "category": ref.category,
                "settings": self.settings[job.arm], "checkpoint": checkpoint_of(self.arms[job.arm])}

    def jobs(self) -> list[AbJob]:
        """Every arm x reference x seed, interleaved by arm so a stopped run has paired outputs."""
        return [AbJob(f"{arm.name}--{ref.name}--s{seed}", arm.name, ref.name, seed)
                for ref in self.config.references for seed in self.config.seeds for arm in self.config.arms]


def upload_name(ref: Reference) -> str:
    """The reference's name in the servers' input folder: by content, so a changed image is a new name."""
    digest = hashlib.sha256(ref.image.read_bytes()).hexdigest()[:16]
    return f"{UPLOADS}/{digest}{ref.image.suffix.lower() or '.png'}"
