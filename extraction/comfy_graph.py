"""What made a ComfyUI image, read from its graph by following typed edges.

From the output node that saved the image, upstream through IMAGE edges (decoders, upscalers,
detailers) and LATENT edges (latent upscales, composites) to the sampler pass that produced it;
from that sampler (or its guider) back through the CONDITIONING of its `positive` input to the
text of the encoders, and through its `model` input to the loader and the LoRAs on that path.

Edges are followed by type and by name, not by lists of node names:
- an output named like an input of the same node (positive -> positive, negative -> negative:
  ControlNetApplyAdvanced, InstructPixToPix, WanImageToVideo...) continues through that input only;
- other CONDITIONING outputs continue through every CONDITIONING input, texts joined in order
  (combine, concat, area, timestep ranges, FluxGuidance, style models, unCLIP), never through an
  input named for the other side; GLIGEN-like nodes that add a region's text follow only the
  conditioning they were given;
- bundles (Impact's BASIC_PIPE, Efficiency's pipes) are followed with the field wanted (positive or
  negative) until the node that packed it;
- a node that makes CONDITIONING from a CLIP and text is an encoder: its prompt text is read from
  its text inputs, values or STRING links (primitives, concatenation, wildcard nodes' populated text);
  a text input named for the negative side (`negative_prompt`, `text_negative`) goes to the negative only.
Node types (output names and types, which inputs are links and which multiline text) come from, in
order: the UI workflow stored beside the graph (exactly the nodes that ran, custom ones included),
the definitions of a running ComfyUI when given (`NodeTypes.from_object_info`), and a built-in
table of ComfyUI's core nodes and popular packs (`comfy_node_types.json`).
Every dead end is a precise reason; cycles, missing nodes and oversized graphs stop the walk.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

MAX_NODES = 200_000
MAX_STEPS = 200_000

# outputs that save or show an image, when the table does not say (custom savers and previews)
_OUTPUT_NAME = re.compile(r"save|preview|videocombine|image.?output", re.I)
_IMAGE_TYPES = {"IMAGE"}
_LATENT_TYPES = {"LATENT"}
_COND = "CONDITIONING"
_PLAIN = {"MODEL", "CLIP", "VAE", "IMAGE", "LATENT", "MASK", "INT", "FLOAT", "STRING", "BOOLEAN", "NOISE", "SAMPLER",
          "SIGMAS", "CONTROL_NET", "UPSCALE_MODEL", "CLIP_VISION", "CLIP_VISION_OUTPUT", "STYLE_MODEL", "GLIGEN",
          "SCRIPT", "COMBO", None}
_PICTURE = {"IMAGE", "CLIP_VISION", "CLIP_VISION_OUTPUT", "LATENT"}
_VALUES = {"INT", "FLOAT", "BOOLEAN", "COMBO"}  # widget values that never carry prompt text
_STRUCT = (_PLAIN - _VALUES - {"STRING", None}) | {_COND}  # sockets that carry models, pictures or conditioning
POSITIVE_NAMES = ("positive", "conditioning", "cond", "cond1", "conditioning_1", "positive_cond")
NEGATIVE_NAMES = ("negative", "negative_cond", "uncond")
SEED_NAMES = ("seed", "noise_seed")
SETTING_NAMES = ("steps", "cfg", "sampler_name", "scheduler", "denoise")
LOADER_NAMES = ("ckpt_name", "unet_name", "model_name", "model_path", "gguf_name", "base_ckpt_name")
SIZE_SOURCES = ("width", "height")


@dataclass(frozen=True)
class NodeType:
    """What the reader needs of a node class: its outputs, the type of each input, prompt-text inputs."""

    outputs: tuple[tuple[str, str], ...] = ()  # (name, type) per output slot
    inputs: tuple[tuple[str, str], ...] = ()  # (name, type) in definition order; widgets have their value type
    output_node: bool = False
    multiline: frozenset[str] = frozenset()  # STRING inputs that hold prompt text
    text_outputs: Mapping[str, str] = field(default_factory=dict)  # encoder output ("name" or "name|side") -> text input
    role: str = ""  # "sampler" / "detailer" where the types cannot tell (custom packs)

    def input_type(self, name: str) -> str | None:
        return next((t for n, t in self.inputs if n == name), None)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"out": [list(o) for o in self.outputs], "in": [list(i) for i in self.inputs]}
        if self.output_node:
            d["output_node"] = True
        if self.multiline:
            d["multiline"] = sorted(self.multiline)
        if self.text_outputs:
            d["text_outputs"] = dict(self.text_outputs)
        if self.role:
            d["role"] = self.role
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "NodeType":
        return cls(outputs=tuple((str(a), str(b)) for a, b in d.get("out", [])),
                   inputs=tuple((str(a), str(b)) for a, b in d.get("in", [])),
                   output_node=bool(d.get("output_node", False)), multiline=frozenset(d.get("multiline", ())),
                   text_outputs=dict(d.get("text_outputs", {})), role=str(d.get("role", "")))


class NodeTypes:
    """Node class -> NodeType; `NodeTypes.builtin()` is ComfyUI's core and popular packs."""

    def __init__(self, table: Mapping[str, NodeType]) -> None:
        self.table = dict(table)

    def get(self, class_type: str) -> NodeType | None:
        return self.table.get(class_type)

    def merged(self, other: "NodeTypes") -> "NodeTypes":
        """These types, with `other`'s entries winning (e.g. a live ComfyUI's over the built-in table)."""
        return NodeTypes({**self.table, **other.table})

    @classmethod
    @lru_cache(maxsize=1)
    def builtin(cls) -> "NodeTypes":
        raw = json.loads((Path(__file__).with_name("comfy_node_types.json")).read_text(encoding="utf-8"))
        return cls({k: NodeType.from_json(v) for k, v in raw["nodes"].items()})

    @classmethod
    def from_object_info(cls, info: Mapping[str, Any]) -> "NodeTypes":
        """From ComfyUI's /object_info (or the same built from NODE_CLASS_MAPPINGS)."""
        table = {}
        for name, d in info.items():
            if not isinstance(d, Mapping):
                continue
            outs = d.get("output") or []
            names = d.get("output_name") or outs
            inputs, multiline = [], set()
            for group in ("required", "optional"):
                for iname, spec in ((d.get("input") or {}).get(group) or {}).items():
                    spec = spec if isinstance(spec, (list, tuple)) else [spec]
                    kind = "COMBO" if isinstance(spec[0], (list, tuple)) else str(spec[0])
                    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
                    inputs.append((iname, kind))
                    if kind == "STRING" and opts.get("multiline"):
                        multiline.add(iname)
            table[name] = NodeType(tuple((str(n), str(t)) for n, t in zip(names, outs)), tuple(inputs),
                                   bool(d.get("output_node")), frozenset(multiline))
        return cls(table)


