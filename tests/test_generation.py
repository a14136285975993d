"""Wildcard grammar against hand-computed expansions, campaign plans and quotas, workflow templates."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from luna_vault.cli import main
from luna_vault.generation.campaign import Campaign, CampaignError, job_seed, spread
from luna_vault.generation.wildcards import WildcardError, WildcardLibrary, parse, tidy
from luna_vault.generation.workflow import WorkflowError, WorkflowTemplate

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "generation"

LIB_YAML = """\
colors:
  basic:
    - red
    - 3:: blue
  deep:
    - "dark {colors.basic}"
shapes: [round, almond]
"""


@pytest.fixture()
def lib(tmp_path: Path) -> WildcardLibrary:
    (tmp_path / "lib.yaml").write_text(LIB_YAML)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "metal.txt").write_text("# metals\ngold\n2:: silver\n\n")
    return WildcardLibrary.load(tmp_path)


def test_systematic_expansion_matches_the_hand_computed_product(lib: WildcardLibrary) -> None:
    assert list(lib.enumerate("{colors.basic} {shapes} eyes")) == [
        "red round eyes", "red almond eyes", "blue round eyes", "blue almond eyes"]
    # a mapping key means every option below it; references nest
    assert list(lib.enumerate("{colors}")) == ["red", "blue", "dark red", "dark blue"]
    # optional parts: with, then without; inline alternatives; a wildcard file by path
    assert list(lib.enumerate("a [b, ]{c|d}, __sub/metal__")) == [
        "a b, c, gold", "a b, c, silver", "a b, d, gold", "a b, d, silver",
        "a c, gold", "a c, silver", "a d, gold", "a d, silver"]
    # weight ranges take the midpoint; plain weights pass through
    assert list(lib.enumerate("(iris:0.8~1.2), (skin:1.3)")) == ["(iris:1.00), (skin:1.3)"]
    assert list(lib.enumerate("{colors.basic} {shapes}", limit=3)) == ["red round", "red almond", "blue round"]
    assert list(lib.enumerate("{x|x|y}")) == ["x", "y"]  # de-duplicated


def test_random_expansion_is_seeded_and_weighted(lib: WildcardLibrary) -> None:
    a = [lib.expand("{colors.basic} [shiny] {shapes}, (glow:0.5~0.7)", random.Random(7)) for _ in range(5)]
    b = [lib.expand("{colors.basic} [shiny] {shapes}, (glow:0.5~0.7)", random.Random(7)) for _ in range(5)]
    assert a == b
    rng = random.Random(0)
    counts = Counter(lib.expand("{colors.basic}", rng) for _ in range(8000))
    assert set(counts) == {"red", "blue"}
    assert 0.72 < counts["blue"] / 8000 < 0.78  # weight 3:1
    weights = {lib.expand("(g:0.5~0.7)", rng) for _ in range(300)}
    assert weights == {"(g:0.50)", "(g:0.55)", "(g:0.60)", "(g:0.65)", "(g:0.70)"}
    opt = Counter(lib.expand("x [y]", rng) for _ in range(4000))
    assert set(opt) == {"x", "x y"} and 0.45 < opt["x y"] / 4000 < 0.55


def test_grammar_errors_name_the_file_and_line(tmp_path: Path, lib: WildcardLibrary) -> None:
    with pytest.raises(WildcardError, match=r"unknown wildcard 'colors\.basik'; did you mean colors\.basic"):
        lib.expand("{colors.basik}", random.Random(0))
    (tmp_path / "bad.yaml").write_text("a:\n  - one\n  - \"{b.c} two\"\nb:\n  c:\n    - \"{a}\"\n")
    with pytest.raises(WildcardError, match=r"bad\.yaml:6: reference cycle (a -> b\.c -> a|b\.c -> a -> b\.c)"):
        WildcardLibrary.load(tmp_path / "bad.yaml")
    (tmp_path / "unknown.yaml").write_text("a:\n  - fine\n  - \"{nope} here\"\n")
    with pytest.raises(WildcardError, match=r"unknown\.yaml:3: unknown wildcard 'nope'"):
        WildcardLibrary.load(tmp_path / "unknown.yaml")
    for text, msg in (("{a", "never closed"), ("a]", "unmatched"), ("[a", "missing ']'"), ("{a b}", "neither a key"),
                      ("(x:1.5~1.0)", "runs backwards")):
        with pytest.raises(WildcardError, match=msg):
            parse(text)
    (tmp_path / "dup.yaml").write_text("colors:\n  basic: [x]\n")
    with pytest.raises(WildcardError, match=r"'colors\.basic' is already defined at .*lib\.yaml:2"):
        WildcardLibrary.load(tmp_path / "lib.yaml", tmp_path / "dup.yaml")


def test_tidy_cleans_what_optional_parts_leave() -> None:
    assert tidy("a, , b,  ,c ") == "a, b,c"
    assert tidy(", a  b ,") == "a b"


def _campaign(tmp_path: Path, body: str) -> Path:
    (tmp_path / "wc").mkdir(exist_ok=True)
    (tmp_path / "wc" / "lib.yaml").write_text(LIB_YAML)
    p = tmp_path / "c.yaml"
    p.write_text(body)
    return p


def test_quotas_are_met_exactly_and_checkpoints_spread(tmp_path: Path) -> None:
    p = _campaign(tmp_path, """\
