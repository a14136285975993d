"""Decompression with a ceiling: a zlib or gzip stream from a stranger's file may expand to any size."""

from __future__ import annotations

import zlib


def inflate(data: bytes, limit: int, what: str, gzip: bool = False) -> bytes:
    """`data` decompressed (zlib, or gzip framing), ValueError naming `what` when it is broken or would exceed
    `limit` bytes; never more than limit + 1 bytes are produced."""
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS if gzip else zlib.MAX_WBITS)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as e:
        raise ValueError(f"{what} does not decompress ({e})") from e
    if len(out) > limit or d.unconsumed_tail:
        raise ValueError(f"{what} decompresses to more than {limit >> 20} MB; not read")
    return out
