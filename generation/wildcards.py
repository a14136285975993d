"""Hierarchical YAML wildcards: prompt templates expanded at random (seeded) or systematically.

Grammar of a template or option text:
  {categories.eyes}        a reference: one option of the list at that dotted key (YAML nesting; a
                           mapping means: any option of any list below it)
  __colors__  __sub/name__ a wildcard file `colors.txt` / `sub/name.txt` (one option per line, `#`
                           comments), or a YAML key written with slashes
  {blue|green|3::grey}     inline alternatives
  [soft lighting]          optional: included or not (50/50 at random; both when systematic)
  (freckles:0.8~1.2)       a ComfyUI weight drawn from a range (steps of 0.05; the midpoint when
                           systematic); `(text:1.2)` without a range passes through unchanged
  3:: blue eyes            an option's weight (at the start of a list item or a file line)
References may nest and point at each other; unknown keys and reference cycles are errors that name
the file and line. The result is tidied: runs of spaces and empty comma-separated parts collapse.
"""

from __future__ import annotations

import difflib
import itertools
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml


class WildcardError(ValueError):
    """A template or wildcard library that cannot be expanded (the message names the file and line)."""


@dataclass(frozen=True)
class Where:
    file: str
    line: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


# ---- the syntax tree -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lit:
    text: str


@dataclass(frozen=True)
class Ref:
    key: str  # dotted
    where: Where


@dataclass(frozen=True)
class Choice:
    options: tuple[tuple[float, "Seq"], ...]


@dataclass(frozen=True)
class Opt:
    body: "Seq"


@dataclass(frozen=True)
class WeightRange:
    body: "Seq"
    lo: float
    hi: float


@dataclass(frozen=True)
class Seq:
    parts: tuple[Lit | Ref | Choice | Opt | WeightRange, ...]


_WEIGHT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*::\s*")
_RANGE = re.compile(r":\s*(\d+(?:\.\d+)?)\s*~\s*(\d+(?:\.\d+)?)\s*$")


def split_weight(text: str) -> tuple[float, str]:
    """'3:: blue eyes' -> (3.0, 'blue eyes'); no prefix -> weight 1."""
    m = _WEIGHT.match(text)
    return (float(m.group(1)), text[m.end():]) if m else (1.0, text)


