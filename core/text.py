"""Text from strangers made safe to show: control characters escaped before a terminal or a UI sees them.

A prompt, category or file name from someone else's vault or folder can carry terminal escape codes
(clear the screen, set the window title, fake a prompt), a carriage return that overwrites what was
printed, or bidirectional overrides that reorder what is read. Shown text keeps newlines and tabs;
everything else in those classes becomes a visible \\xNN / \\uNNNN.
"""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls, bidi marks/embeddings/overrides/isolates, lone surrogates
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(text: str) -> str:
    """`text` with every control, bidi-override and lone-surrogate character written as an escape."""
    return _UNSAFE.sub(_escape, text)
