"""Metadata filter grammar, checked against hand-written expectations."""

from __future__ import annotations

import pytest

from luna_vault.vault import QueryError, parse_filter

ENTRY = {
    "checkpoint": "ponyXL_v6.safetensors",
    "quality": 0.72,
    "seed": 42,
    "loras": [{"name": "DetailTweaker", "strength": 0.5}, {"name": "eyes_v2", "strength": 1.0}],
    "category": "eyes",
    "style": "anime",
}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", True),
        ("checkpoint=ponyXL_v6.safetensors", True),
        ("checkpoint=PONYXL_V6.SAFETENSORS", True),  # case-insensitive
        ("checkpoint=ponyXL", False),  # = is exact
        ("checkpoint~ponyxl", True),  # ~ is contains
        ("quality>=0.7", True),
        ("quality>=0.72", True),
        ("quality>0.72", False),
        ("quality<0.8, seed=42", True),
        ("quality<0.8, seed=43", False),
        ("lora=detailtweaker", True),  # alias lora -> loras, list membership by name
        ("loras=eyes_v2", True),
        ("lora=missing", False),
        ("lora!=missing", True),
        ("lora~tweak", True),
        ("style!=anime", False),
        ("nonexistent=1", False),
        ("nonexistent!=1", True),  # absent key: only != holds
        ("seed>=40; seed<=42\ncategory=eyes", True),  # ; and newlines separate too
        ("score>0.5", True),  # alias score -> quality
    ],
)
def test_filter_matches(spec: str, expected: bool) -> None:
    assert parse_filter(spec).matches(ENTRY) is expected


def test_mapping_means_equality() -> None:
    assert parse_filter({"checkpoint": "ponyXL_v6.safetensors", "seed": 42}).matches(ENTRY)
    assert not parse_filter({"seed": 41}).matches(ENTRY)


@pytest.mark.parametrize("spec", ["quality>=high", "=x", "checkpoint", "seed>", "a b=c"])
def test_bad_filters_say_what_is_wrong(spec: str) -> None:
    with pytest.raises(QueryError, match="filter condition|cannot read"):
        parse_filter(spec)


def test_str_round_trip() -> None:
    f = parse_filter("checkpoint = pony , quality >= 0.7")
    assert str(f) == "checkpoint=pony, quality>=0.7"
    assert str(parse_filter(str(f))) == str(f)