name: t
wildcards: wc
seed: 5
batch_size: 4
sizes: [224, [336, 224]]
checkpoints: {a.safetensors: 3, b.safetensors: 1}
categories:
  eyes: {quota: 10, templates: ["{colors.basic} {shapes} eyes"]}
  hands: {quota: 7, batch_size: 3, checkpoints: [x, y], templates: ["hand"]}
  empty: {quota: 0, templates: ["nothing"]}
""")
    camp = Campaign.load(p)
    jobs = camp.plan()
    eyes = [j for j in jobs if j.category == "eyes"]
    hands = [j for j in jobs if j.category == "hands"]
    assert [j.batch for j in eyes] == [4, 4, 2] and [j.batch for j in hands] == [3, 3, 1]
    assert sum(j.batch for j in jobs) == 17
    assert [j.checkpoint for j in hands] == ["x", "y", "x"]
    assert [(j.width, j.height) for j in eyes] == [(224, 224), (336, 224), (224, 224)]
    assert [j.job_id for j in eyes] == ["eyes-000000", "eyes-000001", "eyes-000002"]
    assert len({j.job_id for j in jobs}) == len(jobs)
    assert eyes[1].seed == job_seed(5, "eyes", 1) and len({j.seed for j in jobs}) == len(jobs)
    assert camp.plan() == jobs  # a pure function of the file
    info = camp.summary(jobs)
    assert info["categories"]["eyes"] == {"quota": 10, "jobs": 3, "images": 10, "unique_prompts": len({j.prompt for j in eyes}),
                                          "checkpoints": {"a.safetensors": 2, "b.safetensors": 1}}
    assert info["images"] == 17
    # categories advance together
    assert [j.category for j in jobs[:4]] == ["eyes", "hands", "eyes", "hands"]


def test_weighted_spread_is_exact_and_mixed() -> None:
    out = spread({"a": 3, "b": 1}, 8)
    assert out == ["a", "a", "b", "a", "a", "a", "b", "a"]
    counts = Counter(spread({"a": 2, "b": 1, "c": 1}, 1000))
    assert counts == {"a": 500, "b": 250, "c": 250}
    assert spread(["x", "y", "z"], 4) == ["x", "y", "z", "x"]


def test_systematic_campaign_cycles_the_product(tmp_path: Path) -> None:
    p = _campaign(tmp_path, """\
wildcards: [wc]
batch_size: 1
categories:
  eyes: {quota: 6, expansion: systematic, templates: ["{colors.basic} {shapes}"]}
