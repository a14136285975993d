"""Writes the example workflows: UI format (drag onto the canvas) and an API-format twin of each.

`python workflows/build.py [--object-info FILE]`: the node schemas come from a running headless
ComfyUI with this pack (started here with ../shared/comfyui unless a saved /object_info is given),
plus the schemas of the third-party nodes two workflows use, transcribed from their source (pack and
commit in THIRD_PARTY). Output: example_workflows/<name>.json (UI format, where ComfyUI's template
browser looks; shipped once: ComfyUI lists every JSON directly in workflows/ as a template too) and
workflows/api/<name>.json (API format).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# Third-party nodes, transcribed from their source (widget order matters for the UI format).
IMPACT = "ComfyUI-Impact-Pack (ltdrdata, checked at 727295b) + ComfyUI-Impact-Subpack (5b4e550)"
IPADAPTER = "ComfyUI_IPAdapter_plus (cubiq, checked at 9d076a3)"
SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "uni_pc"]
SCHEDULERS = ["normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta"]
THIRD_PARTY: dict[str, dict[str, Any]] = {
    "UltralyticsDetectorProvider": {"pack": IMPACT, "input": {"required": {"model_name": [["bbox/face_yolov8m.pt"]]}},
                                    "output": ["BBOX_DETECTOR", "SEGM_DETECTOR"],
                                    "output_name": ["BBOX_DETECTOR", "SEGM_DETECTOR"]},
    "BboxDetectorSEGS": {"pack": IMPACT, "input": {"required": {
        "bbox_detector": ["BBOX_DETECTOR"], "image": ["IMAGE"], "threshold": ["FLOAT", {"default": 0.5}],
        "dilation": ["INT", {"default": 10}], "crop_factor": ["FLOAT", {"default": 3.0}],
        "drop_size": ["INT", {"default": 10}], "labels": ["STRING", {"default": "all", "multiline": True}]},
        "optional": {"detailer_hook": ["DETAILER_HOOK"]}}, "output": ["SEGS"], "output_name": ["SEGS"]},
    "ImpactSEGSOrderedFilter": {"pack": IMPACT, "input": {"required": {
        "segs": ["SEGS"], "target": [["area(=w*h)", "width", "height", "x1", "y1", "x2", "y2", "confidence"]],
        "order": ["BOOLEAN", {"default": True}], "take_start": ["INT", {"default": 0}],
        "take_count": ["INT", {"default": 1}]}}, "output": ["SEGS", "SEGS"],
        "output_name": ["filtered_SEGS", "remained_SEGS"]},
    "SEGSToImageList": {"pack": IMPACT, "input": {"required": {"segs": ["SEGS"]},
                                                  "optional": {"fallback_image_opt": ["IMAGE"]}},
                        "output": ["IMAGE"], "output_name": ["IMAGE"], "output_is_list": [True]},
    "DetailerForEach": {"pack": IMPACT, "input": {"required": {
        "image": ["IMAGE"], "segs": ["SEGS"], "model": ["MODEL"], "clip": ["CLIP"], "vae": ["VAE"],
        "guide_size": ["FLOAT", {"default": 512}], "guide_size_for": ["BOOLEAN", {"default": True}],
        "max_size": ["FLOAT", {"default": 1024}], "seed": ["INT", {"default": 0, "control_after_generate": True}],
        "steps": ["INT", {"default": 20}], "cfg": ["FLOAT", {"default": 8.0}], "sampler_name": [SAMPLERS],
        "scheduler": [SCHEDULERS], "positive": ["CONDITIONING"], "negative": ["CONDITIONING"],
        "denoise": ["FLOAT", {"default": 0.5}], "feather": ["INT", {"default": 5}],
        "noise_mask": ["BOOLEAN", {"default": True}], "force_inpaint": ["BOOLEAN", {"default": True}],
        "wildcard": ["STRING", {"multiline": True}], "cycle": ["INT", {"default": 1}]},
        "optional": {"detailer_hook": ["DETAILER_HOOK"], "inpaint_model": ["BOOLEAN", {"default": False}],
                     "noise_mask_feather": ["INT", {"default": 20}], "scheduler_func_opt": ["SCHEDULER_FUNC"]}},
        "output": ["IMAGE"], "output_name": ["image"]},
    "IPAdapterUnifiedLoader": {"pack": IPADAPTER, "input": {"required": {
        "model": ["MODEL"], "preset": [["LIGHT - SD1.5 only (low strength)", "STANDARD (medium strength)",
                                        "VIT-G (medium strength)", "PLUS (high strength)", "PLUS FACE (portraits)",
                                        "FULL FACE - SD1.5 only (portraits stronger)"]]},
        "optional": {"ipadapter": ["IPADAPTER"]}}, "output": ["MODEL", "IPADAPTER"], "output_name": ["model", "ipadapter"]},
    "IPAdapterAdvanced": {"pack": IPADAPTER, "input": {"required": {
        "model": ["MODEL"], "ipadapter": ["IPADAPTER"], "image": ["IMAGE"], "weight": ["FLOAT", {"default": 1.0}],
        "weight_type": [["linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output",
                         "weak middle", "strong middle", "style transfer", "composition", "strong style transfer",
                         "style and composition", "style transfer precise", "composition precise"]],
        "combine_embeds": [["concat", "add", "subtract", "average", "norm average"]],
        "start_at": ["FLOAT", {"default": 0.0}], "end_at": ["FLOAT", {"default": 1.0}],
        "embeds_scaling": [["V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty"]]},
        "optional": {"image_negative": ["IMAGE"], "attn_mask": ["MASK"], "clip_vision": ["CLIP_VISION"]}},
        "output": ["MODEL"], "output_name": ["MODEL"]},
}
NOTE = "MarkdownNote"  # a front-end-only node: not in /object_info, not in the API graph
TITLE, BADGE, GROUP_TITLE, GAP = 30, 22, 34, 12  # px the web UI draws above a node / above a group's first row
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def is_widget(spec: list[Any]) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def extra_widget_values(spec: list[Any]) -> int:
    """Front-end widgets that follow an input in widgets_values: seed control, LoadImage's upload button."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return int(bool(opts.get("control_after_generate"))) + int(bool(opts.get("image_upload")))


