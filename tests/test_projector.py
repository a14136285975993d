"""Projector: sizes, save/load checks, training (resume, determinism, DDP), evaluation against baselines, hybrid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from luna_vault.cli import main
from luna_vault.projector.data import PairSet
from luna_vault.projector.evaluate import evaluate
from luna_vault.projector.io import ProjectorFileError, load_projector, read_header, save_projector
from luna_vault.projector.model import TARGETS, Projector, ProjectorConfig, TargetSpec
from luna_vault.projector.synthetic import make_synthetic_vault
from luna_vault.projector.train import TrainConfig, train
from luna_vault.projector.translate import translate
from luna_vault.vault import EncoderFingerprint, EncoderMismatchError, Vault, search

SMALL = TargetSpec("test", 8, 32, 16, (("clip_l", 0, 16), ("rest", 16, 32)))
IN_DIM = 64


@pytest.fixture(scope="module")
def syn_vault(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("syn") / "syn.vault"
    make_synthetic_vault(path, SMALL, IN_DIM, n_prompts=300, per_prompt=4, seed=0)
    return path


@pytest.fixture(scope="module")
def trained(syn_vault: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("proj") / "syn.safetensors"
    summary = train(syn_vault, out, TrainConfig(epochs=30, batch_size=64), target=SMALL, resume=False, progress=False)
    return out, summary


def test_presets_stay_within_their_budgets(tmp_path: Path) -> None:
    sdxl = Projector(ProjectorConfig.preset(1024, "sdxl"))
    assert sdxl.parameter_count() <= 50_000_000
    clip_l = Projector(ProjectorConfig.preset(768, "sd15"))
    fp = EncoderFingerprint("vit", 768, "h")
    size = save_projector(clip_l, tmp_path / "clip_l.safetensors", fp).stat().st_size
    assert size <= 5_000_000, f"CLIP-L projector file is {size} bytes"
    x = torch.randn(3, 1024)
    for name, in_dim in (("sdxl", 1024), ("flux", 1024)):
        spec = TARGETS[name]
        m = Projector(ProjectorConfig.preset(in_dim, name)).eval()
        tok, pool = m(x)
        assert tok.shape == (3, spec.tokens, spec.dim) and pool.shape == (3, spec.pooled_dim)
    # an untrained head outputs the installed mean conditioning exactly
    m = Projector(ProjectorConfig.preset(1024, "sdxl")).eval()
    mean = torch.randn(77, 2048)
    m.set_stats(mean, torch.rand(77, 2048) + 0.5, torch.zeros(1280), torch.ones(1280))
    torch.testing.assert_close(m(x)[0], mean.expand(3, -1, -1))


def test_split_is_by_prompt(syn_vault: Path) -> None:
    pairs = PairSet.from_vault(Vault.open(syn_vault), SMALL)
    train_p = set(pairs.prompt_ids(pairs.train_ids).tolist())
    val_p = set(pairs.prompt_ids(pairs.val_ids).tolist())
    assert not train_p & val_p
    assert 0.05 < len(val_p) / (len(val_p) + len(train_p)) < 0.15
    assert len(pairs.train_ids) + len(pairs.val_ids) == 1200


def test_projector_beats_the_mean_baseline_clearly(syn_vault: Path, trained: tuple[Path, dict], tmp_path: Path) -> None:
    out, summary = trained
    assert summary["history"][-1]["val_loss"] < summary["history"][0]["val_loss"]
    info = evaluate(syn_vault, out, tmp_path / "report")
    m = info["methods"]
    assert m["projector"]["token_mse"] < 0.5 * m["mean"]["token_mse"]
    assert m["projector"]["token_cosine"] > m["mean"]["token_cosine"] + 0.05
    assert m["projector"]["pooled_cosine"] > m["mean"]["pooled_cosine"] + 0.5
    assert m["projector"]["top1"] > 0.5 > m["mean"]["top1"]
    assert m["vault k-NN (k=5)"]["token_mse"] < m["mean"]["token_mse"]
    assert m["ridge"]["token_mse"] < m["mean"]["token_mse"]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| projector |" in report and "| ridge |" in report
    assert (tmp_path / "report" / "report.png").read_bytes()[:4] == b"\x89PNG"
    for ext in (".train.csv", ".train.json", ".train.png"):
        assert out.with_suffix(ext).is_file()


def test_file_round_trip_and_checks(trained: tuple[Path, dict], syn_vault: Path, tmp_path: Path) -> None:
    out, _ = trained
    header = read_header(out)
    assert header["config"].target == SMALL and header["stats"]["best_epoch"] >= 1
    vault = Vault.open(syn_vault)
    model, _ = load_projector(out, encoder=vault.encoder)
    x = torch.from_numpy(vault.embeddings([0, 1, 2]).astype(np.float32))
    tok, pool = model(x)
    assert tok.shape == (3, 8, 32) and pool.shape == (3, 16)
    with pytest.raises(EncoderMismatchError):
        load_projector(out, encoder=EncoderFingerprint("other", IN_DIM, "zzz"))
    with pytest.raises(EncoderMismatchError, match="32-d"):
        load_projector(out, encoder=EncoderFingerprint("other", 32, ""))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ProjectorFileError):
        read_header(bad)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"), metadata={"format": "something"})
    with pytest.raises(ProjectorFileError, match="not a Luna projector"):
        read_header(tmp_path / "other.safetensors")


def test_resume_and_determinism(syn_vault: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=4, batch_size=64, seed=3)
    full = train(syn_vault, tmp_path / "full.safetensors", cfg, target=SMALL, resume=False, progress=False)
    again = train(syn_vault, tmp_path / "again.safetensors", cfg, target=SMALL, resume=False, progress=False)
    assert [r["train_loss"] for r in full["history"]] == [r["train_loss"] for r in again["history"]]

    def interrupt(row: dict[str, float]) -> None:
        if row["epoch"] == 2:
            raise KeyboardInterrupt  # Ctrl-C after the second epoch's checkpoint

    out = tmp_path / "resumed.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train(syn_vault, out, cfg, target=SMALL, resume=True, progress=False, on_epoch=interrupt)
    ckpt = out.with_suffix(".ckpt.safetensors")  # safetensors + JSON header: no pickle
    from safetensors import safe_open
    with safe_open(str(ckpt), framework="pt") as f:
        assert json.loads(f.metadata()["fields"])["epoch"] == 2
        assert any(k.startswith("optimizer.") for k in f.keys()) and any(k.startswith("model.") for k in f.keys())
    resumed = train(syn_vault, out, cfg, target=SMALL, resume=True, progress=False)
    assert [r["epoch"] for r in resumed["history"]] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["train_loss"] for r in resumed["history"]],
                               [r["train_loss"] for r in full["history"]], rtol=1e-5)
    a, _ = load_projector(out)
    b, _ = load_projector(tmp_path / "full.safetensors")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)
    with pytest.raises(ValueError, match="lr differ.*--no-resume"):
        train(syn_vault, out, TrainConfig(epochs=4, batch_size=64, seed=3, lr=0.1), target=SMALL, progress=False)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_checks.sh runs it on a lent one)"))])
def test_resident_pairs_train_exactly_like_the_streaming_loader(syn_vault: Path, tmp_path: Path, device: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Pairs held on the device give the loader's batches in the loader's order: the same run, faster."""
    if device == "cpu":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    runs = {}
    for resident in (True, False):
        cfg = TrainConfig(epochs=2, batch_size=48, seed=5, resident=resident)  # 1080 pairs: a partial last batch
        runs[resident] = train(syn_vault, tmp_path / f"r{resident}.safetensors", cfg, target=SMALL, resume=False,
                               progress=False)
        assert runs[resident]["resident"] is resident
    tol = 1e-6 if device == "cpu" else 1e-3  # cuBLAS may order sums differently between runs
    np.testing.assert_allclose([r["train_loss"] for r in runs[True]["history"]],
                               [r["train_loss"] for r in runs[False]["history"]], rtol=tol)
    np.testing.assert_allclose([r["val_loss"] for r in runs[True]["history"]],
                               [r["val_loss"] for r in runs[False]["history"]], rtol=tol)
    a, _ = load_projector(tmp_path / "rTrue.safetensors")
    b, _ = load_projector(tmp_path / "rFalse.safetensors")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name, atol=tol, rtol=tol)