class GraphError(ValueError):
    """The graph cannot be read: the message is the reason given to the user."""


@dataclass
class GraphReading:
    """What the graph says about the image: the prompt (None with a reason), and how it was found."""

    prompt: str | None
    negative: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)  # output node -> ... -> sampler -> encoder(s)
    reason: str | None = None
    output_size: tuple[int, int] | None = None  # what the output node that wrote the file saves, where known


def is_link(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], (str, int))
            and not isinstance(value[0], bool) and isinstance(value[1], int) and not isinstance(value[1], bool))


class Graph:
    """An API-format graph with the type of every node's sockets, however it is known."""

    def __init__(self, api: Mapping[str, Any], types: NodeTypes | None = None,
                 ui: Mapping[str, Any] | None = None) -> None:
        if not isinstance(api, Mapping):
            raise GraphError(f"the graph is a JSON {type(api).__name__}, not an object of nodes")
        if len(api) > MAX_NODES:
            raise GraphError(f"the graph has {len(api)} nodes, over the {MAX_NODES} this reader follows")
        self.nodes = {str(k): v for k, v in api.items()
                      if isinstance(v, Mapping) and isinstance(v.get("class_type"), str)}
        if not self.nodes:
            raise GraphError("the graph holds no nodes (no object with a class_type)")
        self.types = types or NodeTypes.builtin()
        self.ui_sockets = _ui_sockets(ui) if isinstance(ui, Mapping) else {}
        self.ui_widgets = _ui_widgets(ui) if isinstance(ui, Mapping) else {}
        self.memo: dict[str, dict[Any, Any]] = {}

    def ui_text(self, nid: str) -> list[str]:
        """Prose in the UI workflow's widget values of a node (for nodes whose text the API graph lacks)."""
        return [v for v in self.ui_widgets.get(nid, []) if isinstance(v, str) and _looks_like_text(v)]

    def class_type(self, nid: str) -> str:
        return str(self.nodes[nid]["class_type"]) if nid in self.nodes else "?"

    def label(self, nid: str) -> str:
        return f"{self.class_type(nid)} #{nid}"

    def inputs(self, nid: str) -> Mapping[str, Any]:
        if nid not in self.nodes:
            return {}
        inputs = self.nodes[nid].get("inputs")
        return inputs if isinstance(inputs, Mapping) else {}

    def node_type(self, nid: str) -> NodeType | None:
        return self.types.get(self.class_type(nid)) if nid in self.nodes else None

    def output(self, nid: str, slot: int) -> tuple[str | None, str | None]:
        """(name, type) of an output slot: from the UI workflow when it has the node, else the type table."""
        ui = self.ui_sockets.get(nid)
        if ui is not None and slot < len(ui[0]):
            return ui[0][slot]
        nt = self.node_type(nid)
        if nt is not None and slot < len(nt.outputs):
            return nt.outputs[slot]
        return None, None

    def outputs(self, nid: str) -> list[tuple[str | None, str | None]]:
        ui = self.ui_sockets.get(nid)
        if ui is not None and ui[0]:
            return list(ui[0])
        nt = self.node_type(nid)
        return list(nt.outputs) if nt is not None else []

    def input_type(self, nid: str, name: str) -> str | None:
        ui = self.ui_sockets.get(nid)
        if ui is not None and name in ui[1]:
            return ui[1][name]
        nt = self.node_type(nid)
        if nt is not None:
            found = nt.input_type(name)
            if found is not None:
                return found
        value = self.inputs(nid).get(name)
        if is_link(value) and str(value[0]) in self.nodes:  # type of what feeds it
            return self.output(str(value[0]), int(value[1]))[1]
        return None

    def links(self, nid: str) -> list[tuple[str, str, int]]:
        """(input name, source node, source slot) for each linked input, in the node's own order."""
        out = []
        for name, value in self.inputs(nid).items():
            if is_link(value):
                out.append((str(name), str(value[0]), int(value[1])))
        return out

    def require(self, src: str, where: str) -> None:
        if src not in self.nodes:
            raise GraphError(f"{where} links to node {src}, which is not in the graph")


def _ui_sockets(ui: Mapping[str, Any]) -> dict[str, tuple[list[tuple[str | None, str | None]], dict[str, str]]]:
    """node id -> (outputs [(name, type)], {input name: type}) from a UI-format workflow."""
    out: dict[str, tuple[list[tuple[str | None, str | None]], dict[str, str]]] = {}
    nodes = ui.get("nodes")
    if not isinstance(nodes, list):
        return out
    for node in nodes[:MAX_NODES]:
        if not isinstance(node, Mapping) or "id" not in node:
            continue
        outs = []
        for o in node.get("outputs") or []:
            if isinstance(o, Mapping):
                outs.append((str(o.get("name")) if o.get("name") is not None else None,
                             str(o.get("type")) if o.get("type") is not None else None))
        ins = {}
        for i in node.get("inputs") or []:
            if isinstance(i, Mapping) and i.get("name") is not None and i.get("type") is not None:
                ins[str(i["name"])] = str(i["type"])
        out[str(node["id"])] = (outs, ins)
    return out


def _ui_widgets(ui: Mapping[str, Any]) -> dict[str, list[Any]]:
    nodes = ui.get("nodes")
    if not isinstance(nodes, list):
        return {}
    return {str(n["id"]): list(n["widgets_values"]) for n in nodes[:MAX_NODES]
            if isinstance(n, Mapping) and "id" in n and isinstance(n.get("widgets_values"), list)}


