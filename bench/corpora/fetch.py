"""Rebuild the reader development corpora from their manifests: each public repository at its pinned commit.

Run by hand: `python bench/corpora/fetch.py DIR [NAME ...] [--url TEMPLATE]`.
For every manifest bench/corpora/<name>.json (or only the NAMEs given) the repository is fetched with
git at the manifest's commit (a shallow, blob-less fetch: only the listed files are downloaded), each
listed file is written to DIR/<name>/<path> and its sha256 checked against the manifest. Files already
in place with the right sha256 are kept. Then score a reader with
`python bench/bench_readers.py DIR/<name> --expect bench/corpora/<name>.json --list`.
--url is the clone URL template ({repo} = owner/name, {owner}, {name}); the default is the manifest's
url (https). The images are never committed to this repository: see bench/corpora/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def git(cwd: Path, *args: str, binary: bool = False) -> bytes | str:
    """Run git in `cwd`; exit with git's own message when it fails."""
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True)
    if r.returncode != 0:
        sys.exit(f"git {' '.join(args)} failed in {cwd}: {r.stderr.decode(errors='replace').strip()}")
    return r.stdout if binary else r.stdout.decode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_corpus(manifest: dict, dest: Path, url: str) -> tuple[int, int]:
    """Fetch one corpus into `dest`; returns (files written, files already in place)."""
    todo = [f for f in manifest["files"]
            if not ((dest / f["path"]).is_file() and sha256((dest / f["path"]).read_bytes()) == f["sha256"])]
    if not todo:
        return 0, len(manifest["files"])
    commit = manifest["commit"]
    with tempfile.TemporaryDirectory(prefix=f"corpus-{manifest['name']}-") as tmp:
        work = Path(tmp)
        git(work, "init", "-q")
        git(work, "remote", "add", "origin", url)
        # a promisor remote with a blob filter: blobs are fetched lazily, only those we read
        git(work, "config", "remote.origin.promisor", "true")
        git(work, "config", "remote.origin.partialclonefilter", "blob:none")
        git(work, "fetch", "-q", "--depth", "1", "--filter=blob:none", "origin", commit)
        # ask for the listed blobs in a few batches instead of one lazy round trip per file
        listing = git(work, "ls-tree", "-r", "-z", commit)
        oid = {line.split("\t", 1)[1]: line.split()[2] for line in listing.split("\0") if "\t" in line}
        missing = [f["path"] for f in todo if f["path"] not in oid]
        if missing:
            sys.exit(f"{manifest['name']}: {len(missing)} listed files are not in {commit}, e.g. {missing[0]!r}")
        wanted = sorted({oid[f["path"]] for f in todo})
        for i in range(0, len(wanted), 256):
            git(work, "fetch", "-q", "--filter=blob:none", "origin", *wanted[i:i + 256])
        for f in todo:
            data = git(work, "cat-file", "blob", f"{commit}:{f['path']}", binary=True)
            if sha256(data) != f["sha256"]:
                sys.exit(f"{manifest['name']}/{f['path']}: sha256 {sha256(data)} at {commit}, manifest says {f['sha256']}; "
                         f"the repository history was rewritten or the manifest is wrong")
            out = dest / f["path"]
            out.parent.mkdir(parents=True, exist_ok=True)
            part = out.with_name(out.name + ".part")
            part.write_bytes(data)
            part.replace(out)
    return len(todo), len(manifest["files"]) - len(todo)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="where the corpora go: FOLDER/<name>/...")
    ap.add_argument("names", nargs="*", help="corpus names (default: every manifest here)")
    ap.add_argument("--url", help="clone URL template, e.g. https://github.com/{repo}.git or /mirrors/{owner}+{name}")
    args = ap.parse_args()
    names = args.names or sorted(p.stem for p in HERE.glob("*.json"))
    for name in names:
        path = HERE / f"{name}.json"
        if not path.is_file():
            sys.exit(f"no manifest {path}; known: {', '.join(sorted(p.stem for p in HERE.glob('*.json')))}")
        manifest = json.loads(path.read_text())
        owner, repo_name = manifest["repo"].split("/", 1)
        url = args.url.format(repo=manifest["repo"], owner=owner, name=repo_name) if args.url else manifest["url"]
        written, kept = fetch_corpus(manifest, Path(args.folder) / name, url)
        print(f"{name}: {written} written, {kept} already in place ({manifest['repo']} @ {manifest['commit'][:10]})")


if __name__ == "__main__":
    main()
