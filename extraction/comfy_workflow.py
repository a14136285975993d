"""ComfyUI's UI-format workflow: converted to an API graph, with every nested graph expanded.

Three ways a workflow nests nodes, each expanded into its inner nodes (ids `outer:inner`, as the
front end itself does when it queues a graph):
- group nodes (`workflow>NAME` / `workflow/NAME`, defined in `extra.groupNodes`): inner nodes by
  index, the instance's widget values handed out to them in order, unconnected inner inputs and
  outputs exposed in order;
- subgraphs (front end 1.24+: a node whose type is the id of `definitions.subgraphs[*]`): links from
  the subgraph's input node (-10) and to its output node (-20) are its boundary;
- Impact Pack components (`## name [hash]`, defined in the workflow's `components`): a workflow
  whose ComponentInput / ComponentOutput nodes are its boundary. These also appear unexpanded in
  API graphs, so `expand_components` applies to an API graph too.
A boundary becomes plain Reroute / PrimitiveNode nodes, which the conversion already follows.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from .comfy_graph import MAX_NODES, NodeType, NodeTypes, is_link

FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
MAX_DEPTH = 8  # nesting of group nodes / subgraphs / components
_CONTROL = re.compile(r"^(seed|noise_seed)$")
_ORDER = re.compile(r"^\s*(\d+)")
_BOUNDARY = ("ComponentInput", "ComponentOutput")


def api_from_workflow(ui: Mapping[str, Any], types: NodeTypes | None = None) -> dict[str, Any]:
    """An API-format graph from a UI-format workflow (for images that carry only the workflow).

    Nested graphs are expanded first (see the module doc). Links become [node, slot] inputs (through
    reroutes and bypassed nodes), widget values get their names from the node types (the front end's
    order: required then optional, an extra value after a widget with control_after_generate);
    PrimitiveNode values land in the inputs they feed. Muted nodes are dropped. Widgets of node
    types nobody knows keep positional names (widget_0, ...).
    """
    types = with_component_types(types or NodeTypes.builtin(), ui)
    return expand_components(_convert(flatten(ui, types), types), ui, types)


def ui_nodes(ui: Mapping[str, Any], depth: int = 0) -> list[Mapping[str, Any]]:
    """Every node of the workflow with its sockets, inner nodes of nested graphs included (ids `outer:inner`)."""
    nodes = list(flatten(ui).get("nodes") or [])
    components = ui.get("components")
    if isinstance(components, Mapping) and depth <= MAX_DEPTH:
        for inst in nodes[:]:
            sub = components.get(inst.get("type"))
            if isinstance(sub, Mapping):
                nodes += [dict(n, id=f"{inst['id']}:{n['id']}") for n in ui_nodes(dict(sub, components=components), depth + 1)
                          if "id" in n]
    return nodes


# ---- UI level: group nodes and subgraphs -------------------------------------------------------------
def flatten(ui: Mapping[str, Any], types: NodeTypes | None = None, depth: int = 0) -> dict[str, Any]:
    """The workflow with group nodes and subgraphs replaced by their inner nodes (links in list form)."""
    types = types or NodeTypes.builtin()
    nodes = [n for n in (ui.get("nodes") or [])[:MAX_NODES] if isinstance(n, Mapping) and "id" in n]
    links = [_link(lk) for lk in (ui.get("links") or [])[: MAX_NODES * 4]]
    links = [lk for lk in links if lk is not None]
    extra = ui.get("extra")
    groups = extra.get("groupNodes") if isinstance(extra, Mapping) else None
    groups = groups if isinstance(groups, Mapping) else {}
    subgraphs: dict[str, Mapping[str, Any]] = {}
    defs = ui.get("definitions")
    if isinstance(defs, Mapping) and isinstance(defs.get("subgraphs"), list):
        subgraphs = {str(d.get("id")): d for d in defs["subgraphs"] if isinstance(d, Mapping)}
    if (not groups and not subgraphs) or depth > MAX_DEPTH:
        return {"nodes": nodes, "links": links}
    out_nodes: list[Mapping[str, Any]] = []
    for node in nodes:
        kind = str(node.get("type"))
        name = re.sub(r"^workflow[>/]", "", kind)
        if kind != name and isinstance(groups.get(name), Mapping):
            inner = _group_node(node, groups[name], types)
        elif kind in subgraphs:
            inner = _subgraph(node, subgraphs[kind])
        else:
            out_nodes.append(node)
            continue
        if node.get("mode") in (2, 4):  # a muted or bypassed instance: its inner nodes are too
            inner["nodes"] = [dict(n, mode=node["mode"]) for n in inner["nodes"]]
        inner.update({"extra": extra, "definitions": defs})
        _splice(str(node["id"]), flatten(inner, types, depth + 1), out_nodes, links)
    return {"nodes": out_nodes, "links": links}


def _link(lk: Any) -> list[Any] | None:
    """A link as [id, from node, from slot, to node, to slot, type], from either of the front end's forms."""
    if isinstance(lk, (list, tuple)) and len(lk) >= 5:
        return [lk[0], str(lk[1]), _int(lk[2]), str(lk[3]), _int(lk[4]), lk[5] if len(lk) > 5 else None]
    if isinstance(lk, Mapping) and "id" in lk:
        return [lk["id"], str(lk.get("origin_id")), _int(lk.get("origin_slot")), str(lk.get("target_id")),
                _int(lk.get("target_slot")), lk.get("type")]
    return None


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def _splice(gid: str, inner: Mapping[str, Any], out_nodes: list[Mapping[str, Any]], links: list[list[Any]]) -> None:
    """Put the inner nodes of instance `gid` in place: boundary nodes `gid:in<j>` / `gid:out<k>` take the
    instance's input and output links."""
    for n in inner["nodes"]:
        inputs = [dict(i, link=f"{gid}:{i['link']}" if i.get("link") is not None else None)
                  for i in n.get("inputs") or [] if isinstance(i, Mapping)]
        out_nodes.append(dict(n, id=f"{gid}:{n['id']}", inputs=inputs))
    inner_links = [[f"{gid}:{lk[0]}", f"{gid}:{lk[1]}", lk[2], f"{gid}:{lk[3]}", lk[4], lk[5]] for lk in inner["links"]]
    for lk in links:  # outer links into and out of the instance now meet its boundary nodes
        if lk[3] == gid:
            lk[3], lk[4] = f"{gid}:in{lk[4]}", 0
            _attach(out_nodes, lk[3], lk[0])
        if lk[1] == gid:
            lk[1], lk[2] = f"{gid}:out{lk[2]}", 0
    links += inner_links


