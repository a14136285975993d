"""The A/B harness without a server: config checks, arm edits, job graphs, scores by hand, paired
statistics, the report files, and tuned defaults written to (and read back from) a vault's manifest."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from helpers import clustered
from luna_vault.ab import scores as sc
from luna_vault.ab.arms import AbTemplate, apply_arm, arm_settings
from luna_vault.ab.config import AbConfigError, Arm, load_config
from luna_vault.ab.report import verdict_line
from luna_vault.ab.stats import arm_verdict, bootstrap_ci, paired, relevance, summarise, verdict
from luna_vault.ab.tune import best_arm, write_defaults
from luna_vault.vault import EncoderFingerprint, Vault, VaultCorruptError, build
from luna_vault.vault.manifest import MANIFEST

REPO = Path(__file__).resolve().parents[1]
DETAILER = json.loads((REPO / "workflows" / "api" / "luna_crop_detailer_vault.json").read_text())


def _setup(tmp: Path, arms: dict[str, Any] | None = None, **extra: Any) -> Path:
    (tmp / "detailer.json").write_text(json.dumps(DETAILER))
    Image.fromarray(np.full((64, 80, 3), 40, np.uint8)).save(tmp / "ref0.png")
    Image.fromarray(np.full((64, 64, 3), 80, np.uint8)).save(tmp / "ref1.png")  # already the (square) crop
    cfg = {"template": "detailer.json", "servers": ["127.0.0.1:1"], "seeds": [3, 4],
           "references": [{"image": "ref0.png", "region": [8, 4, 32, 32]}, {"image": "ref1.png", "crop": True}],
           "arms": arms or {"base": {"vault": False}, "v3": {"set": {"LunaVaultQuery.strength": 0.3}}}, **extra}
    (tmp / "ab.yaml").write_text(yaml.safe_dump(cfg))
    return tmp / "ab.yaml"


def test_config_and_job_graphs(tmp_path: Path) -> None:
    cfg = load_config(_setup(tmp_path, set={"KSampler.steps": 2}))
    assert cfg.name == "ab" and cfg.baseline == "base" and [r.name for r in cfg.references] == ["ref0", "ref1"]
    assert cfg.references[0].size == (80, 64) and cfg.references[1].region is None
    tpl = AbTemplate(cfg, cfg.template_graph())
    assert tpl.bind["image"] == ("1", "image") and tpl.bind["output"] == "18" and tpl.bind["seed"] == [("14", "seed")]
    assert tpl.bind["x"] == ("2", "value") and tpl.bind["width"] == tpl.bind["height"] == ("4", "value")
    jobs = tpl.jobs()
    assert [j.job_id for j in jobs[:3]] == ["base--ref0--s3", "v3--ref0--s3", "base--ref0--s4"] and len(jobs) == 8
    g = tpl.fill(jobs[1])
    assert g["1"]["inputs"]["image"] == tpl.uploads["ref0"] and tpl.uploads["ref0"].startswith("luna_ab/")
    assert (g["2"]["inputs"]["value"], g["3"]["inputs"]["value"], g["4"]["inputs"]["value"]) == (8, 4, 32)
    assert g["14"]["inputs"]["seed"] == 3 and g["14"]["inputs"]["steps"] == 2 and g["10"]["inputs"]["strength"] == 0.3
    # the probe scores the saved image against the reference region in the Query's CLIP vision model
    assert g["luna_ab_probe"] == {"class_type": "LunaAbProbe", "inputs": {
        "image": ["17", 0], "reference": ["1", 0], "clip_vision": ["7", 0], "x": 8, "y": 4, "width": 32, "height": 32,
        "vault": "", "k": 5}}
    assert tpl.notes == ["no vault to compare prompts in (set vault:, or name one in the Query): vault agreement is "
                         "not scored"]
    # the vault-off arm: the KSampler takes the Query's own conditioning; the Query and its preview are gone
    base = tpl.fill(jobs[0])
    assert "10" not in base and "11" not in base and base["14"]["inputs"]["positive"] == ["8", 0]
    assert base["luna_ab_probe"]["inputs"]["clip_vision"] == ["7", 0] and "7" in base  # the loader stays for scoring
    assert base["14"]["inputs"]["steps"] == 2  # the shared edits reach every arm
    ready = tpl.fill(jobs[4])  # ref1 is a ready crop: the region is the whole image
    assert (ready["2"]["inputs"]["value"], ready["3"]["inputs"]["value"], ready["4"]["inputs"]["value"]) == (0, 0, 64)
    assert arm_settings(tpl.arms["v3"]) == {"vault": "auto-detect", "strength": 0.3, "k": 5, "temperature": 0.05,
                                            "blend_mode": "average"}
    assert arm_settings(tpl.arms["base"]) == {"vault": "off", "strength": 0.0}
    assert tpl.sidecar(jobs[1])["checkpoint"] == "sd_xl_base_1.0.safetensors"


def test_bad_configs_name_the_key(tmp_path: Path) -> None:
    def err(**changes: Any) -> str:
        path = _setup(tmp_path)
        raw = yaml.safe_load(path.read_text())
        raw.update(changes)
        path.write_text(yaml.safe_dump(raw))
        with pytest.raises(AbConfigError) as e:
            cfg = load_config(path)
            AbTemplate(cfg, cfg.template_graph())
        return str(e.value)

    assert "arm 'ip', set IPAdapterAdvanced.weight: the template has no node 'IPAdapterAdvanced'" in err(
        arms={"ip": {"set": {"IPAdapterAdvanced.weight": 0.5}}})
    assert "node 10 (LunaVaultQuery) has no input 'strenght'" in err(arms={"a": {"set": {"10.strenght": 0.5}}})
    assert "reference 1 (ref0.png) has no region" in err(references=[{"image": "ref0.png"}])
    assert "region [70, 0, 32, 32] is not inside the 80x64 image" in err(
        references=[{"image": "ref0.png", "region": [70, 0, 32, 32]}])
    assert "the template crops a square" in err(references=[{"image": "ref0.png", "region": [0, 0, 32, 16]}])
    assert "its region is 80x64" in err(references=[{"image": "ref0.png", "crop": True}])
    assert "does not exist" in err(references=[{"image": "nope.png", "crop": True}])
    assert "baseline 'x' is not one of the arms" in err(baseline="x")
    assert "unknown key(s) sedes" in err(sedes=[1])
    assert "relevance maps scores" in err(relevance={"ssim": 0.1})  # no better side: nothing to weigh
    assert "relevance maps scores" in err(relevance={"ciede2000": -1})
    assert load_config(_setup(tmp_path, relevance={"ciede2000": 2})).relevance == {"ciede2000": 2.0}
    assert "'seeds' must be a list of distinct" in err(seeds=[1, 1])
    assert "is not a plain name" in err(arms={"../evil": {}})
    assert "would remove the scored output node 18" in err(arms={"a": {"remove": ["KSampler"]}})
    assert "removes node 7, the CLIP vision model the outputs are scored with" in err(
        arms={"a": {"vault": "off", "remove": ["CLIPVisionLoader"]}})
    assert "a list must be a link [node id, output] to a node of the graph" in err(
        arms={"a": {"set": {"KSampler.positive": ["99", 0]}}})
    (tmp_path / "ui.json").write_text(json.dumps({"nodes": [], "links": []}))
    assert "UI-format workflow" in err(template="ui.json")


def test_vault_off_needs_a_user_conditioning() -> None:
    g = json.loads(json.dumps(DETAILER))
    del g["10"]["inputs"]["conditioning"]
    with pytest.raises(AbConfigError, match="there is no user conditioning to use instead"):
        apply_arm(g, Arm("off", vault_off=True), "18")
    g = json.loads(json.dumps(DETAILER))
    g["14"]["inputs"]["positive"] = ["10", 1]  # the retrieved conditioning alone
    with pytest.raises(AbConfigError, match="retrieved"):
        apply_arm(g, Arm("off", vault_off=True), "18")
    with pytest.raises(AbConfigError, match="has no LunaVaultQuery"):
        apply_arm({"1": {"class_type": "SaveImage", "inputs": {}}}, Arm("off", vault_off=True), "1")


def test_scores_against_hand_computations() -> None:
    red = np.zeros((16, 16, 3), np.float32)
    red[..., 0] = 1.0
    blue = np.zeros((16, 16, 3), np.float32)
    blue[..., 2] = 1.0
    grey = np.full((16, 16, 3), 0.5, np.float32)
    assert sc.ciede2000(red, red) == pytest.approx(0.0, abs=1e-9)
    assert sc.ciede2000(red, blue) == pytest.approx(52.88, abs=0.05)  # sRGB red vs blue, CIEDE2000 tables
    assert sc.hue_distance(red, blue) == pytest.approx(1.0) and sc.hue_distance(red, red) == 0.0
    assert sc.hue_histogram(grey).sum() == 0.0 and sc.hue_histogram(red).sum() == pytest.approx(1.0)
    tinted = grey.copy()
    tinted[..., 0] += 0.01  # a faint red cast on grey: almost no colour, so almost no hue difference
    assert sc.hue_distance(grey, tinted) < 0.02  # normalising the histograms made this ~0.97
    half = red * 0.5  # the same hue at half the value: half the colour
    assert sc.hue_distance(red, half) == pytest.approx(0.25)
    assert sc.ssim(red, red) == pytest.approx(1.0) and sc.ssim(red[:5, :5], red[:5, :5]) is None
    assert sc.agreement([1, 2, 3, 4, 5], [5, 4, 9, 8, 7], 5) == pytest.approx(0.4)
    assert sc.cosine(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(2 ** -0.5)
    full = np.random.default_rng(0).random((64, 80, 3)).astype(np.float32)
    cut, note = sc.output_region(full, (80, 64), (8, 4, 32, 32))  # a full-size output: the region is cut out
    assert np.array_equal(cut, full[4:36, 8:40]) and note == ""
    same, note = sc.output_region(full[:32, :32], (80, 64), (8, 4, 32, 32))  # the crop itself
    assert same.shape == (32, 32, 3) and note == ""
    resized, note = sc.output_region(full, (100, 100), (0, 0, 20, 20))
    assert resized.shape == (20, 20, 3) and note == "output 80x64 resized to the 20x20 region"
    with pytest.raises(ValueError, match="differ in shape"):
        sc.pixel_scores(red, red[:8])


def _rows(diffs: list[float], score: str = "clip_similarity") -> list[dict[str, Any]]:
    rows = []
    for i, d in enumerate(diffs):
        rows.append({"arm": "base", "reference": f"r{i}", "seed": 1, "category": "c", score: 0.5})
        rows.append({"arm": "v", "reference": f"r{i}", "seed": 1, "category": "c", score: 0.5 + d})
    return rows


def test_paired_statistics() -> None:
    p = paired(_rows([0.1, 0.2, -0.1, 0.0]), "v", "base", "clip_similarity", threshold=0.01)
    assert p["pairs"] == 4 and p["diff"] == pytest.approx(0.05)
    assert (p["wins"], p["ties"], p["losses"], p["win_rate"]) == (2, 1, 1, 0.5)  # a tie is a tie, not half a win
    assert p["ci"][0] <= 0.05 <= p["ci"][1] and p["ci"][0] >= -0.1 and p["ci"][1] <= 0.2
    lower = paired(_rows([0.1, 0.2, -0.1, 0.0], "ciede2000"), "v", "base", "ciede2000")
    assert (lower["wins"], lower["ties"], lower["losses"]) == (1, 1, 2)  # lower is better for colour difference
    unseen = paired(_rows([0.1, 0.2, -0.1, 0.0], "ciede2000"), "v", "base", "ciede2000", threshold=1.0)
    assert (unseen["wins"], unseen["ties"], unseen["losses"], unseen["verdict"]) == (0, 4, 0, "same")  # ΔE < 1 each
    zero = paired(_rows([0.0] * 4), "v", "base", "clip_similarity", threshold=0.01)
    assert (zero["wins"], zero["ties"], zero["win_rate"], zero["verdict"]) == (0, 4, 0.0, "same")  # was "wins 50% of 4"
    assert "win_rate" not in paired(_rows([0.1, 0.2], "ssim"), "v", "base", "ssim")  # no better side
    assert bootstrap_ci(np.array([0.3])) is None and bootstrap_ci(np.array([0.2, 0.2])) == (0.2, 0.2)
    wide = bootstrap_ci(np.random.default_rng(1).normal(0, 1, 5))
    narrow = bootstrap_ci(np.random.default_rng(1).normal(0, 1, 500))
    assert wide[1] - wide[0] > 3 * (narrow[1] - narrow[0])  # ~sqrt(100) narrower with 100x the pairs
    s = summarise(_rows([0.1, 0.2]), ["base", "v"], "base", ["clip_similarity"])
    assert set(s) == {"all"} and s["all"]["base"]["clip_similarity"] == {"n": 2, "mean": 0.5, "pairs": 2}


@pytest.mark.parametrize("diff, ci, higher, t, want", [
    (0.021, [0.008, 0.034], True, 0.01, "better"),  # the interval excludes 0 and the mean reaches the threshold
    (0.021, [-0.002, 0.034], True, 0.01, "unclear"),  # it may be nothing
    (0.005, [0.001, 0.02], True, 0.01, "unclear"),  # supported, below the threshold, but could reach it
    (0.004, [0.001, 0.008], True, 0.01, "same"),  # supported yet too small to matter
    (0.0002, [0.0001, 0.0003], False, 0.05, "same"),  # the +0.0002 hue difference the issue saw painted red
    (0.0, [0.0, 0.0], True, 0.01, "same"),
    (-2.0, [-3.0, -1.2], False, 1.0, "better"),  # ΔE lowered by 2: better
    (2.0, [1.2, 3.0], False, 1.0, "worse"),
    (-0.5, [-0.9, -0.1], False, 1.0, "same"),  # lower, but by less than a just-noticeable difference
    (0.3, None, True, 0.01, "few"),
])
def test_verdicts_weigh_the_interval_against_relevance(diff: float, ci: Any, higher: bool, t: float, want: str) -> None:
    assert verdict(diff, ci, higher, t) == want


def test_arm_verdicts_and_their_lines() -> None:
    assert arm_verdict({"a": {"verdict": "better"}, "b": {"verdict": "same"}}) == "better"
    assert arm_verdict({"a": {"verdict": "better"}, "b": {"verdict": "worse"}}) == "mixed"
    assert arm_verdict({"a": {"verdict": "same"}, "b": {"verdict": "same"}}) == "same"
    assert arm_verdict({"a": {"verdict": "same"}, "b": {"verdict": "unclear"}}) == "unclear"
    assert arm_verdict({"a": {"verdict": "few"}}) == arm_verdict({"ssim": {}}) == "few"
    assert relevance(5) == {"clip_similarity": 0.01, "ciede2000": 1.0, "hue_distance": 0.05, "vault_agreement": 0.1}
    assert relevance(4, {"ciede2000": 2.0})["ciede2000"] == 2.0 and relevance(4)["vault_agreement"] == 0.125
    rows = []
    for i in range(12):  # arm "good": CLIP +0.02 on every pair; "tiny": hue -0.0002; "tie": identical; "bad": ΔE +2
        for arm, clip, de, hue in (("base", 0.5, 3.0, 0.2), ("good", 0.52, 3.0, 0.2), ("tiny", 0.5, 3.0, 0.1998),
                                   ("tie", 0.5, 3.0, 0.2), ("bad", 0.5, 5.0, 0.2)):
            rows.append({"arm": arm, "reference": f"r{i}", "seed": 1, "category": "c", "clip_similarity": clip,
                         "ciede2000": de + 0.01 * (i % 3), "hue_distance": hue})
    scores = ["clip_similarity", "ciede2000", "hue_distance"]
    summary = summarise(rows, ["base", "good", "tiny", "tie", "bad"], "base", scores, relevance())["all"]
    assert verdict_line("good", summary["good"], "base") == (
        "good: better against base over 12 pairs — CLIP similarity +0.02 [+0.02, +0.02]: better; CIEDE2000 (mean ΔE) "
        "+0 [+0, +0]: no difference that matters; hue distance +0 [+0, +0]: no difference that matters")
    assert verdict_line("tiny", summary["tiny"], "base").startswith("tiny: no difference that matters against base")
    assert summary["tie"]["clip_similarity"]["ties"] == 12
    assert verdict_line("bad", summary["bad"], "base").startswith("bad: worse against base over 12 pairs")
    assert summary["bad"]["ciede2000"]["losses"] == 12


def _vault(tmp: Path) -> Path:
    x = clustered(20, 16, clusters=3, seed=0)
    build(tmp / "eyes.vault", x, [f"p{i % 5}" for i in range(20)], encoder=EncoderFingerprint("enc", 16, "h"),
          category="eyes")
    return tmp / "eyes.vault"


def test_write_defaults_stores_the_best_vault_arm(tmp_path: Path) -> None:
    vault = _vault(tmp_path)
    arms = {"base": {"vault": "off"}, "v3": {"set": {"LunaVaultQuery.strength": 0.3}},
            "v5": {"set": {"LunaVaultQuery.strength": 0.5, "LunaVaultQuery.k": 3, "LunaVaultQuery.temperature": 0.1}}}
    cfg = load_config(_setup(tmp_path, arms, vault=str(vault), name="eyes-tune"))
    tpl = AbTemplate(cfg, cfg.template_graph())
    rows = [{"arm": a, "reference": "r", "seed": s, "category": "c", "clip_similarity": base + s * 0.01}
            for a, base in (("base", 0.5), ("v3", 0.55), ("v5", 0.6)) for s in range(3)]
    assert best_arm(cfg, tpl, rows)[0] == "v5"
    generation = Vault.open(vault).manifest.generation
    tuned = write_defaults(cfg, tpl, rows)
    assert (tuned.strength, tuned.k, tuned.temperature, tuned.blend_mode) == (0.5, 3, 0.1, "average")
    assert tuned.checkpoint == "sd_xl_base_1.0.safetensors" and tuned.samples == 3 and tuned.run == "eyes-tune"
    assert tuned.improvement == pytest.approx(0.1) and tuned.metric == "clip_similarity"
    v = Vault.open(vault)
    assert v.manifest.tuned == tuned and v.manifest.generation == generation + 1 and len(v) == 20
    assert v.info()["tuned"]["k"] == 3
    # no vault arm better than the baseline: nothing is written
    worse = [dict(r, clip_similarity=0.4) if r["arm"] != "base" else r for r in rows]
    with pytest.raises(AbConfigError, match="no vault arm beat the baseline"):
        write_defaults(cfg, tpl, worse)
    assert Vault.open(vault).manifest.tuned == tuned


@pytest.mark.parametrize("bad", [{"strength": 1.5}, {"k": 0}, {"blend_mode": "mix"}, {"temperature": float("nan")},
                                 {"k": "5"}])
def test_a_forged_tuned_block_is_refused_at_open(tmp_path: Path, bad: dict[str, Any]) -> None:
    vault = _vault(tmp_path)
    m = json.loads((vault / MANIFEST).read_text())
    m["tuned"] = {"strength": 0.3, "k": 5, "temperature": 0.05, "blend_mode": "average", "checkpoint": "x",
                  "tuned_at": "2026-11-26T00:00:00+00:00", "metric": "clip_similarity", "improvement": 0.01,
                  "samples": 4, "run": "r", **bad}
    (vault / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(VaultCorruptError, match="tuned"):
        Vault.open(vault)


def test_report_from_finished_outputs_skips_an_unreadable_one(tmp_path: Path) -> None:
    """A run whose outputs are all on disk (the ledger says done): nothing is queued, every output is
    scored from its pixels and its probe scores, one damaged file is reported, and the report is written."""
    from luna_vault.ab.run import run_ab
    from luna_vault.generation.dispatch import LEDGER, Ledger

    cfg = load_config(_setup(tmp_path))
    tpl = AbTemplate(cfg, cfg.template_graph())
    out = tmp_path / "run"
    out.mkdir()
    jobs = tpl.jobs()
    ledger = Ledger(out / LEDGER)
    ledger.sync(jobs)
    rng = np.random.default_rng(0)
    for j in jobs:
        ledger.set(j.job_id, "done")
        ref = tpl.refs[j.reference]
        (out / j.arm).mkdir(exist_ok=True)
        pixels = rng.integers(0, 255, (ref.size[1], ref.size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(out / j.arm / f"{j.job_id}_0.png")
        (out / j.arm / f"{j.job_id}_0.json").write_text(json.dumps(
            {"comfy_seconds": 1.5, "probe": {"clip_similarity": 0.5 + 0.1 * (j.arm == "v3"), "encoder": "e"}}))
    ledger.close()
    (out / "v3" / f"{jobs[-1].job_id}_0.png").write_bytes(b"not a png")
    run = run_ab(cfg, out, progress=False)
    assert len(run.rows) == 7 and run.missing == 1 and run.failed == []
    assert any("could not be scored" in n and jobs[-1].job_id in n for n in run.notes)
    row = next(r for r in run.rows if r["arm"] == "v3")
    assert row["clip_similarity"] == pytest.approx(0.6) and row["vault_agreement"] is None and row["ciede2000"] > 0
    assert row["strength"] == 0.3 and row["comfy_seconds"] == 1.5
    summary = json.loads((out / "ab_summary.json").read_text())
    assert summary["summary"]["all"]["v3"]["clip_similarity"]["pairs"] == 3
    assert summary["summary"]["all"]["v3"]["clip_similarity"]["diff"] == pytest.approx(0.1)
    page = (out / "ab_report.html").read_text()
    assert "could not be scored" in page and "1 of 8 outputs are missing" in page
    # one verdict line per arm at the top, and each of its scores says what the table's cell says
    line = re.search(r"<li data-arm='v3' data-verdict='(\w+)'>(.*?)</li>", page)
    assert line and page.index("<h2>Verdict</h2>") < page.index("<h2>Outputs</h2>") < page.index("<table")
    said = dict(re.findall(r"data-score='(\w+)' data-verdict='(\w+)'", line.group(2)))
    table = page[page.index("<table data-category='all'>"):]
    table = table[:table.index("</table>")]
    cells = dict(re.findall(r"<td data-arm='v3' data-score='(\w+)' class='\w+' data-verdict='(\w+)'>", table))
    assert said == cells and said["clip_similarity"] == "better" and set(said) == {"clip_similarity", "ciede2000",
                                                                                   "hue_distance"}
    assert line.group(1) in ("better", "mixed")
    assert summary["meta"]["verdicts"]["v3"].startswith(f"v3: {'better' if line.group(1) == 'better' else 'mixed'}")
    assert summary["meta"]["relevance"]["clip_similarity"] == 0.01
    assert re.findall(r"<details class='seed' data-seed='(\d+)'( open)?>", page) == [("3", " open"), ("4", "")]
    assert page.count("<figure><img") == 2 * 2 * 3 - 1  # every seed: 2 references + their outputs, 1 missing
    assert len((out / "ab_scores.csv").read_text().splitlines()) == 8  # header + 7


def test_ipadapter_arms_on_the_ipadapter_workflow(tmp_path: Path) -> None:
    """The four arms a user compares on luna_ipadapter_with_vault: nothing, IP-Adapter, vault, both."""
    ipa = json.loads((REPO / "workflows" / "api" / "luna_ipadapter_with_vault.json").read_text())
    (tmp_path / "ipa.json").write_text(json.dumps(ipa))
    path = _setup(tmp_path, {"plain": {"vault": "off", "set": {"KSampler.model": ["6", 0]}},
                             "ipadapter": {"vault": "off"},
                             "vault": {"set": {"KSampler.model": ["6", 0]}},
                             "both": {"set": {"IPAdapterAdvanced.weight": 0.4}}}, template="ipa.json")
    cfg = load_config(path)
    tpl = AbTemplate(cfg, cfg.template_graph())
    ks = {arm: g["16"]["inputs"] for arm, g in tpl.arms.items()}
    assert ks["plain"]["model"] == ["6", 0] and ks["plain"]["positive"] == ["8", 0]
    assert ks["ipadapter"]["model"] == ["11", 0] and ks["ipadapter"]["positive"] == ["8", 0]
    assert ks["vault"]["model"] == ["6", 0] and ks["vault"]["positive"] == ["12", 0]
    assert ks["both"]["model"] == ["11", 0] and tpl.arms["both"]["11"]["inputs"]["weight"] == 0.4
    assert tpl.bind["output"] == "20" and tpl.encoder == ["7", 0]  # the Query's CLIP vision scores every arm
    assert {a: arm_settings(g)["strength"] for a, g in tpl.arms.items()} == {"plain": 0.0, "ipadapter": 0.0,
                                                                              "vault": 0.3, "both": 0.3}
