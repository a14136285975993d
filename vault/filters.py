"""Metadata filters: `checkpoint=ponyXL, quality>=0.7, lora~detail` parsed once, applied per entry.

Grammar: conditions separated by commas or newlines, all of which must hold. Each condition is
`key OP value` with OP one of `=`, `!=`, `>=`, `<=`, `>`, `<`, `~` (contains). String comparisons
ignore case; `=` on a list field (loras) matches when any element matches; a LoRA element is
compared by its name. Numbers compare numerically. An entry without the key fails every condition
on it except `!=`.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from ..core.errors import QueryError

_COND = re.compile(r"([A-Za-z_][A-Za-z0-9_.\-]{0,99})[ \t]*(>=|<=|!=|=|>|<|~)(.*)", re.S)  # on a stripped part: linear
MAX_FILTER = 4096
_NUMERIC_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
}
# what users type -> the metadata key it means
ALIASES = {"lora": "loras", "quality_score": "quality", "score": "quality", "ckpt": "checkpoint", "model": "checkpoint"}


def _as_text(value: Any) -> str:
    if isinstance(value, Mapping):
        value = value.get("name", "")
    return str(value).strip().lower()


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value if isinstance(value, (int, float)) else str(value))
    except (ValueError, OverflowError):  # not a number, or an integer beyond float range (a stranger's 400 digits)
        return None


@dataclass(frozen=True)
class Condition:
    """One `key OP value` test on an entry's metadata."""

    key: str
    op: str
    value: str

    def matches(self, meta: Mapping[str, Any]) -> bool:
        if self.key not in meta or meta[self.key] is None:
            return self.op == "!="
        field = meta[self.key]
        items = field if isinstance(field, (list, tuple)) else [field]
        if self.op in _NUMERIC_OPS:
            want = float(self.value)
            return any((x := _as_number(v)) is not None and _NUMERIC_OPS[self.op](x, want) for v in items)
        want_text = self.value.strip().lower()
        if self.op == "~":
            return any(want_text in _as_text(v) for v in items)
        num = _as_number(self.value)
        hit = any(_as_text(v) == want_text or (num is not None and _as_number(v) == num) for v in items)
        return hit if self.op == "=" else not hit


@dataclass(frozen=True)
class Filter:
    """A conjunction of conditions; the empty filter matches everything."""

    conditions: tuple[Condition, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.conditions)

    def __str__(self) -> str:
        return ", ".join(f"{c.key}{c.op}{c.value}" for c in self.conditions)

    def matches(self, meta: Mapping[str, Any]) -> bool:
        return all(c.matches(meta) for c in self.conditions)

    def mask(self, metas: Iterable[Mapping[str, Any]]) -> list[bool]:
        return [self.matches(m) for m in metas]


def parse_filter(spec: "str | Mapping[str, Any] | Filter | None") -> Filter:
    """Parse a filter string (or a {key: value} mapping meaning equality) into a Filter.

    Raises QueryError naming the bad part, e.g. `quality>=high` (not a number) or `=x` (no key).
    """
    if spec is None:
        return Filter()
    if isinstance(spec, Filter):
        return spec
    if isinstance(spec, Mapping):
        return Filter(tuple(Condition(ALIASES.get(str(k), str(k)), "=", str(v)) for k, v in spec.items()))
    text = str(spec)
    if len(text) > MAX_FILTER:
        raise QueryError(f"the filter is {len(text)} characters long; a filter may have at most {MAX_FILTER}")
    conditions = []
    for part in re.split(r"[,\n;]", text):
        part = part.strip()
        if not part:
            continue
        m = _COND.fullmatch(part)
        if not m or not m.group(3).strip():
            raise QueryError(
                f"cannot read filter condition {part[:60]!r}: write key=value, key!=value, key>=number, "
                "key<=number, key>number, key<number or key~text, separated by commas "
                "(e.g. 'checkpoint=ponyXL, quality>=0.7')"
            )
        key, op, value = m.group(1), m.group(2), m.group(3).strip()
        key = ALIASES.get(key.lower(), key)
        if op in _NUMERIC_OPS and _as_number(value) is None:
            raise QueryError(f"filter condition {part[:60]!r}: {op} needs a number, got {value[:40]!r}")
        conditions.append(Condition(key, op, value))
    if not conditions and text.strip():
        raise QueryError(f"the filter {text.strip()[:40]!r} has no condition: write e.g. 'checkpoint=ponyXL, quality>=0.7'")
    return Filter(tuple(conditions))