def _attach(nodes: list[Mapping[str, Any]], nid: str, link_id: Any) -> None:
    for i, n in enumerate(nodes):
        if str(n.get("id")) == nid and n.get("type") == "Reroute":
            nodes[i] = dict(n, inputs=[{"name": "", "type": "*", "link": link_id}])


def _boundary_in(j: int, value: Any = None, has_value: bool = False) -> dict[str, Any]:
    """The node standing for input j of an instance: a reroute (fed by the outer link) or a primitive (a widget value)."""
    if has_value:
        return {"id": f"in{j}", "type": "PrimitiveNode", "widgets_values": [value], "outputs": [{"name": "value"}]}
    return {"id": f"in{j}", "type": "Reroute", "inputs": [{"name": "", "type": "*", "link": None}], "outputs": [{"name": ""}]}


def _boundary_out(k: int, link_id: Any, kind: Any) -> dict[str, Any]:
    return {"id": f"out{k}", "type": "Reroute", "inputs": [{"name": "", "type": "*", "link": link_id}],
            "outputs": [{"name": "", "type": kind}]}


def _group_node(inst: Mapping[str, Any], d: Mapping[str, Any], types: NodeTypes) -> dict[str, Any]:
    """A group node's inner workflow with its boundary (see the module doc).

    The definition's links are [from index, from slot, to index, to slot, ...]; a link from index null comes
    from outside: that inner input is one of the instance's inputs. The instance's inputs are those, and the
    inner sockets nothing feeds, in node and slot order; its widget values go to the inner widgets that no
    link drives, in the same order."""
    inner = [n for n in d.get("nodes") or [] if isinstance(n, Mapping)]
    nodes = [dict(n, id=str(n.get("index", idx)), inputs=[dict(i, link=None) for i in n.get("inputs") or []
                                                          if isinstance(i, Mapping)]) for idx, n in enumerate(inner)]
    by_id = {n["id"]: n for n in nodes}
    links, linked_out, fed, from_outside = [], set(), set(), set()
    for k, lk in enumerate(d.get("links") or []):
        if not (isinstance(lk, (list, tuple)) and len(lk) >= 4):
            continue
        t, ts = str(lk[2]), _int(lk[3])
        if t not in by_id or ts >= len(by_id[t]["inputs"]):
            continue
        fed.add((t, ts))
        if lk[0] is None:  # from outside the group: an input of the instance
            from_outside.add((t, ts))
            continue
        o, os_ = str(lk[0]), _int(lk[1])
        by_id[t]["inputs"][ts]["link"] = f"l{k}"
        links.append([f"l{k}", o, os_, t, ts, lk[5] if len(lk) > 5 else None])
        linked_out.add((o, os_))
    values = iter(inst.get("widgets_values") if isinstance(inst.get("widgets_values"), list) else ())
    for n in nodes:
        own = n.get("widgets_values")
        if not isinstance(own, list) or not own:
            continue
        driven = {str(i["widget"].get("name")) for s, i in enumerate(n["inputs"])
                  if isinstance(i.get("widget"), Mapping) and (n["id"], s) in fed}
        names = _widget_names(types.get(str(n.get("type"))), len(own))
        wv = list(own)
        for p, name in enumerate(names[: len(own)]):
            if not (name in driven or (name is None and p > 0 and names[p - 1] in driven)):
                wv[p] = next(values, own[p])
        n["widgets_values"] = wv
    external = {(str(e[0]), _int(e[1])) for e in d.get("external") or [] if isinstance(e, (list, tuple)) and len(e) >= 2}
    # outputs of the instance: inner outputs not linked inside (or marked external), in node order
    exposed_out = [(n["id"], s, o.get("type") if isinstance(o, Mapping) else None) for n in nodes
                   for s, o in enumerate(n.get("outputs") or []) if (n["id"], s) not in linked_out or (n["id"], s) in external]
    exposed_in = [(n["id"], s) for n in nodes for s, i in enumerate(n["inputs"])
                  if (n["id"], s) in from_outside or ((n["id"], s) not in fed and "widget" not in i)]
    for k, (nid, s, kind) in enumerate(exposed_out):
        links.append([f"o{k}", nid, s, f"out{k}", 0, kind])
        nodes.append(_boundary_out(k, f"o{k}", kind))
    for j, (nid, s) in enumerate(exposed_in):
        nodes.append(_boundary_in(j))
        links.append([f"i{j}", f"in{j}", 0, nid, s, None])
        by_id[nid]["inputs"][s]["link"] = f"i{j}"
    return {"nodes": nodes, "links": links}


