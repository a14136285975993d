"""Write extraction/comfy_node_types.json: the node types the graph reader knows without a ComfyUI.

    python scripts/make_node_types.py --object-info object_info.json [--pack DIR ...] [--out PATH]

- `--object-info`: ComfyUI's /object_info saved from a running server (core nodes: every output's
  name and type, every input's type, multiline text inputs, output nodes);
- `--pack DIR`: a custom node pack's source, read statically (no import, no install): classes with
  RETURN_TYPES / RETURN_NAMES / OUTPUT_NODE and an INPUT_TYPES that returns a dict literal, named
  by the pack's NODE_CLASS_MAPPINGS literals;
- ROLES below: what a node's types cannot say (a sampler fed by a bundle, a detailer, an encoder
  with one output per side), written by hand from the packs' sources.
Only what the reader uses is kept, so the table stays small.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# by hand, from the packs' sources (Impact Pack 727295b, efficiency-nodes-comfyui 4579b7d, core v0.3.64)
ROLES: dict[str, dict[str, Any]] = {
    "Efficient Loader": {"text_outputs": {"CONDITIONING+": "positive", "CONDITIONING-": "negative"}},
    "Eff. Loader SDXL": {"text_outputs": {"SDXL_TUPLE|positive": "positive", "SDXL_TUPLE|negative": "negative"}},
    "KSampler SDXL (Eff.)": {"role": "sampler"},
    "KSampler (Efficient)": {"role": "sampler"},
    "KSampler Adv. (Efficient)": {"role": "sampler"},
    "ImpactKSamplerBasicPipe": {"role": "sampler"},
    "ImpactKSamplerAdvancedBasicPipe": {"role": "sampler"},
    "FaceDetailer": {"role": "detailer"},
    "FaceDetailerPipe": {"role": "detailer"},
    "DetailerForEach": {"role": "detailer"},
    "DetailerForEachPipe": {"role": "detailer"},
    "DetailerForEachDebug": {"role": "detailer"},
    "DetailerForEachDebugPipe": {"role": "detailer"},
    "DetailerForEachPipeForAnimateDiff": {"role": "detailer"},
    "ImpactWildcardEncode": {"multiline": ["populated_text"]},
    "ImpactWildcardProcessor": {"multiline": ["populated_text"]},
    "GLIGENTextBoxApply": {"multiline": []},
}
# a subset of types worth keeping: everything else only costs bytes
KEEP_TYPES = {"CONDITIONING", "LATENT", "IMAGE", "MODEL", "GUIDER", "STRING", "CLIP", "NOISE", "SAMPLER", "SIGMAS",
              "BASIC_PIPE", "DETAILER_PIPE", "SDXL_TUPLE", "VAE"}


def from_object_info(info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    nodes = {}
    for name, d in info.items():
        outs = [[str(n), str(t)] for n, t in zip(d.get("output_name") or d.get("output") or [], d.get("output") or [])]
        inputs, multiline = [], []
        for group in ("required", "optional"):
            for iname, spec in ((d.get("input") or {}).get(group) or {}).items():
                spec = spec if isinstance(spec, list) else [spec]
                kind = "COMBO" if isinstance(spec[0], list) else str(spec[0])
                opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                inputs.append([iname, kind])
                if kind == "STRING" and opts.get("multiline"):
                    multiline.append(iname)
        nodes[name] = {"out": outs, "in": inputs, "output_node": bool(d.get("output_node")), "multiline": multiline}
    return nodes


def _const(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return None


def _input_types(fn: ast.FunctionDef) -> tuple[list[list[str]], list[str]] | None:
    ret = next((n for n in ast.walk(fn) if isinstance(n, ast.Return) and isinstance(n.value, ast.Dict)), None)
    if ret is None:
        return None
    inputs, multiline = [], []
    for key, group in zip(ret.value.keys, ret.value.values):
        if _const(key) not in ("required", "optional") or not isinstance(group, ast.Dict):
            continue
        for k, v in zip(group.keys, group.values):
            name = _const(k)
            if not isinstance(name, str):
                continue
            first = v.elts[0] if isinstance(v, ast.Tuple) and v.elts else v
            kind = _const(first)
            kind = kind if isinstance(kind, str) else "COMBO"
            inputs.append([name, kind])
            if isinstance(v, ast.Tuple) and len(v.elts) > 1 and isinstance(v.elts[1], ast.Dict):
                opts = {_const(a): _const(b) for a, b in zip(v.elts[1].keys, v.elts[1].values)}
                if kind == "STRING" and opts.get("multiline"):
                    multiline.append(name)
    return inputs, multiline


def from_pack(folder: Path) -> dict[str, dict[str, Any]]:
    classes: dict[str, dict[str, Any]] = {}
    mappings: dict[str, str] = {}
    for path in sorted(folder.rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                attrs = {t.id: s.value for s in node.body if isinstance(s, ast.Assign) for t in s.targets
                         if isinstance(t, ast.Name)}
                types = _const(attrs["RETURN_TYPES"]) if "RETURN_TYPES" in attrs else None
                fn = next((s for s in node.body if isinstance(s, ast.FunctionDef) and s.name == "INPUT_TYPES"), None)
                if not isinstance(types, tuple) or fn is None:
                    continue
                parsed = _input_types(fn)
                if parsed is None:
                    continue
                names = _const(attrs["RETURN_NAMES"]) if "RETURN_NAMES" in attrs else None
                names = names if isinstance(names, tuple) and len(names) == len(types) else types
                classes[node.name] = {"out": [[str(n), str(t)] for n, t in zip(names, types)], "in": parsed[0],
                                      "output_node": bool(_const(attrs.get("OUTPUT_NODE", ast.Constant(False)))),
                                      "multiline": parsed[1]}
            if isinstance(node, ast.Dict):
                for k, v in zip(node.keys, node.values):
                    if isinstance(_const(k), str) and isinstance(v, ast.Name):
                        mappings[_const(k)] = v.id
    return {name: classes[cls] for name, cls in mappings.items() if cls in classes}


def compact(nodes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Keep the nodes and sockets the reader can use: typed outputs, linkable inputs, text widgets."""
    out = {}
    for name, d in sorted(nodes.items()):
        extra = ROLES.get(name, {})
        outs = d["out"]
        if not any(t in KEEP_TYPES for _, t in outs) and not d.get("output_node") and not extra:
            continue
        entry: dict[str, Any] = {"out": [[n, t] for n, t in outs]}
        entry["in"] = [[n, t] for n, t in d["in"]]
        if d.get("output_node"):
            entry["output_node"] = True
        multiline = extra.get("multiline", d.get("multiline") or [])
        if multiline:
            entry["multiline"] = multiline
        for key in ("role", "text_outputs"):
            if key in extra:
                entry[key] = extra[key]
        out[name] = entry
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--object-info", required=True)
    ap.add_argument("--pack", action="append", default=[])
    ap.add_argument("--out", default=str(REPO / "extraction" / "comfy_node_types.json"))
    args = ap.parse_args()
    nodes = from_object_info(json.loads(Path(args.object_info).read_text()))
    for pack in args.pack:
        found = from_pack(Path(pack))
        print(f"{pack}: {len(found)} node types")
        for k, v in found.items():
            nodes.setdefault(k, v)
    table = compact(nodes)
    Path(args.out).write_text(json.dumps({"source": "ComfyUI v0.3.64 /object_info, Impact Pack 727295b, "
                                                    "efficiency-nodes-comfyui 4579b7d, hand-written roles",
                                          "nodes": table}, separators=(",", ":"), sort_keys=True))
    print(f"{len(table)} node types -> {args.out} ({Path(args.out).stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