def input_specs(info: dict[str, Any]) -> list[tuple[str, list[Any], bool]]:
    """(name, spec, optional) in the order the front end lays them out."""
    out = []
    for group in ("required", "optional"):
        for name, spec in info["input"].get(group, {}).items():
            out.append((name, spec if isinstance(spec, list) else [spec], group == "optional"))
    return out


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[int, int]
    widgets: dict[str, Any]
    links: dict[str, tuple["Node", int]]
    title: str | None = None
    size: tuple[int, int] | None = None
    color: str | None = None


@dataclass
class Workflow:
    name: str
    info: dict[str, Any]
    nodes: list[Node] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    needs: list[str] = field(default_factory=list)  # third-party packs

    def add(self, type_: str, pos: tuple[int, int], title: str | None = None, size: tuple[int, int] | None = None,
            **kw: Any) -> Node:
        spec = self.info.get(type_) if type_ != NOTE else {"input": {"required": {"text": ["STRING"]}}, "output": []}
        if spec is None:
            raise KeyError(f"{self.name}: no schema for node type {type_}")
        names = {n for n, _, _ in input_specs(spec)}
        unknown = set(kw) - names
        if unknown:
            raise KeyError(f"{self.name}: {type_} has no input(s) {unknown}")
        links = {k: v for k, v in kw.items() if isinstance(v, tuple) and isinstance(v[0], Node)}
        widgets = {k: v for k, v in kw.items() if k not in links}
        node = Node(len(self.nodes) + 1, type_, pos, widgets, links, title, size)
        self.nodes.append(node)
        if type_ in THIRD_PARTY and THIRD_PARTY[type_]["pack"] not in self.needs:
            self.needs.append(THIRD_PARTY[type_]["pack"])
        return node

    def note(self, text: str, pos: tuple[int, int], size: tuple[int, int] = (400, 160)) -> Node:
        n = self.add(NOTE, pos, size=size, text=text)
        n.color = "#432"
        return n

    def group(self, title: str, nodes: list[Node], color: str = "#3f789e") -> None:
        """A titled box around `nodes`; its bounds are computed once the layout has settled (see _settle)."""
        self.groups.append({"id": len(self.groups) + 1, "title": title, "members": nodes, "color": color,
                            "font_size": 24, "flags": {}})

    def _settle(self) -> None:
        """Move nodes until nothing overlaps as the web UI draws it: each node's title bar (TITLE px) and
        source badge (BADGE px) sit above its position, a group's title bar above its first row. Nodes are
        pushed down their column; a group whose title bar another node reaches into moves down below it."""
        for _ in range(100):
            self._settle_columns()
            if not self._clear_group_titles():
                return
        raise RuntimeError(f"{self.name}: the layout does not settle; space the nodes out in build.py")

    def _settle_columns(self) -> None:
        columns: dict[int, list[Node]] = {}
        for n in self.nodes:
            columns.setdefault(n.pos[0], []).append(n)
        for column in columns.values():
            column.sort(key=lambda n: n.pos[1])
            for above, n in zip(column, column[1:]):
                lowest = above.pos[1] + self._size(above)[1] + TITLE + BADGE + GAP
                if n.pos[1] < lowest:
                    n.pos = (n.pos[0], lowest)

    def _clear_group_titles(self) -> bool:
        """Move one group or node so that no node lies in a group it is not a member of (title bar or box);
        False when none does."""
        for g in self.groups:
            x0, y0, w, h = self._group_json(g)["bounding"]
            members = {id(n) for n in g["members"]}
            top_member = min(n.pos[1] for n in g["members"])
            for n in self.nodes:
                nw, nh = self._size(n)
                top, bottom = n.pos[1] - TITLE - BADGE, n.pos[1] + nh
                if id(n) in members or not (n.pos[0] < x0 + w and x0 < n.pos[0] + nw and top < y0 + h and y0 < bottom):
                    continue
                if n.pos[1] < top_member:  # a node above the group: the group moves below it
                    shift = bottom + GAP - y0
                    for m in g["members"]:
                        m.pos = (m.pos[0], m.pos[1] + shift)
                else:  # a node of another group inside this one: it moves below this group's box
                    n.pos = (n.pos[0], y0 + h + TITLE + BADGE + GAP)
                return True
        boxes = [self._group_json(g)["bounding"] for g in self.groups]
        for i, (ax, ay, aw, ah) in enumerate(boxes):
            for j, (bx, by, bw, bh) in enumerate(boxes):
                if i != j and ay <= by and ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                    shift = ay + ah + GAP - by  # the lower group moves below the upper one
                    for m in self.groups[j]["members"]:
                        m.pos = (m.pos[0], m.pos[1] + shift)
                    return True
        return False

    def _group_json(self, g: dict[str, Any]) -> dict[str, Any]:
        boxes = [(n.pos[0], n.pos[1], *self._size(n)) for n in g["members"]]
        x0 = min(b[0] for b in boxes) - 20
        y0 = min(b[1] for b in boxes) - TITLE - BADGE - GROUP_TITLE - GAP  # the group's title clear of every node's
        x1, y1 = max(b[0] + b[2] for b in boxes) + 20, max(b[1] + b[3] for b in boxes) + 20
        x1 = max(x1, x0 + 14 * len(g["title"]))  # room for the title
        return {**{k: v for k, v in g.items() if k != "members"}, "bounding": [x0, y0, x1 - x0, y1 - y0]}

    def _spec(self, n: Node) -> dict[str, Any]:
        if n.type == NOTE:
            return {"input": {"required": {"text": ["STRING"]}}, "output": []}
        return self.info[n.type]

    def _size(self, n: Node) -> tuple[int, int]:
        if n.size:
            return n.size
        spec = self._spec(n)
        rows = len(input_specs(spec)) + len(spec["output"])
        tall = sum(1 for _, s, _ in input_specs(spec) if len(s) > 1 and isinstance(s[1], dict) and s[1].get("multiline"))
        return 320, 46 + 24 * rows + 110 * tall

    # ---- UI format -----------------------------------------------------------------------------
    def ui(self) -> dict[str, Any]:
        self._settle()
        links: list[list[Any]] = []
        out_links: dict[tuple[int, int], list[int]] = {}
        in_link: dict[tuple[int, str], int] = {}
        for n in self.nodes:
            spec = self._spec(n)
            linked_names = [name for name, s, _ in input_specs(spec) if name in n.links]
            for name in linked_names:
                src, slot = n.links[name]
                lid = len(links) + 1
                target_slot = self._ui_inputs(n).index(name)
                links.append([lid, src.id, slot, n.id, target_slot, self._spec(src)["output"][slot]])
                out_links.setdefault((src.id, slot), []).append(lid)
                in_link[(n.id, name)] = lid
        nodes = []
        for order, n in enumerate(self._topological()):
            spec = self._spec(n)
            inputs = []
            for name, s, _ in input_specs(spec):
                if name not in self._ui_inputs(n):
                    continue
                typ = "COMBO" if isinstance(s[0], list) else s[0]
                entry: dict[str, Any] = {"name": name, "type": typ, "link": in_link.get((n.id, name))}
                if is_widget(s):
                    entry["widget"] = {"name": name}
                inputs.append(entry)
            outputs = [{"name": (spec.get("output_name") or spec["output"])[i], "type": t,
                        "links": out_links.get((n.id, i), []), "slot_index": i}
                       for i, t in enumerate(spec["output"])]
            node: dict[str, Any] = {"id": n.id, "type": n.type, "pos": list(n.pos), "size": list(self._size(n)),
                                    "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
                                    "properties": {"Node name for S&R": n.type}, "widgets_values": self._widgets_values(n)}
            if n.title:
                node["title"] = n.title
            if n.color:
                node["color"], node["bgcolor"] = n.color, "#653"
            nodes.append(node)
        return {"last_node_id": len(self.nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
                "groups": [self._group_json(g) for g in self.groups], "config": {}, "extra": {"ds": {"scale": 0.6, "offset": [60, 80]},
                                                               "luna_vault": {"needs": self.needs}},
                "version": 0.4}

    def _ui_inputs(self, n: Node) -> list[str]:
        """Socket inputs, plus widget inputs that are linked (converted to inputs)."""
        return [name for name, s, _ in input_specs(self._spec(n)) if not is_widget(s) or name in n.links]

    def _widgets_values(self, n: Node) -> list[Any]:
        values: list[Any] = []
        for name, s, _ in input_specs(self._spec(n)):
            if not is_widget(s):
                continue
            opts = s[1] if len(s) > 1 and isinstance(s[1], dict) else {}
            if name in n.widgets:
                v = n.widgets[name]
            elif "default" in opts:
                v = opts["default"]
            elif isinstance(s[0], list) and s[0]:
                v = s[0][0]
            elif s[0] == "COMBO" and opts.get("options"):
                v = opts["options"][0]
            else:
                v = {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(s[0], "")
            values.append(v)
            if opts.get("control_after_generate"):
                values.append("fixed")
            if opts.get("image_upload"):
                values.append("image")
        return values

    def _topological(self) -> list[Node]:
        done: list[Node] = []
        seen: set[int] = set()

        def visit(n: Node) -> None:
            if n.id in seen:
                return
            seen.add(n.id)
            for src, _ in n.links.values():
                visit(src)
            done.append(n)

        for n in self.nodes:
            visit(n)
        return done

    # ---- API format ----------------------------------------------------------------------------
    def api(self) -> dict[str, Any]:
        out = {}
        for n in self.nodes:
            if n.type == NOTE:
                continue
            inputs: dict[str, Any] = {}
            values = iter(self._widgets_values(n))
            for name, s, _ in input_specs(self._spec(n)):
                if is_widget(s):
                    v = next(values)
                    for _ in range(extra_widget_values(s)):
                        next(values)
                    if name not in n.links:
                        inputs[name] = v
                if name in n.links:
                    src, slot = n.links[name]
                    inputs[name] = [str(src.id), slot]
            out[str(n.id)] = {"class_type": n.type, "inputs": inputs, "_meta": {"title": n.title or n.type}}
        return out


# ---- the workflows -----------------------------------------------------------------------------
CLIP_VISION = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
CHECKPOINT = "sd_xl_base_1.0.safetensors"


def crop_inputs(w: Workflow, x: int = 0) -> tuple[Node, Node, Node, Node, Node]:
    img = w.add("LoadImage", (x, 0), title="Image to detail", image="example.png")
    cx = w.add("PrimitiveInt", (x, 170), title="crop x", value=320)
    cy = w.add("PrimitiveInt", (x, 280), title="crop y", value=256)
    cs = w.add("PrimitiveInt", (x, 390), title="crop size", value=256)
    crop = w.add("ImageCrop", (x + 360, 170), image=(img, 0), width=(cs, 0), height=(cs, 0), x=(cx, 0), y=(cy, 0))
    return img, cx, cy, cs, crop


def models(w: Workflow, x: int, y: int) -> tuple[Node, Node]:
    ckpt = w.add("CheckpointLoaderSimple", (x, y), ckpt_name=CHECKPOINT)
    cv = w.add("CLIPVisionLoader", (x, y + 130), clip_name=CLIP_VISION)
    return ckpt, cv


def lookup_inputs(w: Workflow, positive: str, negative: str = "blurry, lowres") -> tuple[Node, Node, Node, Node]:
    """Checkpoint, CLIP vision, positive and negative prompts: the second row of the detailer workflows."""
    ckpt, cv = models(w, 0, 640)
    pos = w.add("CLIPTextEncode", (360, 640), title="Positive", text=positive, clip=(ckpt, 1))
    neg = w.add("CLIPTextEncode", (360, 880), title="Negative", text=negative, clip=(ckpt, 1))
    return ckpt, cv, pos, neg


def vault_query(w: Workflow, crop: Node, cv: Node, clip: tuple[Node, int], conditioning: tuple[Node, int],
                at: tuple[int, int]) -> tuple[Node, Node]:
    """Luna Vault Query (auto-detect, k 5, strength 0.3) on the crop, text mode with `clip`, and a preview of its matches."""
    q = w.add("LunaVaultQuery", at, image=(crop, 0), clip_vision=(cv, 0), vault="auto-detect", k=5, strength=0.3,
              blend_mode="average", temperature=0.05, conditioning=conditioning, clip=clip, filter="")
    prev = w.add("PreviewImage", (at[0] + 380, at[1]), title="Matched images", images=(q, 3))
    return q, prev


def crop_latent(w: Workflow, x: int, crop: Node, vae: tuple[Node, int]) -> tuple[Node, Node]:
    """The crop scaled to 1024 px and encoded: the detail pass's starting latent."""
    up = w.add("ImageScale", (x, 170), title="Crop to 1024 px", image=(crop, 0), upscale_method="lanczos", width=1024,
               height=1024, crop="disabled")
    return up, w.add("VAEEncode", (x, 390), pixels=(up, 0), vae=vae)


def detail_and_paste(w: Workflow, x: int, ckpt: Node, model: tuple[Node, int], positive: tuple[Node, int], negative: Node,
                     img: Node, crop: Node, cx: Node, cy: Node, cs: Node, denoise: float = 0.4) -> list[Node]:
    up, enc = crop_latent(w, x, crop, (ckpt, 2))
    ks = w.add("KSampler", (x + 360, 170), model=model, positive=positive, negative=(negative, 0), latent_image=(enc, 0),
               seed=42, steps=25, cfg=6.0, sampler_name="dpmpp_2m", scheduler="karras", denoise=denoise)
    return [up, enc, ks, *paste_back(w, x + 720, (ks, 0), (ckpt, 2), img, cx, cy, cs, "luna_detailed")]


def paste_back(w: Workflow, x: int, samples: tuple[Node, int], vae: tuple[Node, int], img: Node, cx: Node, cy: Node,
               cs: Node, prefix: str) -> list[Node]:
    """Decode the detailed crop, scale it back to the crop's size, paste it into the image, save."""
    dec = w.add("VAEDecode", (x, 170), samples=samples, vae=vae)
    down = w.add("ImageScale", (x, 290), title="Back to crop size", image=(dec, 0), upscale_method="lanczos",
                 width=(cs, 0), height=(cs, 0), crop="disabled")
    paste = w.add("ImageCompositeMasked", (x + 360, 170), title="Paste back", destination=(img, 0), source=(down, 0),
                  x=(cx, 0), y=(cy, 0), resize_source=False)
    save = w.add("SaveImage", (x + 720, 170), images=(paste, 0), filename_prefix=prefix)
    return [dec, down, paste, save]


def detailer_groups(w: Workflow, region: list[Node], lookup_title: str, lookup: list[Node], rest: list[Node]) -> None:
    """The three groups every crop-detailer workflow shows: region, lookup (or translation), detail pass."""
    w.group("1. The region to detail", region)
    w.group(lookup_title, lookup, color="#8A8")
    w.group("3. Detail the crop, paste it back", rest, color="#b58b2a")


def wf_crop_detailer_vault(info: dict[str, Any]) -> Workflow:
    w = Workflow("luna_crop_detailer_vault", info)
    img, cx, cy, cs, crop = crop_inputs(w)
    ckpt, cv, pos, neg = lookup_inputs(w, "extreme close-up of an eye, detailed iris, sharp focus",
                                       "blurry, lowres, deformed iris")
    q, prev = vault_query(w, crop, cv, (ckpt, 1), (pos, 0), (760, 640))
    rest = detail_and_paste(w, 1140, ckpt, (ckpt, 0), (q, 0), neg, img, crop, cx, cy, cs)
    detailer_groups(w, [img, cx, cy, cs, crop], "2. Look the crop up in the vault", [ckpt, cv, pos, neg, q, prev], rest)
    w.note("## Crop detailer with a Luna vault\n\nSet **crop x / y / size** to the region (an eye, a ring, a sleeve). "
           "*Luna Vault Query* embeds the crop with the CLIP vision model the vault was built with, finds the 5 closest "
           "images in `models/vaults` (auto-detect picks the vault), and blends their prompts' conditioning into your "
           "positive (strength 0.3). The preview shows the matches and their similarity. The detail pass re-draws the "
           "crop at 1024 px with denoise 0.4 and pastes it back.", (0, -260), (700, 200))
    return w


def wf_detailer_segs(info: dict[str, Any]) -> Workflow:
    w = Workflow("luna_detailer_segs_impact", info)
    img = w.add("LoadImage", (0, 0), title="Image to detail", image="example.png")
    ckpt, cv = models(w, 0, 820)
    det = w.add("UltralyticsDetectorProvider", (0, 330), model_name="bbox/face_yolov8m.pt")
    segs = w.add("BboxDetectorSEGS", (360, 0), bbox_detector=(det, 0), image=(img, 0), threshold=0.5, dilation=10,
                 crop_factor=3.0, drop_size=10, labels="all")
    pick = w.add("ImpactSEGSOrderedFilter", (360, 330), title="Largest detection", segs=(segs, 0), target="area(=w*h)",
                 order=True, take_start=0, take_count=1)
    crops = w.add("SEGSToImageList", (360, 560), segs=(pick, 0))
    pos = w.add("CLIPTextEncode", (360, 820), title="Positive", text="detailed face, sharp focus", clip=(ckpt, 1))
    neg = w.add("CLIPTextEncode", (360, 1060), title="Negative", text="blurry, lowres", clip=(ckpt, 1))
    q = w.add("LunaVaultQuery", (720, 820), image=(crops, 0), clip_vision=(cv, 0), vault="auto-detect", k=5, strength=0.3,
              blend_mode="average", temperature=0.05, conditioning=(pos, 0), clip=(ckpt, 1), filter="")
    prev = w.add("PreviewImage", (1100, 820), title="Matched images", images=(q, 3))
    d = w.add("DetailerForEach", (1100, 0), image=(img, 0), segs=(pick, 0), model=(ckpt, 0), clip=(ckpt, 1), vae=(ckpt, 2),
              guide_size=512, guide_size_for=True, max_size=1024, seed=42, steps=20, cfg=6.0, sampler_name="dpmpp_2m",
              scheduler="karras", positive=(q, 0), negative=(neg, 0), denoise=0.45, feather=5, noise_mask=True,
              force_inpaint=True, wildcard="", cycle=1, inpaint_model=False, noise_mask_feather=20)
    save = w.add("SaveImage", (1460, 0), images=(d, 0), filename_prefix="luna_segs_detailed")
    w.group("1. Detect (Impact Pack)", [img, det, segs, pick, crops], color="#a1309b")
    w.group("2. Vault lookup of the detection", [ckpt, cv, pos, neg, q, prev], color="#8A8")
    w.group("3. Detail it (Impact Pack)", [d, save], color="#b58b2a")
    w.note("## Per-detection detailer (needs ComfyUI-Impact-Pack + Impact-Subpack)\n\nThe detector finds faces (or "
           "eyes/hands with another model); *SEGS Filter* keeps the largest; its crop goes to *Luna Vault Query* and the "
           "blended conditioning drives *Detailer (SEGS)*. For several detections, chain one detailer per detection "
           "(take_start 0, 1, ...).", (0, -260), (700, 200))
    return w


def wf_build_from_generation(info: dict[str, Any]) -> Workflow:
    w = Workflow("luna_build_vault_from_generation", info)
    prompt = w.add("PrimitiveStringMultiline", (0, 0), title="Prompt (encoded and stored)",
                   value="extreme close-up of green almond-shaped eyes, intricate iris pattern, photorealistic")
    ckpt, cv = models(w, 0, 260)
    pos = w.add("CLIPTextEncode", (360, 0), title="Positive", text=(prompt, 0), clip=(ckpt, 1))
    neg = w.add("CLIPTextEncode", (360, 260), title="Negative", text="blurry, lowres", clip=(ckpt, 1))
    lat = w.add("EmptyLatentImage", (360, 520), width=1024, height=1024, batch_size=4)
    ks = w.add("KSampler", (720, 0), model=(ckpt, 0), positive=(pos, 0), negative=(neg, 0), latent_image=(lat, 0), seed=1,
               steps=25, cfg=6.0, sampler_name="dpmpp_2m", scheduler="karras", denoise=1.0)
    dec = w.add("VAEDecode", (1080, 0), samples=(ks, 0), vae=(ckpt, 2))
    save = w.add("SaveImage", (1080, 120), images=(dec, 0), filename_prefix="luna_dataset/eyes")
    b = w.add("LunaVaultBuilder", (1440, 0), clip_vision=(cv, 0), vault_name="eyes", mode="append", category="eyes",
              thumbnails=True, images=(dec, 0), prompts=(prompt, 0), metadata='{"checkpoint": "sd_xl_base_1.0"}')
    show = w.add("PreviewAny", (1440, 620), title="Builder summary", source=(b, 0))
    w.group("Generate", [prompt, ckpt, cv, pos, neg, lat, ks, dec, save])
    w.group("Append every image with its prompt", [b, show], color="#8A8")
    w.note("## Build a vault while you generate\n\nEach run appends the 4 images and the prompt that made them to "
           "`models/vaults/eyes.vault` (duplicates are skipped). Change the prompt, queue again. Connect the checkpoint's "
           "CLIP to the builder's `clip` to bake conditioning (then queries need no CLIP, but only for this model family).",
           (0, -260), (700, 200))
    return w


def wf_build_from_folder(info: dict[str, Any]) -> Workflow:
    w = Workflow("luna_build_vault_from_folder", info)
    cv = w.add("CLIPVisionLoader", (0, 0), clip_name=CLIP_VISION)
    b = w.add("LunaVaultBuilder", (360, 0), clip_vision=(cv, 0), vault_name="eyes", mode="append", category="eyes",
              thumbnails=True, folder="datasets/eyes")
    show = w.add("PreviewAny", (760, 0), title="Builder summary", source=(b, 0))
    w.group("Embed every image of a dataset folder into a vault", [cv, b, show], color="#8A8")
    w.note("## Build a vault from a folder\n\nPut a dataset in `ComfyUI/input/datasets/eyes/`: images with a `.txt` "
           "(the prompt) or `.json` sidecar, or PNGs saved by ComfyUI/A1111 (the prompt is read from the file). Queue: "
           "the builder embeds every image (progress bar, cancel any time; a re-run skips what is already in the vault) "
           "and reports what it skipped. For 100k+ images use `luna-vault extract` instead.", (0, -260), (700, 200))
    return w


def wf_vision_translator(info: dict[str, Any]) -> Workflow:
    w = Workflow("luna_vision_translator_hybrid", info)
    img, cx, cy, cs, crop = crop_inputs(w)
    ckpt, cv, pos, neg = lookup_inputs(w, "extreme close-up of an eye, sharp focus")
    t = w.add("LunaVisionTranslator", (760, 640), image=(crop, 0), clip_vision=(cv, 0), projector="eyes-sdxl.safetensors",
              strength=0.3, blend_mode="average", conditioning=(pos, 0), vault="eyes", threshold=0.9, k=5, clip=(ckpt, 1))
    rep = w.add("PreviewAny", (1140, 640), title="Which path each crop took", source=(t, 2))
    rest = detail_and_paste(w, 1140, ckpt, (ckpt, 0), (t, 0), neg, img, crop, cx, cy, cs)
    detailer_groups(w, [img, cx, cy, cs, crop], "2. Translate the crop (projector, or the vault when it knows the look)", [ckpt, cv, pos, neg, t, rep], rest)
    w.note("## Vision Translator, hybrid with a vault\n\nA projector (`luna-vault train`, in `models/luna_projectors`) "
           "turns the crop straight into conditioning, so crops the vault has never seen still get a nudge. With a vault "
           "picked, crops whose best match reaches the threshold use the vault instead; the report says which path "
           "each crop took.", (0, -260), (700, 200))
    return w


def wf_ipadapter(info: dict[str, Any]) -> Workflow:
    w = Workflow("luna_ipadapter_with_vault", info)
    img, cx, cy, cs, crop = crop_inputs(w)
    ckpt, cv, pos, neg = lookup_inputs(w, "extreme close-up of an eye, detailed iris")
    ipl = w.add("IPAdapterUnifiedLoader", (360, 1120), model=(ckpt, 0), preset="PLUS (high strength)")
    ipa = w.add("IPAdapterAdvanced", (760, 1120), model=(ipl, 0), ipadapter=(ipl, 1), image=(crop, 0), weight=0.6,
                weight_type="linear", combine_embeds="concat", start_at=0.0, end_at=1.0, embeds_scaling="V only",
                clip_vision=(cv, 0))
    q, prev = vault_query(w, crop, cv, (ckpt, 1), (pos, 0), (760, 640))
    rest = detail_and_paste(w, 1140, ckpt, (ipa, 0), (q, 0), neg, img, crop, cx, cy, cs, denoise=0.5)
    detailer_groups(w, [img, cx, cy, cs, crop], "2. Keep the structure (IP-Adapter) + remember the look (vault)", [ckpt, cv, ipl, ipa, pos, neg, q, prev], rest)
    w.note("## IP-Adapter + vault (needs ComfyUI_IPAdapter_plus)\n\nIP-Adapter conditions the model on the crop itself "
           "(structure, composition); the vault adds the text that made the closest known images (the exact colour, "
           "metal, fabric). Both use the same CLIP vision model (the IP-Adapter ViT-H one).", (0, -260), (700, 200))
    return w


def wf_query_preview(info: dict[str, Any]) -> Workflow:
    w = Workflow("luna_vault_lookup", info)
    img = w.add("LoadImage", (0, 0), title="Crop to look up", image="example.png")
    cv = w.add("CLIPVisionLoader", (0, 400), clip_name=CLIP_VISION)
    clip = w.add("CLIPLoader", (0, 520), clip_name="clip_l.safetensors", type="stable_diffusion")
    pos = w.add("CLIPTextEncode", (360, 400), title="Positive", text="a detailed close-up", clip=(clip, 0))
    q = w.add("LunaVaultQuery", (760, 0), image=(img, 0), clip_vision=(cv, 0), vault="auto-detect", k=5, strength=0.3,
              blend_mode="average", temperature=0.05, conditioning=(pos, 0), clip=(clip, 0), filter="")
    prompts = w.add("PreviewAny", (1140, 0), title="Best prompt per crop", source=(q, 2))
    report = w.add("PreviewAny", (1140, 200), title="Report (JSON)", source=(q, 4))
    thumbs = w.add("PreviewImage", (1140, 460), title="Matched images", images=(q, 3))
    w.group("Look a crop up: what does the vault know?", [img, cv, clip, pos, q, prompts, report, thumbs], color="#8A8")
    w.note("## Look a crop up\n\nNo diffusion model needed: see which stored images a crop matches, their prompts and "
           "similarities, before using the vault in a detailer.", (0, -260), (700, 180))
    return w


FLUX_UNET = "flux1-dev.safetensors"
FLUX_CLIP_L = "clip_l.safetensors"
FLUX_T5 = "t5xxl_fp16.safetensors"
FLUX_VAE = "ae.safetensors"


def wf_flux_detailer(info: dict[str, Any]) -> Workflow:
    """Flux as its users build it: UNet + dual CLIP (flux) + VAE files, FluxGuidance, a guider and
    SamplerCustomAdvanced; the vault is queried in text mode with the Flux CLIP."""
    w = Workflow("luna_flux_detailer_vault", info)
    img, cx, cy, cs, crop = crop_inputs(w)
    unet = w.add("UNETLoader", (0, 640), unet_name=FLUX_UNET, weight_dtype="default")
    clip = w.add("DualCLIPLoader", (0, 770), clip_name1=FLUX_CLIP_L, clip_name2=FLUX_T5, type="flux", device="default")
    vae = w.add("VAELoader", (0, 930), vae_name=FLUX_VAE)
    cv = w.add("CLIPVisionLoader", (0, 1040), clip_name=CLIP_VISION)
    pos = w.add("CLIPTextEncode", (360, 640), title="Prompt (Flux CLIP)", text="extreme close-up of an eye, detailed iris",
                clip=(clip, 0))
    guide = w.add("FluxGuidance", (360, 880), conditioning=(pos, 0), guidance=3.5)
    q, prev = vault_query(w, crop, cv, (clip, 0), (guide, 0), (760, 640))
    x = 1140
    up, enc = crop_latent(w, x, crop, (vae, 0))
    guider = w.add("BasicGuider", (x + 360, 170), model=(unet, 0), conditioning=(q, 0))
    noise = w.add("RandomNoise", (x + 360, 300), noise_seed=42)
    sampler = w.add("KSamplerSelect", (x + 360, 420), sampler_name="euler")
    sigmas = w.add("BasicScheduler", (x + 360, 530), model=(unet, 0), scheduler="simple", steps=20, denoise=0.4)
    ks = w.add("SamplerCustomAdvanced", (x + 720, 170), noise=(noise, 0), guider=(guider, 0), sampler=(sampler, 0),
               sigmas=(sigmas, 0), latent_image=(enc, 0))
    tail = paste_back(w, x + 1080, (ks, 0), (vae, 0), img, cx, cy, cs, "luna_flux_detailed")
    detailer_groups(w, [img, cx, cy, cs, crop], "2. Look the crop up in the vault (Flux CLIP, text mode)",
                    [unet, clip, vae, cv, pos, guide, q, prev], [up, enc, guider, noise, sampler, sigmas, ks, *tail])
    w.note("## Flux crop detailer with a Luna vault\n\nFiles: `models/diffusion_models/flux1-dev.safetensors`, "
           "`models/text_encoders/clip_l.safetensors` + `t5xxl_fp16.safetensors`, `models/vae/ae.safetensors`, and the "
           "CLIP vision model your vault was built with. *Luna Vault Query* encodes the matched prompts with the Flux "
           "CLIP (T5 + CLIP-L: text mode works with any vault) and blends them into your prompt; FluxGuidance's value "
           "is kept. Flux dev takes no negative: a BasicGuider drives the detail pass (denoise 0.4).", (0, -260), (760, 200))
    return w


QWEN_UNET = "qwen_image_fp8_e4m3fn.safetensors"
QWEN_CLIP = "qwen_2.5_vl_7b_fp8_scaled.safetensors"
QWEN_VAE = "qwen_image_vae.safetensors"


def wf_qwen_image_detailer(info: dict[str, Any]) -> Workflow:
    """Qwen-Image as ComfyUI's own template loads it: UNet + CLIPLoader (type qwen_image) + VAE files,
    ModelSamplingAuraFlow (shift 3.1), KSampler at cfg 2.5; the vault is queried in text mode with the Qwen CLIP."""
    w = Workflow("luna_qwen_image_detailer_vault", info)
    img, cx, cy, cs, crop = crop_inputs(w)
    unet = w.add("UNETLoader", (0, 640), unet_name=QWEN_UNET, weight_dtype="default")
    clip = w.add("CLIPLoader", (0, 770), clip_name=QWEN_CLIP, type="qwen_image", device="default")
    vae = w.add("VAELoader", (0, 930), vae_name=QWEN_VAE)
    cv = w.add("CLIPVisionLoader", (0, 1040), clip_name=CLIP_VISION)
    shift = w.add("ModelSamplingAuraFlow", (0, 1150), model=(unet, 0), shift=3.1)
    pos = w.add("CLIPTextEncode", (360, 640), title="Prompt (Qwen CLIP)", text="extreme close-up of an eye, detailed iris",
                clip=(clip, 0))
    neg = w.add("CLIPTextEncode", (360, 880), title="Negative", text="", clip=(clip, 0))
    q, prev = vault_query(w, crop, cv, (clip, 0), (pos, 0), (760, 640))
    x = 1140
    up, enc = crop_latent(w, x, crop, (vae, 0))
    ks = w.add("KSampler", (x + 360, 170), model=(shift, 0), positive=(q, 0), negative=(neg, 0), latent_image=(enc, 0),
               seed=42, steps=20, cfg=2.5, sampler_name="euler", scheduler="simple", denoise=0.4)
    tail = paste_back(w, x + 720, (ks, 0), (vae, 0), img, cx, cy, cs, "luna_qwen_image_detailed")
    detailer_groups(w, [img, cx, cy, cs, crop], "2. Look the crop up in the vault (Qwen CLIP, text mode)",
                    [unet, clip, vae, cv, shift, pos, neg, q, prev], [up, enc, ks, *tail])
    w.note("## Qwen-Image crop detailer with a Luna vault\n\nFiles: `models/diffusion_models/qwen_image_fp8_e4m3fn.safetensors`, "
           "`models/text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors` (CLIPLoader type *qwen_image*), "
           "`models/vae/qwen_image_vae.safetensors`, and the CLIP vision model your vault was built with. *Luna Vault "
           "Query* encodes the matched prompts with the Qwen CLIP (any text-mode vault works, whatever model made its "
           "images) and blends them into your prompt. The detail pass re-draws the crop at 1024 px (cfg 2.5, denoise 0.4).",
           (0, -260), (760, 200))
    return w


WORKFLOWS = [wf_crop_detailer_vault, wf_detailer_segs, wf_build_from_generation, wf_build_from_folder,
             wf_vision_translator, wf_ipadapter, wf_query_preview, wf_flux_detailer, wf_qwen_image_detailer]


def object_info_from_comfyui() -> dict[str, Any]:
    import tempfile

    sys.path.insert(0, str(REPO / "tests"))
    from comfy_server import ComfyServer

    with tempfile.TemporaryDirectory() as tmp:
        s = ComfyServer(Path(tmp))
        s.prepare()
        s.start()
        try:
            return s.get("/object_info")
        finally:
            s.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--object-info", help="a saved /object_info JSON (default: start ../shared/comfyui)")
    args = ap.parse_args()
    info = json.loads(Path(args.object_info).read_text()) if args.object_info else object_info_from_comfyui()
    info = {**info, **{k: v for k, v in THIRD_PARTY.items() if k not in info}}
    (HERE / "api").mkdir(exist_ok=True)
    examples = REPO / "example_workflows"
    examples.mkdir(exist_ok=True)
    for make in WORKFLOWS:
        w = make(info)
        ui = json.dumps(w.ui(), indent=1) + "\n"
        (examples / f"{w.name}.json").write_text(ui)
        (HERE / "api" / f"{w.name}.json").write_text(json.dumps(w.api(), indent=1) + "\n")
        print(f"{w.name}: {len(w.nodes)} nodes" + (f"; needs {', '.join(w.needs)}" if w.needs else ""))


if __name__ == "__main__":
    main()