def _subgraph(inst: Mapping[str, Any], d: Mapping[str, Any]) -> dict[str, Any]:
    """A subgraph's inner workflow: links from node -10 are its inputs, links to node -20 its outputs."""
    nodes = [dict(n, id=str(n["id"])) for n in d.get("nodes") or [] if isinstance(n, Mapping) and "id" in n]
    links = []
    outs: dict[int, list[Any]] = {}
    for raw in d.get("links") or []:
        lk = _link(raw)
        if lk is None:
            continue
        if lk[1] == "-10":
            lk[1], lk[2] = f"in{lk[2]}", 0
        if lk[3] == "-20":
            outs[lk[4]] = lk
            lk[3], lk[4] = f"out{lk[4]}", 0
        links.append(lk)
    inst_inputs = [i for i in inst.get("inputs") or [] if isinstance(i, Mapping)]
    values = iter(inst.get("widgets_values") if isinstance(inst.get("widgets_values"), list) else ())
    for j, _spec in enumerate(d.get("inputs") or []):
        given = inst_inputs[j] if j < len(inst_inputs) else {}
        if given.get("link") is None and "widget" in given:
            nodes.append(_boundary_in(j, next(values, None), True))
        else:
            nodes.append(_boundary_in(j))
    for k, lk in outs.items():
        nodes.append(_boundary_out(k, lk[0], lk[5]))
    return {"nodes": nodes, "links": links}


