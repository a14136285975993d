"""The example workflows against a real headless ComfyUI: every node and input checked against its
/object_info, the UI files converted to API format by our own converter, and the graphs that need no
diffusion weights run end to end with small random-initialised models."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from comfy_server import ComfyServer, execution_error, require_comfyui, save_random_models
from ui_to_api import FRONTEND_ONLY, convert, validate

pytestmark = pytest.mark.slow
require_comfyui("transformers")

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
IMPACT = {"UltralyticsDetectorProvider", "BboxDetectorSEGS", "ImpactSEGSOrderedFilter", "SEGSToImageList", "DetailerForEach"}
IPADAPTER = {"IPAdapterUnifiedLoader", "IPAdapterAdvanced"}
OPTIONAL = {**{t: "ComfyUI-Impact-Pack / Impact-Subpack" for t in IMPACT},
            **{t: "ComfyUI_IPAdapter_plus" for t in IPADAPTER}}
NEEDS = {"luna_detailer_segs_impact": IMPACT, "luna_ipadapter_with_vault": IPADAPTER}
RUNNABLE = {"luna_build_vault_from_folder", "luna_vault_lookup"}  # no diffusion weights needed


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    s = ComfyServer(tmp_path_factory.mktemp("comfyui-workflows"))
    s.prepare()
    save_random_models(s.base)
    data = s.base / "input" / "datasets" / "eyes"
    data.mkdir(parents=True)
    for i in range(6):  # the lookup workflow asks for k=5
        rng = np.random.default_rng(i)
        arr = np.clip(rng.uniform(0, 1, 3) + rng.normal(0, 0.05, (96, 96, 3)), 0, 1)
        arr[12 * i:12 * i + 30, 30:60] = 1.0
        Image.fromarray((arr * 255).astype(np.uint8)).save(data / f"eye{i}.png")
        (data / f"eye{i}.txt").write_text(f"eye prompt {i}")
    Image.open(data / "eye2.png").save(s.base / "input" / "example.png")
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def object_info(server: ComfyServer) -> dict[str, Any]:
    return server.get("/object_info")


def test_every_workflow_is_shipped_once_with_an_api_twin_and_a_thumbnail() -> None:
    names = {p.stem for p in WORKFLOWS}
    assert len(names) == 9
    assert names == {p.stem for p in (REPO / "workflows" / "api").glob("*.json")}
    # ComfyUI's template browser lists every JSON directly inside any of these folders of a pack
    for folder in ("example", "examples", "workflow", "workflows"):
        assert not list((REPO / folder).glob("*.json")), f"{folder}/ would list templates twice"
    for p in WORKFLOWS:
        assert (REPO / "example_workflows" / f"{p.stem}.jpg").is_file(), f"no template thumbnail for {p.stem}"
        assert (REPO / "docs" / "workflows" / f"{p.stem}.png").is_file(), f"no screenshot of {p.stem}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_validates_against_object_info(path: Path, object_info: dict[str, Any]) -> None:
    ui = json.loads(path.read_text())
    assert ui["version"] == 0.4 and ui["nodes"] and ui["groups"], "a UI-format workflow with groups"
    assert any(n["type"] in FRONTEND_ONLY for n in ui["nodes"]), "a note on the canvas explains the workflow"
    api, unconverted = convert(ui, object_info)
    errors, skipped = validate(api, object_info, OPTIONAL, ui)
    assert errors == []
    skipped_types = {api[n]["class_type"] for n in skipped}
    assert skipped_types == NEEDS.get(path.stem, set()), skipped
    assert {api[n]["class_type"] for n in unconverted} == skipped_types
    for reason in skipped.values():
        assert "not installed in the test ComfyUI" in reason
    if skipped:
        assert json.loads(path.read_text())["extra"]["luna_vault"]["needs"], "marked as needing its packs"
    # our converter gives the API twin that ships beside it (widgets of uninstalled nodes aside)
    twin = json.loads((REPO / "workflows" / "api" / path.name).read_text())
    for nid, node in twin.items():
        want = {k: v for k, v in node["inputs"].items() if nid not in unconverted or isinstance(v, list)}
        assert api[nid] == {"class_type": node["class_type"], "inputs": want}, nid
    assert set(api) == set(twin)
    assert any(n["class_type"].startswith("Luna") for n in api.values())


def _runnable(name: str, object_info: dict[str, Any]) -> dict[str, Any]:
    api, _ = convert(json.loads((REPO / "example_workflows" / f"{name}.json").read_text()), object_info)
    api = copy.deepcopy(api)
    for node in api.values():  # the user's model files -> this server's random ones
        if node["class_type"] == "CLIPVisionLoader":
            node["inputs"]["clip_name"] = "vit-l-random.pt"
        if node["class_type"] == "CLIPLoader":
            node["inputs"]["clip_name"] = "clip-l-random.pt"
    return api


def test_runnable_workflows_end_to_end(server: ComfyServer, object_info: dict[str, Any]) -> None:
    assert RUNNABLE < {p.stem for p in WORKFLOWS}
    entry = server.run(_runnable("luna_build_vault_from_folder", object_info))
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    summary = next(o["text"][0] for o in entry["outputs"].values() if "text" in o and "eyes.vault" in o["text"][0])
    assert "+6 entries from 6 images" in summary

    entry = server.run(_runnable("luna_vault_lookup", object_info))  # example.png is eye2.png
    assert entry["status"]["status_str"] == "success", (execution_error(entry) or {}).get("exception_message")
    texts = [o["text"][0] for o in entry["outputs"].values() if "text" in o]
    assert "eye prompt 2" in texts
    report = json.loads(next(t for t in texts if t.startswith("{")))
    top = report["crops"][0]["matches"][0]
    assert top["prompt"] == "eye prompt 2" and top["similarity"] > 0.999 and report["crops"][0]["vault"] == "eyes"
    assert any(o.get("images") for o in entry["outputs"].values())


def test_the_validator_catches_broken_graphs(object_info: dict[str, Any]) -> None:
    ui = json.loads((REPO / "example_workflows" / "luna_crop_detailer_vault.json").read_text())
    api, _ = convert(ui, object_info)
    ks = next(n for n, v in api.items() if v["class_type"] == "KSampler")
    q = next(n for n, v in api.items() if v["class_type"] == "LunaVaultQuery")
    broken = copy.deepcopy(api)
    broken[ks]["inputs"]["sampler_name"] = "no_such_sampler"
    broken[ks]["inputs"]["steps"] = 0
    broken[ks]["inputs"]["positive"] = [q, 3]  # the IMAGE output (matches) into CONDITIONING
    del broken[q]["inputs"]["clip_vision"]
    broken["99"] = {"class_type": "NoSuchNode", "inputs": {}}
    errors, _ = validate(broken, object_info, OPTIONAL)
    text = "\n".join(errors)
    assert "sampler_name: 'no_such_sampler' is not one of" in text
    assert "steps: 0 outside 1..10000" in text
    assert "positive: expects CONDITIONING, linked to a IMAGE output" in text
    assert "required input clip_vision is neither linked nor set" in text
    assert "node 99 (NoSuchNode): no such node type" in text
    # and a UI file whose widget values are shifted by one converts to values that fail
    shifted = copy.deepcopy(ui)
    node = next(n for n in shifted["nodes"] if n["type"] == "KSampler")
    node["widgets_values"] = node["widgets_values"][1:]
    errors, _ = validate(convert(shifted, object_info)[0], object_info, OPTIONAL)
    assert any("KSampler" in e for e in errors)