def test_hybrid_uses_the_vault_for_known_looks(trained: tuple[Path, dict], syn_vault: Path) -> None:
    out, _ = trained
    vault = Vault.open(syn_vault)
    model, _ = load_projector(out, encoder=vault.encoder)
    known = torch.from_numpy(vault.embeddings([5]).astype(np.float32))
    unknown = torch.randn(1, IN_DIM)
    result = translate(model, torch.cat([known, unknown]), vault=vault, threshold=0.99, k=3, encoder=vault.encoder)
    assert result.paths == ["vault", "projector"]
    assert result.best_similarity[0] > 0.99 > result.best_similarity[1]
    cond = result.conditioning[0][0]
    assert cond.shape == (2, 8, 32)
    [r] = search(vault, known, k=3)
    want = torch.stack([torch.from_numpy(vault.baked(m.prompt_id)[0].astype(np.float32)) for m in r.matches])
    w = torch.softmax(torch.tensor(r.similarities) / 0.05, 0)
    torch.testing.assert_close(cond[0], torch.einsum("k,ktd->td", w, want), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cond[1], model(unknown)[0][0])
    assert result.report(0.99)["crops"][0]["prompt"] == r.matches[0].prompt


def test_cli_train_and_eval(syn_vault: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.safetensors"
    assert main(["train", str(syn_vault), "--out", str(out), "--target", "nope"]) == 2
    assert "--target must be one of sd15, sdxl, flux" in capsys.readouterr().err
    assert main(["train", str(syn_vault), "--out", str(out), "--target", "sdxl", "--epochs", "1"]) == 2
    assert "the sdxl target needs [*, 2048]" in capsys.readouterr().err
    make_synthetic_vault(tmp_path / "l.vault", TARGETS["sd15"], 96, n_prompts=60, per_prompt=2, family="sd15")
    assert main(["train", str(tmp_path / "l.vault"), "--out", str(out), "--epochs", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["best_epoch"] >= 1 and read_header(out)["family"] == "sd15"
    assert main(["eval", str(tmp_path / "l.vault"), "--projector", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["methods"]) == {"projector", "vault k-NN (k=1)", "vault k-NN (k=5)", "ridge", "mean"}


@pytest.mark.slow
def test_ddp_two_processes_gloo(syn_vault: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp.safetensors"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # gloo on the CPU, also on a GPU machine
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          str(29500 + os.getpid() % 1000), "-m", "luna_vault.cli", "train", str(syn_vault), "--out",
                          str(out), "--epochs", "2", "--json"], capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)  # only rank 0 prints
    assert summary["world_size"] == 2 and len(summary["history"]) == 2
    model, header = load_projector(out)
    assert header["stats"]["world_size"] == 2
    assert model(torch.randn(2, IN_DIM))[0].shape == (2, 8, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_checks.sh runs it on a lent one)")
def test_ddp_more_processes_than_gpus_says_what_to_run(syn_vault: Path, tmp_path: Path) -> None:
    n = torch.cuda.device_count() + 1
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-port",
                          str(29600 + os.getpid() % 1000), "-m", "luna_vault.cli", "train", str(syn_vault), "--out",
                          str(tmp_path / "p.safetensors"), "--epochs", "1"], capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert f"has {n - 1} GPU(s)" in res.stderr and f"--nproc-per-node {n - 1}" in res.stderr, res.stderr[-3000:]