# ---- UI -> API -----------------------------------------------------------------------------------------
def _convert(ui: Mapping[str, Any], types: NodeTypes) -> dict[str, Any]:
    nodes = [n for n in ui.get("nodes") or [] if isinstance(n, Mapping) and "id" in n]
    by_id = {str(n["id"]): n for n in nodes}
    links = {lk[0]: (lk[1], lk[2], lk[5]) for lk in ui.get("links") or []}

    def source(link_id: Any, depth: int = 0) -> tuple[str, int] | Any:
        """The real producer behind a link (through reroutes and bypassed nodes), or a primitive's value."""
        if link_id not in links or depth > 64:
            return None
        nid, slot, kind = links[link_id]
        node = by_id.get(nid)
        if node is None:
            return None
        if node.get("mode") == 2:  # a muted node gives nothing: its consumers lose that input, as when queued
            return None
        if node.get("type") == "Reroute" or node.get("mode") == 4:
            for inp in node.get("inputs") or []:
                if isinstance(inp, Mapping) and inp.get("link") is not None and (
                        node.get("type") == "Reroute" or inp.get("type") == kind):
                    return source(inp["link"], depth + 1)
            return None
        if node.get("type") == "PrimitiveNode":
            values = node.get("widgets_values") or []
            return ("value", values[0]) if values else None
        return nid, slot

    api: dict[str, Any] = {}
    for nid, node in by_id.items():
        ctype = str(node.get("type"))
        if ctype in FRONTEND_ONLY or node.get("mode") in (2, 4):
            continue
        inputs: dict[str, Any] = {}
        for inp in node.get("inputs") or []:
            if not isinstance(inp, Mapping) or inp.get("link") is None or inp.get("name") is None:
                continue
            src = source(inp["link"])
            if isinstance(src, tuple) and len(src) == 2 and src[0] == "value":
                inputs[str(inp["name"])] = src[1]
            elif src is not None:
                inputs[str(inp["name"])] = [src[0], src[1]]
        values = node.get("widgets_values")
        if isinstance(values, Mapping):
            for k, v in values.items():
                inputs.setdefault(str(k), v)
        elif isinstance(values, list):
            for name, value in zip(_widget_names(types.get(ctype), len(values)), values):
                if name is not None:
                    inputs.setdefault(name, value)
        api[nid] = {"class_type": ctype, "inputs": inputs}
    return api


def _widget_names(nt: NodeType | None, count: int) -> list[str | None]:
    """Names for a node's widgets_values, in the front end's order."""
    if nt is None:
        return [f"widget_{i}" for i in range(count)]
    names: list[str | None] = []
    for name, kind in nt.inputs:
        if kind not in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
            continue
        names.append(name)
        if kind == "INT" and _CONTROL.match(name):
            names.append(None)  # the front end's "control after generate" value
        if name == "image" and kind == "COMBO":
            names.append(None)  # LoadImage's upload button
    return names


# ---- Impact Pack components ------------------------------------------------------------------------------
def _component_io(sub: Mapping[str, Any]) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """The component's ComponentInput and ComponentOutput nodes, each in the order their titles number them."""
    def order(n: Mapping[str, Any]) -> tuple[int, int]:
        m = _ORDER.match(str(n.get("title") or ""))
        return (int(m.group(1)) if m else 1 << 20, _int(n.get("id")))

    nodes = [n for n in sub.get("nodes") or [] if isinstance(n, Mapping)]
    ins = sorted((n for n in nodes if n.get("type") == "ComponentInput"), key=order)
    outs = sorted((n for n in nodes if n.get("type") == "ComponentOutput"), key=order)
    return ins, outs


def _first(sockets: Any) -> Mapping[str, Any]:
    return sockets[0] if isinstance(sockets, list) and sockets and isinstance(sockets[0], Mapping) else {}


def _input_name(n: Mapping[str, Any]) -> str | None:
    out = _first(n.get("outputs"))
    return str(out.get("label") or out.get("name") or "") or None  # the label is the name the instance shows


