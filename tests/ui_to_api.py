"""A small converter from ComfyUI's UI-format workflow to the API format, and a validator of API graphs
against /object_info. Written for the tests (independent of workflows/build.py, which writes both).

UI format: nodes carry `inputs` (sockets, with the link feeding each) and `widgets_values` (the
widget inputs' values in schema order, required then optional; the front end inserts one extra
value after a seed-like INT with `control_after_generate` and after LoadImage's upload widget).
Links are [id, from node, from slot, to node, to slot, type].
"""

from __future__ import annotations

from typing import Any

FRONTEND_ONLY = {"MarkdownNote", "Note", "Reroute"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# combos whose options are the user's files (checked by ComfyUI when the graph runs, not here)
FILE_COMBOS = {"ckpt_name", "clip_name", "clip_name1", "clip_name2", "unet_name", "image", "vault", "projector", "lora_name",
               "model_name", "vae_name"}


def specs(info: dict[str, Any]) -> list[tuple[str, list[Any], bool]]:
    out = []
    for group in ("required", "optional"):
        for name, spec in (info.get("input", {}).get(group) or {}).items():
            out.append((name, spec if isinstance(spec, list) else [spec], group == "required"))
    return out


def is_widget(spec: list[Any]) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def options(spec: list[Any]) -> dict[str, Any]:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def combo_values(spec: list[Any]) -> list[Any] | None:
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO":
        return options(spec).get("options")
    return None


def convert(ui: dict[str, Any], object_info: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(API graph, {node id: why its widgets were not converted}) for a UI-format workflow."""
    links = {lk[0]: lk for lk in ui["links"]}
    api: dict[str, Any] = {}
    unknown: dict[str, str] = {}
    for node in ui["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) in (2, 4):  # notes; muted / bypassed nodes
            continue
        nid = str(node["id"])
        inputs: dict[str, Any] = {}
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                _, src, slot, _, _, _ = links[inp["link"]]
                inputs[inp["name"]] = [str(src), slot]
        info = object_info.get(node["type"])
        if info is None:
            unknown[nid] = f"{node['type']} is not installed"
        else:
            values = node.get("widgets_values") or []
            if isinstance(values, dict):
                for name, _, _ in specs(info):
                    if name in values and name not in inputs:
                        inputs[name] = values[name]
            else:
                i = 0
                for name, spec, _ in specs(info):
                    if not is_widget(spec) or i >= len(values):
                        continue
                    value = values[i]
                    i += 1 + int(bool(options(spec).get("control_after_generate"))) + int(
                        bool(options(spec).get("image_upload")))
                    if name not in inputs:
                        inputs[name] = value
        api[nid] = {"class_type": node["type"], "inputs": inputs}
    return api, unknown


def output_type(api: dict[str, Any], object_info: dict[str, Any], ref: list[Any], ui_types: dict[tuple[str, int], str]) -> str:
    src = api.get(ref[0])
    if src is None:
        return "?"
    info = object_info.get(src["class_type"])
    if info is None:
        return ui_types.get((ref[0], ref[1]), "?")
    outs = info.get("output", [])
    return outs[ref[1]] if ref[1] < len(outs) else "?"


def validate(api: dict[str, Any], object_info: dict[str, Any], optional: dict[str, str] | None = None,
             ui: dict[str, Any] | None = None) -> tuple[list[str], dict[str, str]]:
    """(errors, {node id: why it was skipped}). `optional` maps third-party node types to their pack."""
    optional = optional or {}
    ui_types = {(str(lk[1]), lk[2]): lk[5] for lk in (ui or {}).get("links", [])}
    errors: list[str] = []
    skipped: dict[str, str] = {}
    for nid, node in api.items():
        ct = node["class_type"]
        info = object_info.get(ct)
        where = f"node {nid} ({ct})"
        if info is None:
            if ct in optional:
                skipped[nid] = f"{ct} needs {optional[ct]}, not installed in the test ComfyUI"
            else:
                errors.append(f"{where}: no such node type")
            # links into an optional node are still checked for existence
            for name, v in node["inputs"].items():
                if isinstance(v, list) and len(v) == 2 and v[0] not in api:
                    errors.append(f"{where}.{name}: linked to missing node {v[0]}")
            continue
        known = {name: (spec, req) for name, spec, req in specs(info)}
        for name in node["inputs"]:
            if name not in known:
                errors.append(f"{where}: unknown input {name}")
        for name, (spec, required) in known.items():
            v = node["inputs"].get(name)
            if v is None:
                if required:
                    errors.append(f"{where}: required input {name} is neither linked nor set")
                continue
            expected = "COMBO" if isinstance(spec[0], list) else spec[0]
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):  # a link
                if v[0] not in api:
                    errors.append(f"{where}.{name}: linked to missing node {v[0]}")
                    continue
                got = output_type(api, object_info, v, ui_types)
                if "*" not in (got, expected) and got != expected and not (expected == "COMBO" and got in ("COMBO", "STRING")):
                    errors.append(f"{where}.{name}: expects {expected}, linked to a {got} output")
                continue
            choices = combo_values(spec)
            if choices is not None:
                if name not in FILE_COMBOS and choices and v not in choices:
                    errors.append(f"{where}.{name}: {v!r} is not one of {choices[:8]}")
            elif expected in ("INT", "FLOAT"):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or (expected == "INT" and not isinstance(v, int)):
                    errors.append(f"{where}.{name}: expects {expected}, got {v!r}")
                    continue
                o = options(spec)
                if ("min" in o and v < o["min"]) or ("max" in o and v > o["max"]):
                    errors.append(f"{where}.{name}: {v} outside {o.get('min')}..{o.get('max')}")
            elif expected == "BOOLEAN" and not isinstance(v, bool):
                errors.append(f"{where}.{name}: expects BOOLEAN, got {v!r}")
            elif expected == "STRING" and not isinstance(v, str):
                errors.append(f"{where}.{name}: expects STRING, got {v!r}")
    return errors, skipped