# ---- reading ---------------------------------------------------------------------------------------
class _Budget:
    def __init__(self) -> None:
        self.steps = 0

    def tick(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise GraphError(f"the graph needs more than {MAX_STEPS} steps to follow; it is too large or tangled")


def read_graph(api: Mapping[str, Any], ui: Mapping[str, Any] | None = None, types: NodeTypes | None = None,
               image_size: tuple[int, int] | None = None, image_format: str | None = None,
               file_name: str | None = None) -> GraphReading:
    """The prompt of the sampler pass that made the image, with negative, model, LoRAs and settings.

    When a graph saves several images, the file itself says which one it is: its name (ComfyUI names
    files after the saver's prefix), its format (a WebP comes from a WebP saver) and its size (a hires
    fix saves both passes at different sizes). Where they do
    not tell passes of different prompts apart, there is no prompt, with the reason. Never raises on
    bad input: a GraphReading with `reason` says why there is no prompt.
    """
    try:
        graph = Graph(api, types, ui)
        return _read(graph, _File(tuple(image_size) if image_size else None, image_format, file_name))
    except GraphError as e:
        return GraphReading(None, reason=str(e))
    except RecursionError:
        return GraphReading(None, reason="the graph is nested too deeply to follow")


@dataclass
class _File:
    """What the image file itself says about which output wrote it."""

    size: tuple[int, int] | None = None
    format: str | None = None  # PNG, WEBP, JPEG
    name: str | None = None  # the file name, e.g. ComfyUI's "{prefix}_00012_.png"


def _read(graph: Graph, file: _File) -> GraphReading:
    budget = _Budget()
    outputs = _output_nodes(graph)
    found = {out: _find_sampler(graph, out, budget) for out in outputs}
    # the file is one of the images the graph saves or shows: a pass, or a copy of a loaded image
    candidates = [o for o in outputs if found[o] is not None or _shows_loaded_image(graph, o, budget)]
    passes = [(o, *found[o]) for o in candidates if found[o] is not None]
    if not passes:  # no saver in the graph: samplers that show their own result (Efficiency's KSampler)
        passes = [(s, s, [f"{graph.label(s)} (shows its image)"]) for s in _final_samplers(graph)]
        candidates = [p[0] for p in passes]
    if not passes:
        if not outputs:
            return GraphReading(None, reason="the graph has no output node that saves or previews an image")
        return GraphReading(None, reason="the graph has no sampler upstream of its image output ("
                            + ", ".join(graph.label(o) for o in outputs[:4]) + ")")
    readings = {p[0]: _composite(graph, p[0], _pass_reading(graph, *p, budget), budget) for p in passes}
    return _choose(graph, candidates, {p[0]: p for p in passes}, readings, file, budget)


def _composite(graph: Graph, out: str, reading: GraphReading, budget: _Budget) -> GraphReading:
    """The reading of an output whose picture is put together from several passes (a stitched comic, a batch, a
    blend): theirs when they share the prompt, none when they differ."""
    passes: list[str] = []
    queue, seen = [out], {out}
    while queue:
        budget.tick()
        nid = queue.pop(0)
        for name, src, slot in graph.links(nid):
            kind = graph.output(src, slot)[1] or graph.input_type(nid, name)
            if src in seen or src not in graph.nodes or kind not in _IMAGE_TYPES | _LATENT_TYPES:
                continue
            seen.add(src)
            if _is_sampler(graph, src):
                passes.append(src)
            else:
                queue.append(src)
    if len(passes) < 2 or reading.prompt is None:
        return reading
    others = {_pass_reading(graph, out, p, [], budget).prompt for p in passes}
    if others <= {reading.prompt}:
        return reading
    return GraphReading(None, path=reading.path, reason=f"{graph.label(out)} saves a picture put together from "
                        f"{len(passes)} passes with different prompts (" + ", ".join(graph.label(p) for p in passes[:4]) + ")")


_PREVIEW = re.compile(r"preview", re.I)
_COMFY_NAME = re.compile(r"^(.*)_\d{5}_?$")  # ComfyUI's savers: "{prefix}_{counter:05}_.png"
MIN_SIZE_EVIDENCE = 64  # smaller images are crops or thumbnails kept for their metadata: their size says nothing


def _choose(graph: Graph, candidates: list[str], by_out: Mapping[str, tuple[str, str, list[str]]],
            readings: Mapping[str, GraphReading], file: _File, budget: _Budget) -> GraphReading:
    """The reading of the output that wrote this file, told by the file's name, format and size; outputs
    with different prompts that the file does not tell apart give no prompt."""
    keep = _named(graph, candidates, file.name)
    if file.format:
        keep = [o for o in keep if file.format.upper() in _formats(graph, o)] or keep
    sizes = {o: _output_size(graph, o, budget) for o in keep}
    evidence = file.size is not None and min(file.size) >= MIN_SIZE_EVIDENCE
    exact = [o for o in keep if evidence and sizes[o] == tuple(file.size)]
    if exact:  # those of this size, and those whose size nobody can say
        keep = [o for o in keep if o in exact or sizes[o] is None]
    elif evidence:  # a size they could have: unknown, or the same shape scaled
        keep = [o for o in keep if sizes[o] is None or _same_shape(sizes[o], file.size)] or keep
    # saved images before previews: previews go to ComfyUI's temp folder, datasets are made of what was saved
    keep = [o for o in keep if not _PREVIEW.search(graph.class_type(o))] or keep
    prompts = {readings[o].prompt if o in readings else None for o in keep}
    if len(prompts) == 1:
        chosen = keep[0]
        if chosen in readings:
            return replace(readings[chosen], output_size=sizes[chosen])
        return GraphReading(None, reason=f"the image is saved by {graph.label(chosen)} from a loaded image no sampler made")
    # a guess between them (the first saver, the last pass of a chain) would be wrong as often as the file is
    # the other one: identical metadata is embedded in an "original" and a "refined" image alike
    return GraphReading(None, path=[graph.label(o) for o in keep[:6]],
                        reason=f"the graph saves {len(keep)} images with different prompts ("
                        + ", ".join(graph.label(o) for o in keep[:4]) + ") and the file's name, size and format do "
                        "not tell which one this is")


def _named(graph: Graph, candidates: list[str], name: str | None) -> list[str]:
    """The candidates whose file names look like this one (a saver's prefix, or ComfyUI's temp names for previews)."""
    if not name:
        return candidates
    m = _COMFY_NAME.match(name.rsplit("/", 1)[-1].rsplit(".", 1)[0])
    if m is None:
        return candidates
    stem = m.group(1)
    if stem.startswith("ComfyUI_temp_"):
        return [o for o in candidates if _PREVIEW.search(graph.class_type(o))] or candidates
    named = [o for o in candidates if isinstance(graph.inputs(o).get("filename_prefix"), str)
             and graph.inputs(o)["filename_prefix"].replace("\\", "/").rsplit("/", 1)[-1] == stem]
    return named or candidates


def _same_shape(made: tuple[int, int], size: tuple[int, int]) -> bool:
    """The same aspect ratio within 2% (an upscaled or resized output)."""
    return abs(made[0] * size[1] - made[1] * size[0]) <= 0.02 * made[1] * size[0]


def _shows_loaded_image(graph: Graph, out: str, budget: _Budget) -> bool:
    """Whether the output's picture path ends at a node that loads a picture (no picture, mask or pipe input):
    it saves or shows a copy of an input image, not something a sampler made."""
    nid = out
    for _ in range(64):
        budget.tick()
        pics = [(n, s, sl) for n, s, sl in graph.links(nid)
                if (graph.output(s, sl)[1] or graph.input_type(nid, n)) in _IMAGE_TYPES | _LATENT_TYPES]
        if not pics:
            return nid != out and _loads_picture(graph, nid)
        if pics[0][1] not in graph.nodes:
            return False
        nid = pics[0][1]
    return False


def _declares_picture(graph: Graph, nid: str) -> bool | None:
    """Whether a node has an IMAGE or LATENT input socket (its UI sockets or its type say), None if nobody knows."""
    ui = graph.ui_sockets.get(nid)
    nt = graph.node_type(nid)
    declared = set(ui[1].values()) if ui is not None else {t for _, t in nt.inputs} if nt is not None else None
    return None if declared is None else bool(declared & (_IMAGE_TYPES | _LATENT_TYPES))


def _loads_picture(graph: Graph, nid: str) -> bool:
    """A node that makes a picture from no picture, mask or pipe input: one that declares none (LoadImage), or,
    where nobody knows its sockets, one named a loader. A node whose picture input is missing never ran."""
    if any(graph.input_type(nid, n) == "MASK" or _is_bundle(graph, nid, n, s, sl) for n, s, sl in graph.links(nid)):
        return False
    declared = _declares_picture(graph, nid)
    if declared is None:
        return bool(re.search(r"load", graph.class_type(nid), re.I))
    return not declared


def _output_size(graph: Graph, out: str, budget: _Budget) -> tuple[int, int] | None:
    """The pixel size an output node saves: through decoders and passes that keep the size, and resizes that say
    their size or factor, to the latent the pass sampled; None where a node on the way may change it unsaid."""
    nid, scale = out, 1.0
    for _ in range(64):
        budget.tick()
        pics = [(n, s, sl) for n, s, sl in graph.links(nid)
                if (graph.output(s, sl)[1] or graph.input_type(nid, n)) in _IMAGE_TYPES | _LATENT_TYPES]
        if not pics or pics[0][1] not in graph.nodes:
            return None
        src = pics[0][1]
        inputs = graph.inputs(src)
        takes_latent = any((graph.output(s, sl)[1] or graph.input_type(src, n)) in _LATENT_TYPES
                           for n, s, sl in graph.links(src))
        if _is_sampler(graph, src) and takes_latent:
            size = _pass_size(graph, src, out, budget)
            return (round(size[0] * scale), round(size[1] * scale)) if size else None
        w, h = _number(graph, inputs.get("width"), budget), _number(graph, inputs.get("height"), budget)
        by = _scale(graph, inputs, budget)
        if _is_num(w) and _is_num(h) and w > 0 and h > 0:
            return round(w * scale), round(h * scale)
        if by is not None:
            scale *= by
        elif not (_is_sampler(graph, src) or (takes_latent and "IMAGE" in {t for _, t in graph.outputs(src)})):
            return None  # neither a pass that keeps the size, a decoder, nor a resize that says its size
        nid = src
    return None


def _formats(graph: Graph, out: str) -> set[str]:
    """The file formats an output node writes: named in its class or its settings (VHS `image/webp`, an
    `extension: jpg`), else PNG, as ComfyUI's savers write."""
    names = [graph.class_type(out)] + [v for v in graph.inputs(out).values() if isinstance(v, str) and len(v) < 64]
    found = set()
    for text in names:
        for fmt, pattern in (("WEBP", r"webp"), ("JPEG", r"jpe?g"), ("PNG", r"png"), ("GIF", r"gif")):
            if re.search(pattern, text, re.I):
                found.add(fmt)
    return found or {"PNG"}


def _pass_reading(graph: Graph, out: str, sampler: str, trail: list[str], budget: _Budget) -> GraphReading:
    """Prompt, negative, model and settings of one sampler pass."""
    sides = _conditioning_inputs(graph, sampler, budget)
    if sides is None:
        return GraphReading(None, path=trail,
                            reason=f"the sampler {graph.label(sampler)} has no positive conditioning linked")
    pos_ref, neg_ref, via = sides
    tracer = _TextTracer(graph, budget)
    positive = tracer.texts(pos_ref, "positive")
    path = trail + via + tracer.path
    if tracer.unknowable:  # part of the text is made at run time: a partial prompt would be a wrong one
        return GraphReading(None, path=path, reason=tracer.problem)
    if not positive:
        why = tracer.problem or f"the positive conditioning of {graph.label(sampler)} carries no text"
        return GraphReading(None, path=path, reason=why)
    neg_tracer = _TextTracer(graph, budget)
    negative = neg_tracer.texts(neg_ref, "negative")
    meta = _settings(graph, sampler, budget)
    size = _pass_size(graph, sampler, out, budget)
    if size is not None:
        meta["width"], meta["height"] = size
    meta.update(_model_path(graph, sampler, budget))
    prompt = _join(positive)
    neg = _join(negative) if negative else None
    if neg:
        meta["negative"] = neg
    system = [head for head, _ in map(_split_system, positive) if head]
    if system:
        meta["system_prompt"] = "\n".join(dict.fromkeys(system))
    return GraphReading(prompt, neg, meta, path)


def _join(texts: Iterable[str]) -> str:
    return ", ".join(dict.fromkeys(user for user in (_split_system(t)[1] for t in texts if t) if user))


def _split_system(text: str) -> tuple[str, str]:
    """(system instruction, the user's prompt): Lumina 2 and other LLM encoders prepend "You are an assistant
    designed to generate ... <Prompt Start>" to the prompt."""
    head, sep, tail = text.partition("<Prompt Start>")
    return (head.strip(), tail.strip()) if sep else ("", head.strip())


def _output_nodes(graph: Graph) -> list[str]:
    """Nodes that save or show images, savers before previews, in id order."""
    found = []
    for nid in graph.nodes:
        nt = graph.node_type(nid)
        takes_image = any(graph.input_type(nid, n) in _IMAGE_TYPES or n in ("images", "image")
                          for n, _, _ in graph.links(nid))
        if not takes_image:
            continue
        ui_outs = graph.ui_sockets.get(nid, ([], {}))[0]
        if (nt is not None and nt.output_node) or (_OUTPUT_NAME.search(graph.class_type(nid))
                                                   and not (nt and nt.outputs) and not ui_outs):
            found.append(nid)
    preview = re.compile(r"preview", re.I)
    return sorted(found, key=lambda n: (bool(preview.search(graph.class_type(n))), _id_key(n)))


def _final_samplers(graph: Graph) -> list[str]:
    """Samplers that are output nodes themselves, else samplers whose result feeds no other sampler."""
    samplers = [n for n in graph.nodes if _is_sampler(graph, n) and not _is_detailer(graph, n)]
    shown = [n for n in samplers if (nt := graph.node_type(n)) is not None and nt.output_node]
    if shown:
        return sorted(shown, key=_id_key)
    fed = {src for n in samplers for _, src, _ in graph.links(n)}
    return sorted((n for n in samplers if n not in fed), key=_id_key)


def _id_key(nid: str) -> tuple[int, str]:
    return (int(nid), "") if nid.isdigit() else (1 << 30, nid)


def _is_sampler(graph: Graph, nid: str) -> bool:
    """Makes a LATENT (or an IMAGE, for detailers) from a model or a guider and conditioning, given directly or
    in a pipe (Impact's BASIC_PIPE / DETAILER_PIPE, an upscaler provider...)."""
    nt = graph.node_type(nid)
    if nt is not None and nt.role:
        return nt.role in ("sampler", "detailer")
    kinds = {graph.input_type(nid, n) for n, _, _ in graph.links(nid)}
    names = {n for n, _, _ in graph.links(nid)}
    if "GUIDER" in kinds or ("MODEL" in kinds and (_COND in kinds or names & set(POSITIVE_NAMES))):
        return True
    outs = {t for _, t in graph.outputs(nid)}
    if outs and not outs & (_IMAGE_TYPES | _LATENT_TYPES):
        return False
    return names >= {"model", "positive"} or any(_carries_sampling(graph, src, 0, set())
                                                 for n, src, sl in graph.links(nid) if _is_bundle(graph, nid, n, src, sl))


def _is_bundle(graph: Graph, nid: str, name: str, src: str, slot: int) -> bool:
    """A link that carries a pipe (a socket type of a pack's own), not a plain value, picture or text."""
    return (graph.output(src, slot)[1] or graph.input_type(nid, name)) not in _PLAIN | {_COND}


def _carries_sampling(graph: Graph, nid: str, depth: int, seen: set[str]) -> bool:
    """Whether a pipe built upstream of `nid` holds both a model and conditioning."""
    if nid in seen or depth > 16 or nid not in graph.nodes:
        return False
    seen.add(nid)
    kinds = {graph.input_type(nid, n) for n, _, _ in graph.links(nid)}
    names = {n for n, _, _ in graph.links(nid)}
    if ("MODEL" in kinds or "model" in names) and (_COND in kinds or names & set(POSITIVE_NAMES)):
        return True
    return any(_carries_sampling(graph, src, depth + 1, seen)
               for n, src, sl in graph.links(nid) if _is_bundle(graph, nid, n, src, sl))


def _sampling_bundles(graph: Graph, nid: str) -> list[str]:
    """The inputs of `nid` that bring pipes holding a model and conditioning (else its first pipe input)."""
    bundles = [(n, src, sl) for n, src, sl in graph.links(nid) if _is_bundle(graph, nid, n, src, sl)]
    sampling = [n for n, src, _sl in bundles if _carries_sampling(graph, src, 0, set())]
    return sampling or [n for n, _, _ in bundles[:1]]


def _sampling_bundle(graph: Graph, nid: str) -> str | None:
    found = _sampling_bundles(graph, nid)
    return found[0] if found else None


def _sampler_behind(graph: Graph, trail: list[str], budget: _Budget) -> str | None:
    """A sampler reached from the nodes of a dead-ended image walk through pipes and pictures (SEGSPaste gets
    its re-drawn parts as SEGS from SEGSDetailer), never through masks or plain values."""
    queue, seen = list(trail), set(trail)
    while queue:
        budget.tick()
        nid = queue.pop(0)
        for name, src, slot in graph.links(nid):
            kind = graph.output(src, slot)[1] or graph.input_type(nid, name)
            if src in seen or src not in graph.nodes or not (kind in _IMAGE_TYPES | _LATENT_TYPES
                                                             or _is_bundle(graph, nid, name, src, slot)):
                continue
            if _is_sampler(graph, src):
                return src
            seen.add(src)
            queue.append(src)
    return None


def _find_sampler(graph: Graph, out: str, budget: _Budget) -> tuple[str, list[str]] | None:
    """The sampler pass nearest the output node on its picture path (a detailer re-drawing a region is one),
    and the nodes on the way. Where the path ends without one, a pass whose re-drawn parts the path's nodes
    take as a pipe (SEGSPaste from SEGSDetailer)."""
    trail = [graph.label(out)]
    seen = {out}
    walked = [out]
    nid = out
    for _ in range(MAX_NODES):
        budget.tick()
        nxt = None
        for name, src, slot in graph.links(nid):
            if src not in graph.nodes:  # a muted or missing node: this output cannot have been made
                return None
            kind = graph.output(src, slot)[1] or graph.input_type(nid, name)
            if kind in _IMAGE_TYPES or kind in _LATENT_TYPES or (kind is None and name in ("images", "image", "samples", "latent")):
                nxt = src
                break
        if nxt is None and nid != out and _declares_picture(graph, nid):
            return None  # its picture input is missing (a muted source): it never ran
        if nxt is None or nxt in seen:
            behind = _sampler_behind(graph, walked, budget)
            return (behind, trail + [graph.label(behind) + " (its re-drawn parts)"]) if behind is not None else None
        seen.add(nxt)
        walked.append(nxt)
        trail.append(graph.label(nxt))
        if _is_sampler(graph, nxt):
            if not any((graph.output(s, sl)[1] or graph.input_type(nxt, n)) in _IMAGE_TYPES | _LATENT_TYPES
                       for n, s, sl in graph.links(nxt)) and _declares_picture(graph, nxt):
                return None
            return nxt, trail
        nid = nxt
    return None


def _is_detailer(graph: Graph, nid: str) -> bool:
    """Re-draws parts of an IMAGE it is given (FaceDetailer, DetailerForEach...): the image's look is its input's."""
    nt = graph.node_type(nid)
    if nt is not None and nt.role:
        return nt.role == "detailer"
    outs = [t for _, t in graph.outputs(nid)]
    takes_image = any(graph.input_type(nid, n) in _IMAGE_TYPES for n, _, _ in graph.links(nid))
    return takes_image and "IMAGE" in outs and "LATENT" not in outs


def _conditioning_inputs(graph: Graph, sampler: str, budget: _Budget
                         ) -> tuple[list[tuple[str, int, str]], list[tuple[str, int, str]], list[str]] | None:
    """([(node, slot, input)] feeding the positive side, the same for the negative, path through guiders).
    A pass fed by several pipes that hold conditioning (a base and a mask sampler) has each of them."""
    via: list[str] = []
    nid = sampler
    for _ in range(8):
        budget.tick()
        links = {name: (src, slot) for name, src, slot in graph.links(nid)}
        pos = next((n for n in POSITIVE_NAMES if n in links), None)
        if pos is not None:
            neg = next((n for n in NEGATIVE_NAMES if n in links), None)
            for n in (pos, neg):
                if n is not None:
                    graph.require(links[n][0], graph.label(nid))
            return ([(*links[pos], pos)], [(*links[neg], neg)] if neg else [], via)
        guider = next((name for name, (src, slot) in links.items() if graph.output(src, slot)[1] == "GUIDER"
                       or name == "guider"), None)
        if guider is None:  # a sampler fed by bundles (Impact's pipes, a base and a mask sampler, Efficiency's SDXL_TUPLE)
            bundles = _sampling_bundles(graph, nid)
            if not bundles:
                return None
            refs = [(*links[b], b) for b in bundles]
            return (refs, refs, via)
        graph.require(links[guider][0], graph.label(nid))
        nid = links[guider][0]
        via.append(graph.label(nid))
    return None


class _TextTracer:
    """Follows CONDITIONING (and the bundles that carry it) back to the encoders' text."""

    def __init__(self, graph: Graph, budget: _Budget) -> None:
        self.graph, self.budget = graph, budget
        self.path: list[str] = []
        self.problem: str | None = None
        self.unknowable = False  # some text comes from a node whose output only exists at run time
        self._seen: set[tuple[str, int, str]] = set()

    def texts(self, refs: list[tuple[str, int, str]], side: str) -> list[str]:
        out: list[str] = []
        for src, slot, _ in refs:
            out += self._from(src, slot, side, side)
        return out

    def _from(self, nid: str, slot: int, side: str, want: str) -> list[str]:
        g = self.graph
        self.budget.tick()
        key = (nid, slot, want)
        if key in self._seen:
            return []
        self._seen.add(key)
        out_name, out_type = g.output(nid, slot)
        nt = g.node_type(nid)
        label = g.label(nid)
        links = g.links(nid)
        # an encoder with one output per side (Efficiency's loader: CONDITIONING+ / CONDITIONING-)
        if nt is not None and nt.text_outputs:
            text_input = nt.text_outputs.get(f"{out_name}|{want}", nt.text_outputs.get(str(out_name)))
            if text_input is not None:
                self.path.append(f"{label} ({out_name}: {text_input})")
                return self._string(nid, text_input)
        names = {n for n, _, _ in links}
        other = set(NEGATIVE_NAMES) if side == "positive" else set(POSITIVE_NAMES[:1])
        # a pass that samples inside (SEGSDetailer) handing on what it made: the conditioning it sampled with
        if out_type not in (_COND, None) and want not in names and _is_sampler(g, nid):
            bundle = _sampling_bundle(g, nid)
            if bundle is not None and bundle != out_name:
                src, sslot = next((s, sl) for n, s, sl in links if n == bundle)
                self.path.append(f"{label} (sampled with {bundle})")
                return self._from(src, sslot, side, want)
        # positive -> positive, negative -> negative, a pipe's field -> the input of that name
        for name in (want, out_name):  # a pipe edit (EditBasicPipe) overrides the field wanted
            if name and name in names and name not in other and (name != "conditioning" or out_type == _COND):
                src, sslot = next((s, sl) for n, s, sl in links if n == name)
                g.require(src, label)
                self.path.append(f"{label} ({name})")
                return self._from(src, sslot, side, want)
        cond_links = [(n, s, sl) for n, s, sl in links if g.input_type(nid, n) == _COND and n not in other]
        if cond_links:  # a modifier: its text (GLIGEN's box, an area's label) is not the prompt
            self.path.append(label)
            texts: list[str] = []
            for _n, s, sl in cond_links:
                g.require(s, label)
                texts += self._from(s, sl, side, want)
            return texts
        # a pipe built from text (a component's or loader's own prompt widgets): the field wanted, as written
        literal = g.inputs(nid).get(want)
        if want not in names and isinstance(literal, str) and _looks_like_text(literal) and out_type not in (_COND, None):
            self.path.append(f"{label} ({want}: its text)")
            return [literal]
        if out_type in (_COND, None) or (out_type not in _STRUCT and self._clip_fed(nid)):
            text_inputs = _for_side(self._text_inputs(nid), side)
            texts = []
            for n in text_inputs:
                texts += self._string(nid, n)
            if texts or (text_inputs and out_type in (_COND, None)):
                self.path.append(f"{label}: encoder")
                if not texts and self.problem is None:
                    self.problem = f"the encoder {label} has no text"
                return texts
        # a pipe, or an encoder whose text sits upstream (regions built on a base prompt node): follow what it came
        # from, still wanting the same field
        bundles = [(n, s, sl) for n, s, sl in links if _is_bundle(g, nid, n, s, sl) and not text_source(g, s, sl)]
        if bundles:
            self.path.append(f"{label} (unpacking {want})")
            texts = []
            for _n, s, sl in bundles:
                g.require(s, label)
                texts += self._from(s, sl, side, want)
                if texts:
                    break
            return texts
        if self.problem is None:
            if any(g.input_type(nid, n) in _PICTURE for n, _, _ in links):
                self.problem = f"the {side} conditioning is made from an image by {label}, not from text"
            elif self._clip_fed(nid):
                self.problem = f"the encoder {label} has no text"
            else:
                self.problem = f"the {side} conditioning comes from {label}, which this reader cannot follow to a text"
        return []

    def _clip_fed(self, nid: str) -> bool:
        """Takes a CLIP (an encoder), or is a node whose sockets nobody knows."""
        g = self.graph
        nt = g.node_type(nid)
        if nt is not None and nt.multiline:
            return True
        return nt is None and nid not in g.ui_sockets or any(
            g.input_type(nid, n) == "CLIP" or n == "clip" for n, _, _ in g.links(nid))

    def _text_inputs(self, nid: str) -> list[str]:
        """The inputs that hold the prompt: declared multiline text, else prose values and links from text sources."""
        g = self.graph
        nt = g.node_type(nid)
        inputs = g.inputs(nid)
        if nt is not None and nt.multiline:
            declared = [n for n, _ in nt.inputs if n in nt.multiline and n in inputs]
            if declared:
                return declared
        return [n for n, v in inputs.items()
                if (isinstance(v, str) and _looks_like_text(v))
                or (is_link(v) and (g.input_type(nid, n) == "STRING" or text_source(g, str(v[0]), int(v[1]))))]

    def _string(self, nid: str, name: str) -> list[str]:
        value = self.graph.inputs(nid).get(name)
        if isinstance(value, str):
            return [value] if value.strip() else []
        if is_link(value):
            text = _StringEval(self.graph, self.budget).value(str(value[0]), int(value[1]))
            if isinstance(text, _Unreadable):
                if not self.unknowable:
                    self.problem = f"the text comes from a node this reader cannot evaluate: {text.node}"
                self.unknowable = True
                return []
            return [text] if text.strip() else []
        return []


_NEGATIVE_TEXT = re.compile(r"neg|uncond", re.I)


def _for_side(text_inputs: list[str], side: str) -> list[str]:
    """An encoder's text inputs for one side: one that encodes both sides (a `prompt` and a `negative_prompt`,
    an output per side) names its negative text; the positive side never takes it, the negative side only it."""
    negative = [n for n in text_inputs if _NEGATIVE_TEXT.search(n)]
    if side == "negative":
        return negative or text_inputs
    return [n for n in text_inputs if n not in negative]


def _looks_like_text(v: str) -> bool:
    v = v.strip()
    if not v or re.fullmatch(r"[\w.\-/\\]+\.(safetensors|ckpt|pt|pth|bin|gguf|sft|yaml|json)", v, re.I):
        return False
    return " " in v or "," in v or len(v) > 24


def text_source(graph: Graph, nid: str, slot: int, depth: int = 0) -> bool:
    """Whether output `slot` of `nid` is text, whatever its type is called (STRING, ASCII, TEXT, *...): a STRING
    output, or a node fed by nothing but values and other text sources that holds some text of its own."""
    memo = graph.memo.setdefault("text_source", {})
    key = (nid, slot)
    if key in memo:
        return memo[key]
    memo[key] = False  # a cycle is not a text source
    kind = graph.output(nid, slot)[1]
    if kind == "STRING":
        found = True
    elif kind in _STRUCT or nid not in graph.nodes or depth > 32:
        found = False
    else:
        values = list(graph.inputs(nid).values())
        links = graph.links(nid)
        feeds_ok = all(graph.output(s, sl)[1] in _VALUES or graph.input_type(nid, n) in _VALUES
                       or text_source(graph, s, sl, depth + 1) for n, s, sl in links)
        has_text = any(isinstance(v, str) for v in values) or bool(links) or bool(graph.ui_text(nid))
        found = feeds_ok and has_text and not any(graph.output(s, sl)[1] in _STRUCT for _, s, sl in links)
    memo[key] = found
    return found


@dataclass
class _Unreadable:
    node: str


_OPTIONS = ("delimiter", "separator", "sep", "joiner", "mode", "clean_whitespace", "linebreak_addition")
_FIND = ("find", "search", "old", "substring", "target")
_REPLACE = ("replace", "replacement", "new", "replace_with")


class _StringEval:
    """The value of a text output: literals, primitives, concatenation, find-and-replace, wildcard nodes'
    populated text, and the text a node holds only in the UI workflow's widgets."""

    def __init__(self, graph: Graph, budget: _Budget) -> None:
        self.graph, self.budget = graph, budget
        self._stack: set[str] = set()

    def value(self, nid: str, slot: int) -> str | _Unreadable:
        g = self.graph
        self.budget.tick()
        g.require(nid, "a text input")
        if nid in self._stack:
            raise GraphError(f"the graph has a cycle through {g.label(nid)}")
        self._stack.add(nid)
        try:
            return self._value(nid, slot)
        finally:
            self._stack.discard(nid)

    def _text(self, value: Any) -> str | _Unreadable:
        return value if isinstance(value, str) else self.value(str(value[0]), int(value[1]))

    def _value(self, nid: str, slot: int) -> str | _Unreadable:
        g = self.graph
        inputs = g.inputs(nid)
        # Impact's wildcard nodes store the text they produced (populate mode) or were given (fixed mode)
        populated = inputs.get("populated_text")
        if isinstance(populated, str) and populated.strip():
            return populated
        literals = [(n, v) for n, v in inputs.items() if isinstance(v, str) and n not in _OPTIONS]
        texts = [(n, v) for n, v in inputs.items() if is_link(v) and (
            g.input_type(nid, n) in ("STRING", None) or text_source(g, str(v[0]), int(v[1])))]
        strings = [(n, v) for n, v in inputs.items() if (n, v) in literals or (n, v) in texts]
        others = [n for n, v in inputs.items() if (n, v) not in strings and n not in _OPTIONS]
        kind = g.class_type(nid)
        find = next((n for n, _ in strings if n.lower() in _FIND), None)
        repl = next((n for n, _ in strings if n.lower() in _REPLACE), None)
        if find and repl and len(strings) == 3:  # a find-and-replace
            parts = {n: self._text(v) for n, v in strings}
            bad = next((p for p in parts.values() if isinstance(p, _Unreadable)), None)
            if bad is not None:
                return bad
            body = next(p for n, p in parts.items() if n not in (find, repl))
            return body.replace(parts[find], parts[repl]) if parts[find] else body
        if len(strings) == 1 and _RANDOM.search(kind) and others == ["seed"]:  # a random line, fixed seed
            seed = _number(g, inputs["seed"], self.budget)
            text = self._text(strings[0][1])
            if isinstance(text, _Unreadable) or not isinstance(seed, int) or isinstance(seed, bool):
                return text if isinstance(text, _Unreadable) else _Unreadable(kind)
            return random.Random(seed).choice(text.split("\n"))  # what random.seed(s); random.choice does
        if _JOIN.search(kind) and strings:
            parts: list[str] = []
            for _n, v in strings:
                sub = self._text(v)
                if isinstance(sub, _Unreadable):
                    return sub
                parts.append(sub)
            if str(inputs.get("clean_whitespace", "")).lower() == "true":
                parts = [p.strip() for p in parts]
            return _delimiter(inputs).join(p for p in parts if p != "")
        if not texts and literals and not any(is_link(inputs[n]) for n in others):  # a text literal node
            outs = g.outputs(nid)
            if len(literals) == 1:
                return literals[0][1]
            if len(outs) == len(literals) and slot < len(outs):  # one output per text (WAS Text String)
                return literals[slot][1]
        if len(texts) == 1 and not literals and not others and not _TRANSFORM.search(kind):
            return self._text(texts[0][1])  # a pass-through: shows or forwards the text it gets
        if not strings and not g.links(nid):  # the text lives only in the UI workflow's widgets
            ui = g.ui_text(nid)
            if len(ui) == 1:
                return ui[0]
        # anything else (an LLM, a token parser, a styler, a wildcard picker) makes its text at run time
        return _Unreadable(kind)


_RANDOM = re.compile(r"random", re.I)
_JOIN = re.compile(r"concat|join|combine|append|merge", re.I)
# single-input text nodes that rewrite what they get (token and wildcard expansion, templates, language models)
_TRANSFORM = re.compile(r"token|parse|wildcard|dynamic|random|template|styl|llm|gpt|ollama|caption|translat|expand|enhanc",
                        re.I)


def _delimiter(inputs: Mapping[str, Any]) -> str:
    """How a join node separates its texts: its delimiter input, a line break option, else nothing (a + b)."""
    for key in ("delimiter", "separator", "sep", "joiner"):
        if isinstance(inputs.get(key), str):
            return "\n" if inputs[key] in ("\\n", "\n") else inputs[key]
    if any("linebreak" in k.lower() and str(v).lower() == "true" for k, v in inputs.items()):
        return "\n"
    return ""


# ---- settings, size, model ---------------------------------------------------------------------------
def _number(graph: Graph, value: Any, budget: _Budget, depth: int = 0) -> Any:
    """A widget value, or the value of the primitive / seed node it is linked to."""
    if is_link(value) and depth < 6:
        budget.tick()
        src = str(value[0])
        if src not in graph.nodes:
            return None
        inputs = graph.inputs(src)
        for key in ("value", "seed", "noise_seed", "int", "float", "number", "steps", "cfg"):
            if key in inputs:
                return _number(graph, inputs[key], budget, depth + 1)
        return None
    return value


def _settings(graph: Graph, sampler: str, budget: _Budget) -> dict[str, Any]:
    """seed, steps, cfg, sampler, scheduler, denoise: on the sampler, else one hop into its other inputs."""
    meta: dict[str, Any] = {}
    nodes = [sampler] + [src for name, src, _ in graph.links(sampler)
                         if src in graph.nodes and name not in POSITIVE_NAMES + NEGATIVE_NAMES + ("model", "latent_image")]
    for nid in nodes:
        inputs = graph.inputs(nid)
        for key in SEED_NAMES:
            if "seed" not in meta and key in inputs:
                v = _number(graph, inputs[key], budget)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    meta["seed"] = int(v)
        for key in SETTING_NAMES:
            out = "sampler" if key == "sampler_name" else key
            if out not in meta and key in inputs:
                v = _number(graph, inputs[key], budget)
                if isinstance(v, (int, float, str)) and not isinstance(v, bool):
                    meta[out] = v
    return meta


def _pass_size(graph: Graph, sampler: str, out: str, budget: _Budget) -> tuple[int, int] | None:
    """Pixel size of the pass's latent, computed as ComfyUI does (in latent units of 8 px: empty latents,
    latent upscales to a size or by a factor), None where it cannot be known (an encoded input image)."""
    nid, scales = sampler, []
    for _ in range(64):
        budget.tick()
        inputs = graph.inputs(nid)
        w, h = _number(graph, inputs.get("width"), budget), _number(graph, inputs.get("height"), budget)
        if nid != sampler and _is_num(w) and _is_num(h):
            lw, lh = int(w) // 8, int(h) // 8
            for by in reversed(scales):  # LatentUpscaleBy: round(latent size * scale)
                lw, lh = round(lw * by), round(lh * by)
            return lw * 8, lh * 8
        by = _scale(graph, inputs, budget)
        if by is not None and (nid != sampler or _is_sampler(graph, nid)):  # a pass that upscales as it samples too
            scales.append(by)
        latent = next(((s, n) for n, s, sl in graph.links(nid)
                       if (graph.output(s, sl)[1] in _LATENT_TYPES or n in ("latent_image", "samples", "samples_to", "latent"))
                       and s in graph.nodes), None)
        if latent is None:
            return None
        nid = latent[0]
    return None


_SCALE_NAMES = ("scale_by", "upscale_factor", "upscale_by", "factor", "scale")


def _scale(graph: Graph, inputs: Mapping[str, Any], budget: _Budget) -> float | None:
    """The factor a node resizes by, when it says one (LatentUpscaleBy, an iterative upscaler...)."""
    for key in _SCALE_NAMES:
        v = _number(graph, inputs.get(key), budget)
        if _is_num(v) and 0 < v <= 64:
            return float(v)
    return None


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _model_path(graph: Graph, sampler: str, budget: _Budget) -> dict[str, Any]:
    """The loader on the sampler's (or its guider's) model path, and the LoRAs on the way."""
    start = None
    nid: str | None = sampler
    for _ in range(8):
        if nid is None:
            break
        links = {n: (s, sl) for n, s, sl in graph.links(nid)}
        if "model" in links:
            start = links["model"]
            break
        guider = next((s for n, (s, sl) in links.items() if n == "guider" or graph.output(s, sl)[1] == "GUIDER"), None)
        if guider is None:  # a bundle that carries the model (Efficiency's SDXL_TUPLE, Impact's pipes)
            bundle = _sampling_bundle(graph, nid)
            start = links[bundle] if bundle is not None else None
            break
        nid = guider
    meta: dict[str, Any] = {}
    if start is None or start[0] not in graph.nodes:
        return meta
    loras: list[dict[str, Any]] = []
    models: list[str] = []
    stack, seen = [start[0]], set()
    while stack:
        budget.tick()
        cur = stack.pop()
        if cur in seen or cur not in graph.nodes:
            continue
        seen.add(cur)
        inputs = graph.inputs(cur)
        for key in LOADER_NAMES:
            if isinstance(inputs.get(key), str):
                models.append(inputs[key])
                break
        if isinstance(inputs.get("lora_name"), str) and inputs["lora_name"] not in ("None", ""):
            strength = inputs.get("strength_model", inputs.get("strength", inputs.get("lora_model_strength", 1.0)))
            strength = _number(graph, strength, budget)
            loras.append({"name": inputs["lora_name"],
                          "strength": float(strength) if isinstance(strength, (int, float)) else 1.0})
        nxt = [s for n, s, sl in graph.links(cur) if graph.output(s, sl)[1] == "MODEL" or n in ("model", "model1")
               or (graph.output(s, sl)[1] or graph.input_type(cur, n)) not in _PLAIN]
        stack.extend(reversed(nxt))
    if models:
        meta["checkpoint"] = models[0]
        if len(models) > 1:
            meta["models"] = models
    if loras:
        meta["loras"] = loras
    return meta