def with_component_types(types: NodeTypes, ui: Mapping[str, Any] | None) -> NodeTypes:
    """`types` plus a NodeType per component the workflow defines (its inputs in order), so widget values get names."""
    components = ui.get("components") if isinstance(ui, Mapping) else None
    if not isinstance(components, Mapping) or not components:
        return types
    extra = {}
    for name, sub in list(components.items())[:256]:
        if not isinstance(sub, Mapping):
            continue
        ins, outs = _component_io(sub)
        inputs = [(str(_input_name(n)), str(_first(n.get("outputs")).get("type") or "COMBO")) for n in ins if _input_name(n)]
        outputs = [(str(_first(n.get("inputs")).get("name")), str(_first(n.get("inputs")).get("type"))) for n in outs]
        extra[str(name)] = NodeType(tuple(outputs), tuple(inputs))
    return types.merged(NodeTypes(extra))


def _through_reroutes(link_id: Any, links: Mapping[Any, list[Any]], nodes: Mapping[str, Mapping[str, Any]]
                      ) -> tuple[str, int] | None:
    """The (node, slot) producing a link inside a component, through its reroutes."""
    for _ in range(64):
        lk = links.get(link_id)
        if lk is None:
            return None
        node = nodes.get(lk[1])
        if node is None or node.get("type") != "Reroute":
            return lk[1], lk[2]
        link_id = _first(node.get("inputs")).get("link")
    return None


def expand_components(api: Mapping[str, Any], ui: Mapping[str, Any] | None, types: NodeTypes | None = None,
                      depth: int = 0) -> dict[str, Any]:
    """The API graph with every Impact component node replaced by its inner nodes (ids `component:inner`)."""
    api = dict(api)
    components = ui.get("components") if isinstance(ui, Mapping) else None
    if not isinstance(components, Mapping) or not components or depth > MAX_DEPTH:
        return api
    types = with_component_types(types or NodeTypes.builtin(), ui)
    for cid, node in list(api.items()):
        sub = components.get(node.get("class_type")) if isinstance(node, Mapping) else None
        if not isinstance(sub, Mapping):
            continue
        given = node.get("inputs") if isinstance(node.get("inputs"), Mapping) else {}
        ins, outs = _component_io(sub)
        # ComponentInput id -> the instance's value or outer link (None: the instance does not give it)
        bindings = {str(n.get("id")): given.get(_input_name(n) or "") for n in ins}
        sub_links = {lk[0]: lk for lk in (_link(x) for x in sub.get("links") or []) if lk is not None}
        sub_nodes = {str(n.get("id")): n for n in sub.get("nodes") or [] if isinstance(n, Mapping)}
        # output slot -> the inner (node, slot) feeding that ComponentOutput
        sources = [_through_reroutes(_first(n.get("inputs")).get("link"), sub_links, sub_nodes) for n in outs]
        inner_ui = dict(sub, components=components)
        inner = expand_components(_convert(flatten(inner_ui, types), types), inner_ui, types, depth + 1)
        rename = {iid: f"{cid}:{iid}" for iid in inner}
        del api[cid]
        for iid, inode in inner.items():
            if inode["class_type"] in _BOUNDARY:
                continue
            fixed = {k: _rebind(v, bindings, rename) for k, v in inode["inputs"].items()}
            api[rename[iid]] = {"class_type": inode["class_type"], "inputs": {k: v for k, v in fixed.items() if v is not None}}
        for other in api.values():
            inputs = other.get("inputs") if isinstance(other, Mapping) else None
            if not isinstance(inputs, dict):
                continue
            for k, v in list(inputs.items()):
                if is_link(v) and str(v[0]) == cid:
                    slot = int(v[1])
                    src = sources[slot] if slot < len(sources) else None
                    value = _rebind([src[0], src[1]], bindings, rename) if src is not None else None
                    if value is None:
                        del inputs[k]
                    else:
                        inputs[k] = value
    return api


def _rebind(value: Any, bindings: Mapping[str, Any], rename: Mapping[str, str]) -> Any:
    """An inner input of a component in the outer graph: a ComponentInput's link becomes the instance's value (or
    its outer link), an inner node's link gets the node's new id."""
    if not is_link(value):
        return value
    src = str(value[0])
    if src in bindings:
        return bindings[src]
    return [rename.get(src, src), value[1]]
