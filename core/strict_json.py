"""JSON from strangers (vault manifests and metadata, package cards, sidecars): strict UTF-8, numbers a
float can hold, bounded nesting. Python's json module alone accepts NaN, Infinity and 1e999 (inf),
integers of any length, and nesting as deep as the recursion limit; each of those later crashes or
misleads code that trusts the value (a seed of 400 digits, a dim of Infinity, a similarity of NaN)."""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 32  # ours nest 3 deep (an entry's LoRAs); deeper is not data anyone wrote for us
FLOAT_MAX = 1.7976931348623157e308


class StrictJSONError(ValueError):
    """The text is not JSON this program accepts; the message says why, in one line."""


def _refuse_constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not a number JSON may hold")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def check_value(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """StrictJSONError unless every number in `value` is finite and within float range, and it nests at most
    `max_depth` levels (iteratively: a deep value cannot exhaust the stack here)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        t = type(v)
        if t is dict or t is list:
            if depth >= max_depth:
                raise StrictJSONError(f"it nests more than {max_depth} levels deep")
            for x in (v.values() if t is dict else v):
                tx = type(x)
                if tx is dict or tx is list:
                    stack.append((x, depth + 1))
                elif tx is float:
                    if not math.isfinite(x):
                        raise StrictJSONError(f"it holds the number {x!r}, which is not finite")
                elif tx is int and not -FLOAT_MAX <= x <= FLOAT_MAX:
                    raise StrictJSONError(f"it holds a {len(str(abs(x)))}-digit integer, beyond what a number may be")
        elif t is float and not math.isfinite(v):
            raise StrictJSONError(f"it holds the number {v!r}, which is not finite")
        elif t is int and not -FLOAT_MAX <= v <= FLOAT_MAX:
            raise StrictJSONError("it holds an integer beyond what a number may be")


def loads(data: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse strict JSON: UTF-8 (bytes), no NaN/Infinity, finite numbers in float range, at most `max_depth`
    levels. Raises StrictJSONError (a ValueError) with the reason."""
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray, memoryview)) else data
        value = _DECODER.decode(text)
    except UnicodeDecodeError as e:
        raise StrictJSONError(f"it is not UTF-8 text (byte {e.start})") from e
    except json.JSONDecodeError as e:
        raise StrictJSONError(f"it is not valid JSON ({e.msg} at char {e.pos})") from e
    except RecursionError as e:
        raise StrictJSONError(f"it nests more than {max_depth} levels deep") from e
    except ValueError as e:  # int() of more digits than Python converts
        raise StrictJSONError(f"it is not JSON this program reads ({str(e)[:80]})") from e
    check_value(value, max_depth)
    return value


def raw_decode_at(text: str, start: int) -> tuple[Any, int]:
    """One strict JSON value parsed from `text` at `start`: (value, end index). Numbers are checked by
    check_value afterwards (the caller does it once per value)."""
    try:
        return _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as e:
        raise StrictJSONError(f"it is not valid JSON ({e.msg} at char {e.pos - start})") from e
    except RecursionError as e:
        raise StrictJSONError(f"it nests more than {MAX_DEPTH} levels deep") from e
    except ValueError as e:
        raise StrictJSONError(f"it is not JSON this program reads ({str(e)[:80]})") from e