class _Parser:
    def __init__(self, text: str, where: Where) -> None:
        self.s, self.i, self.where = text, 0, where

    def fail(self, msg: str) -> WildcardError:
        return WildcardError(f"{self.where}: {msg} in {self.s!r}")

    def parse(self) -> Seq:
        seq = self.seq(stop="")
        if self.i < len(self.s):
            raise self.fail(f"unexpected '{self.s[self.i]}' at column {self.i + 1}")
        return seq

    def seq(self, stop: str) -> Seq:
        parts: list = []
        buf: list[str] = []

        def flush() -> None:
            if buf:
                parts.append(Lit("".join(buf)))
                buf.clear()

        while self.i < len(self.s):
            c = self.s[self.i]
            if c in stop:
                break
            if c == "\\" and self.i + 1 < len(self.s):
                buf.append(self.s[self.i + 1])
                self.i += 2
            elif c == "{":
                flush()
                parts.append(self.braces())
            elif c == "[":
                flush()
                self.i += 1
                body = self.seq(stop="]")
                self.expect("]")
                parts.append(Opt(body))
            elif c == "(":
                flush()
                node = self.paren()
                parts.extend(node.parts) if isinstance(node, Seq) else parts.append(node)
            elif c == "_" and self.s.startswith("__", self.i):
                end = self.s.find("__", self.i + 2)
                name = self.s[self.i + 2:end] if end > 0 else ""
                if end > 0 and re.fullmatch(r"[A-Za-z0-9_\-/.]+", name) and not name.startswith("_"):
                    flush()
                    parts.append(Ref(name.replace("/", "."), self.where))
                    self.i = end + 2
                else:
                    buf.append(c)
                    self.i += 1
            elif c in "}]":
                raise self.fail(f"unmatched '{c}' at column {self.i + 1}")
            else:
                buf.append(c)
                self.i += 1
        flush()
        return Seq(tuple(parts))

    def expect(self, c: str) -> None:
        if self.i >= len(self.s) or self.s[self.i] != c:
            raise self.fail(f"missing '{c}'")
        self.i += 1

    def braces(self) -> Ref | Choice:
        start = self.i
        self.i += 1
        options: list[tuple[float, Seq]] = []
        while True:
            weight = 1.0
            m = _WEIGHT.match(self.s, self.i)
            if m:
                weight, self.i = float(m.group(1)), m.end()
            options.append((weight, self.seq(stop="|}")))
            if self.i >= len(self.s):
                raise self.fail(f"'{{' at column {start + 1} is never closed")
            if self.s[self.i] == "}":
                self.i += 1
                break
            self.i += 1  # '|'
        if len(options) == 1:
            [(_, body)] = options
            if len(body.parts) == 1 and isinstance(body.parts[0], Lit):
                key = body.parts[0].text.strip()
                if re.fullmatch(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*", key):
                    return Ref(key, self.where)
            raise self.fail(f"'{{...}}' at column {start + 1} is neither a key nor alternatives 'a|b'")
        return Choice(tuple(options))

    def paren(self) -> WeightRange | Seq:
        start = self.i
        self.i += 1
        body = self.seq(stop=")")
        self.expect(")")
        # a weight range '(text:0.8~1.2)' is the last literal's tail
        if body.parts and isinstance(body.parts[-1], Lit):
            m = _RANGE.search(body.parts[-1].text)
            if m:
                lo, hi = float(m.group(1)), float(m.group(2))
                if lo > hi:
                    raise self.fail(f"weight range {lo}~{hi} at column {start + 1} runs backwards")
                head = body.parts[-1].text[: m.start()]
                parts = body.parts[:-1] + ((Lit(head),) if head else ())
                return WeightRange(Seq(parts), lo, hi)
        return Seq((Lit("("), *body.parts, Lit(")")))


def parse(text: str, where: Where | None = None) -> Seq:
    """Parse a template or option text (raises WildcardError with the location)."""
    return _Parser(text, where or Where("<template>", 1)).parse()


# ---- the library ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    weight: float
    body: Seq
    where: Where


class WildcardLibrary:
    """Every list of options, by dotted key, from YAML files and wildcard text files."""

    def __init__(self) -> None:
        self.lists: dict[str, list[Option]] = {}
        self.groups: dict[str, list[str]] = {}  # mapping key -> the list keys below it
        self.defined: dict[str, Where] = {}

    # loading
    @classmethod
    def load(cls, *sources: str | os.PathLike[str]) -> "WildcardLibrary":
        """Load YAML files (top-level mappings, merged) and folders (every .yaml/.yml and .txt inside;
        a text file `sub/name.txt` becomes the key `sub.name`)."""
        lib = cls()
        for src in sources:
            p = Path(src)
            if p.is_dir():
                for f in sorted(p.rglob("*")):
                    if f.suffix in (".yaml", ".yml"):
                        lib.add_yaml(f)
                    elif f.suffix == ".txt":
                        lib.add_text(f, ".".join(f.relative_to(p).with_suffix("").parts))
            elif p.is_file():
                lib.add_yaml(p) if p.suffix in (".yaml", ".yml") else lib.add_text(p, p.stem)
            else:
                raise WildcardError(f"wildcard source {p} does not exist")
        lib.check()
        return lib

    def add_text(self, path: Path, key: str) -> None:
        opts = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                opts.append(self._option(line, Where(str(path), n)))
        self._define(key, opts, Where(str(path), 1))

    def add_yaml(self, path: Path) -> None:
        text = path.read_text(encoding="utf-8")
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as e:
            raise WildcardError(f"{path}: not valid YAML ({e})") from None
        if root is None:
            return
        if not isinstance(root, yaml.MappingNode):
            raise WildcardError(f"{path}:{root.start_mark.line + 1}: the top level must be a mapping of names to lists")
        self._walk(root, "", path)

    def add_dict(self, data: dict, source: str = "<dict>") -> None:
        """Add lists from a plain dict (tests, campaigns with inline wildcards)."""
        self._walk(yaml.compose(yaml.safe_dump(data), Loader=yaml.SafeLoader), "", Path(source))

    def _walk(self, node: yaml.Node, prefix: str, path: Path, line: int | None = None) -> list[str]:
        where = Where(str(path), line or node.start_mark.line + 1)  # the key's line, where there is one
        if isinstance(node, yaml.MappingNode):
            below: list[str] = []
            for k, v in node.value:
                key = f"{prefix}.{k.value}" if prefix else str(k.value)
                if not re.fullmatch(r"[A-Za-z0-9_\-]+", str(k.value)):
                    raise WildcardError(f"{path}:{k.start_mark.line + 1}: key {k.value!r} may only hold letters, "
                                        "digits, '_' and '-'")
                below += self._walk(v, key, path, k.start_mark.line + 1)
            if prefix:
                self.groups[prefix] = below
                self.defined.setdefault(prefix, where)
            return below
        if isinstance(node, yaml.SequenceNode):
            opts = []
            for item in node.value:
                if (isinstance(item, yaml.MappingNode) and len(item.value) == 1
                        and all(isinstance(n, yaml.ScalarNode) for n in item.value[0])):
                    # `- 3:: blue eyes` unquoted is YAML for {"3:": "blue eyes"}: read it back as the text
                    k, v = item.value[0]
                    item = yaml.ScalarNode("tag:yaml.org,2002:str", f"{k.value}: {v.value}", item.start_mark)
                if not isinstance(item, yaml.ScalarNode):
                    raise WildcardError(f"{path}:{item.start_mark.line + 1}: list items must be text")
                opts.append(self._option(str(item.value), Where(str(path), item.start_mark.line + 1)))
            self._define(prefix, opts, where)
            return [prefix]
        if isinstance(node, yaml.ScalarNode):  # a single option
            self._define(prefix, [self._option(str(node.value), where)], where)
            return [prefix]
        raise WildcardError(f"{where}: unsupported YAML node")

    @staticmethod
    def _option(text: str, where: Where) -> Option:
        weight, body = split_weight(text)
        if weight <= 0:
            raise WildcardError(f"{where}: option weight must be positive in {text!r}")
        return Option(weight, parse(body, where), where)

    def _define(self, key: str, opts: list[Option], where: Where) -> None:
        if not key:
            raise WildcardError(f"{where}: a list needs a name")
        if key in self.lists:
            raise WildcardError(f"{where}: '{key}' is already defined at {self.defined[key]}")
        if not opts:
            raise WildcardError(f"{where}: '{key}' has no options")
        self.lists[key] = opts
        self.defined[key] = where

    # checks
    def options(self, key: str, where: Where) -> list[Option]:
        if key in self.lists:
            return self.lists[key]
        if key in self.groups:
            return [o for k in self.groups[key] for o in self.lists[k]]
        near = difflib.get_close_matches(key, list(itertools.chain(self.lists, self.groups)), n=3, cutoff=0.7)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise WildcardError(f"{where}: unknown wildcard '{key}'{hint}")

    def check(self, templates: list[Seq] = ()) -> None:
        """Every reference resolves and no list reaches itself (errors name the file and line)."""
        state: dict[str, int] = {}  # 1 visiting, 2 done

        def refs(seq: Seq) -> Iterator[Ref]:
            for p in seq.parts:
                if isinstance(p, Ref):
                    yield p
                elif isinstance(p, Choice):
                    for _, s in p.options:
                        yield from refs(s)
                elif isinstance(p, (Opt, WeightRange)):
                    yield from refs(p.body)

        def visit(key: str, where: Where, chain: list[str]) -> None:
            opts = self.options(key, where)
            if state.get(key) == 2:
                return
            if state.get(key) == 1:
                cycle = " -> ".join(chain[chain.index(key):] + [key])
                raise WildcardError(f"{where}: reference cycle {cycle}")
            state[key] = 1
            for o in opts:
                for r in refs(o.body):
                    visit(r.key, r.where, chain + [key])
            state[key] = 2

        for key in list(self.lists):
            visit(key, self.defined[key], [])
        for seq in templates:
            for r in refs(seq):
                visit(r.key, r.where, [])

    # expansion
    def expand(self, template: str | Seq, rng: random.Random) -> str:
        """One random expansion (reproducible for a seeded rng)."""
        seq = parse(template) if isinstance(template, str) else template
        return tidy(self._rand(seq, rng))

    def _rand(self, seq: Seq, rng: random.Random) -> str:
        out = []
        for p in seq.parts:
            if isinstance(p, Lit):
                out.append(p.text)
            elif isinstance(p, Ref):
                opts = self.options(p.key, p.where)
                o = rng.choices(opts, weights=[o.weight for o in opts])[0]
                out.append(self._rand(o.body, rng))
            elif isinstance(p, Choice):
                _, body = rng.choices(p.options, weights=[w for w, _ in p.options])[0]
                out.append(self._rand(body, rng))
            elif isinstance(p, Opt):
                if rng.random() < 0.5:
                    out.append(self._rand(p.body, rng))
            elif isinstance(p, WeightRange):
                steps = round((p.hi - p.lo) / 0.05)
                w = p.lo + 0.05 * rng.randint(0, steps)
                out.append(f"({self._rand(p.body, rng)}:{w:.2f})")
        return "".join(out)

    def enumerate(self, template: str | Seq, limit: int | None = None) -> Iterator[str]:
        """Every expansion in a fixed order (options in file order; optional parts: with, then without),
        de-duplicated, at most `limit` of them."""
        seq = parse(template) if isinstance(template, str) else template
        seen: set[str] = set()
        for text in self._all(seq.parts):
            t = tidy(text)
            if t not in seen:
                seen.add(t)
                yield t
                if limit is not None and len(seen) >= limit:
                    return

    def _all(self, parts: tuple) -> Iterator[str]:
        if not parts:
            yield ""
            return
        for head in self._one(parts[0]):
            for rest in self._all(parts[1:]):
                yield head + rest

    def _one(self, p: Lit | Ref | Choice | Opt | WeightRange) -> Iterator[str]:
        if isinstance(p, Lit):
            yield p.text
        elif isinstance(p, Ref):
            for o in self.options(p.key, p.where):
                yield from self._all(o.body.parts)
        elif isinstance(p, Choice):
            for _, body in p.options:
                yield from self._all(body.parts)
        elif isinstance(p, Opt):
            yield from self._all(p.body.parts)
            yield ""
        elif isinstance(p, WeightRange):
            mid = round((p.lo + p.hi) / 2 / 0.05) * 0.05
            for body in self._all(p.body.parts):
                yield f"({body}:{mid:.2f})"


def tidy(text: str) -> str:
    """Collapse whitespace and empty comma-separated parts left by optional and empty options."""
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s*,(\s*,)+", ",", text)
    text = re.sub(r"\s+,", ",", text)
    text = re.sub(r"\(\s*:[\d.]+\)", "", text)  # a weighted empty part
    return text.strip(" ,")
