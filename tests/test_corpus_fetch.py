"""bench/corpora: the fetch script rebuilds a corpus from a git repository at a pinned commit, checking
each file's sha256, and bench_readers takes a corpus manifest as --expect."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture()
def source(tmp_path: Path) -> tuple[str, dict]:
    """A git repository with two images in its first commit (the second commit changes one) and a manifest of the first."""
    repo = tmp_path / "src"
    (repo / "img" / "sub dir").mkdir(parents=True)
    first = {"img/a.png": b"\x89PNG first a", "img/sub dir/b c.png": b"\x89PNG b with a space"}
    for rel, data in first.items():
        (repo / rel).write_bytes(data)
    (repo / "README").write_text("not listed")
    git(repo, "init", "-q")
    git(repo, "config", "uploadpack.allowFilter", "true")
    git(repo, "config", "uploadpack.allowAnySHA1InWant", "true")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    commit = git(repo, "rev-parse", "HEAD")
    (repo / "img" / "a.png").write_bytes(b"\x89PNG changed later")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "two")
    manifest = {"name": "toy", "repo": "someone/toy", "url": "unused", "commit": commit,
                "files": [{"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "expect": None}
                          for rel, data in first.items()]}
    return f"file://{repo}", manifest


def test_fetch_writes_the_files_of_the_pinned_commit_and_keeps_good_ones(source: tuple[str, dict], tmp_path: Path) -> None:
    fetch = load(ROOT / "bench" / "corpora" / "fetch.py")
    url, manifest = source
    dest = tmp_path / "out" / "toy"
    assert fetch.fetch_corpus(manifest, dest, url) == (2, 0)
    assert (dest / "img" / "a.png").read_bytes() == b"\x89PNG first a"  # the pinned commit, not the branch tip
    assert (dest / "img" / "sub dir" / "b c.png").read_bytes() == b"\x89PNG b with a space"
    assert not (dest / "README").exists()
    (dest / "img" / "a.png").write_bytes(b"damaged")
    assert fetch.fetch_corpus(manifest, dest, url) == (1, 1)  # only the damaged file is fetched again
    assert (dest / "img" / "a.png").read_bytes() == b"\x89PNG first a"


def test_fetch_refuses_a_file_whose_sha256_differs(source: tuple[str, dict], tmp_path: Path) -> None:
    fetch = load(ROOT / "bench" / "corpora" / "fetch.py")
    url, manifest = source
    manifest["files"][0]["sha256"] = "0" * 64
    with pytest.raises(SystemExit, match="img/a.png: sha256 .* manifest says 0000"):
        fetch.fetch_corpus(manifest, tmp_path / "out", url)
    assert not (tmp_path / "out" / "img" / "a.png").exists()


def test_bench_readers_takes_a_manifest_or_a_plain_expect_file(tmp_path: Path) -> None:
    bench = load(ROOT / "bench" / "bench_readers.py")
    want = {"sha1": bench.digest("a  cat\n"), "starts": "a cat"}
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"name": "toy", "files": [{"path": "x.png", "sha256": "", "expect": want},
                                                             {"path": "y.png", "sha256": "", "expect": None}]}))
    plain = tmp_path / "e.json"
    plain.write_text(json.dumps({"x.png": "a cat", "y.png": None}))
    assert bench.load_expect(manifest) == {"x.png": want, "y.png": None}
    assert bench.load_expect(plain) == {"x.png": "a cat", "y.png": None}
    assert bench.matches(want, "a cat") and not bench.matches(want, "a dog")


def test_committed_manifests_are_well_formed() -> None:
    manifests = sorted((ROOT / "bench" / "corpora").glob("*.json"))
    assert len(manifests) >= 5
    for path in manifests:
        m = json.loads(path.read_text())
        assert len(m["commit"]) == 40 and m["url"].startswith("https://"), path.name
        paths = [f["path"] for f in m["files"]]
        assert len(paths) == len(set(paths)) == m["images"], path.name
        assert sum(f["expect"] is not None for f in m["files"]) == m["with_prompt"], path.name
        for f in m["files"]:
            assert len(f["sha256"]) == 64
            assert f["expect"] is None or (len(f["expect"]["sha1"]) == 40 and f["expect"]["starts"]), (path.name, f["path"])