""")
    assert [j.prompt for j in Campaign.load(p).plan()] == ["red round", "red almond", "blue round", "blue almond",
                                                           "red round", "red almond"]


def test_campaign_errors(tmp_path: Path) -> None:
    cases = {
        "categories: {eyes: {quota: 5, templates: ['{colors.nope}']}}\nwildcards: wc\n": r"c\.yaml:\d+: unknown wildcard 'colors\.nope'.*categories\.eyes",
        "categories: {eyes: {quota: -1, templates: [a]}}\n": r"quota must be a whole number",
        "categories: {eyes: {quota: 5}}\n": r"templates must be a list",
        "categories: {eyes: {quota: 5, templates: [a], colour: red}}\n": r"unknown key\(s\) colour",
        "seeds: 3\ncategories: {eyes: {quota: 5, templates: [a]}}\n": r"unknown key\(s\) seeds",
        "categories: {eyes: {quota: 5, templates: [a], batch_size: 0}}\n": r"batch_size must be",
        "categories: {eyes: {quota: 5, templates: [a], checkpoints: {a: 0}}}\n": r"weights must be positive",
        "categories: {eyes: {quota: 5, templates: [a], expansion: all}}\n": r"random or systematic",
        "name: x\n": r"needs a 'categories' mapping",
    }
    for body, msg in cases.items():
        with pytest.raises(CampaignError, match=msg):
            Campaign.load(_campaign(tmp_path, body))
    with pytest.raises(CampaignError, match="does not exist"):
        Campaign.load(tmp_path / "missing.yaml")


def test_workflow_template_fills_typed_values(tmp_path: Path) -> None:
    p = _campaign(tmp_path, """\
batch_size: 2
checkpoints: [sdxl.safetensors]
loras: [{name: detail.safetensors, strength: 0.6}]
categories:
  eyes: {quota: 2, templates: ["blue eyes"]}
""")
    [job] = Campaign.load(p).plan()
    tpl = WorkflowTemplate.load(EXAMPLES / "workflows" / "sdxl_lora_txt2img_api.json")
    g = tpl.fill(job)
    assert g["3"]["inputs"]["seed"] == job.seed and isinstance(g["3"]["inputs"]["seed"], int)
    assert g["5"]["inputs"] == {"width": 224, "height": 224, "batch_size": 2}
    assert g["6"]["inputs"]["text"] == "blue eyes" and g["4"]["inputs"]["ckpt_name"] == "sdxl.safetensors"
    assert g["10"]["inputs"]["lora_name"] == "detail.safetensors" and g["10"]["inputs"]["strength_model"] == 0.6
    assert g["9"]["inputs"]["filename_prefix"] == "luna/eyes"  # inside text
    assert tpl.graph["6"]["inputs"]["text"] == "{{prompt}}"  # the template itself is untouched
    no_ckpt = Campaign.load(_campaign(tmp_path, "categories: {eyes: {quota: 1, templates: [a]}}\n")).plan()[0]
    with pytest.raises(WorkflowError, match="needs checkpoint"):
        tpl.fill(no_ckpt)
    (tmp_path / "w.json").write_text(json.dumps({"1": {"class_type": "X", "inputs": {"a": "{{prompts}}"}}}))
    with pytest.raises(WorkflowError, match=r"unknown placeholder\(s\) \{\{prompts\}\}"):
        WorkflowTemplate.load(tmp_path / "w.json")
    (tmp_path / "ui.json").write_text(json.dumps({"nodes": [], "links": []}))
    with pytest.raises(WorkflowError, match="UI-format"):
        WorkflowTemplate.load(tmp_path / "ui.json")


def test_example_campaigns_plan(capsys: pytest.CaptureFixture[str]) -> None:
    expected = {"eyes": 50000, "hands": 30000, "backgrounds": 10000, "materials": 45000}
    for name, images in expected.items():
        assert main(["plan", str(EXAMPLES / "campaigns" / f"{name}.yaml"), "--rate", "2", "--json",
                     "--workflow", str(EXAMPLES / "workflows" / "sdxl_txt2img_api.json")]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["images"] == images and info["eta_s"] == pytest.approx(images / 2)
        assert sum(c["images"] for c in info["categories"].values()) == images
    assert main(["plan", str(EXAMPLES / "campaigns" / "eyes.yaml")]) == 0
    out = capsys.readouterr().out
    assert "campaign eyes: 12,500 jobs, 50,000 images" in out and "ETA: unknown" in out
