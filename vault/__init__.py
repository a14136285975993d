"""Path 1: the vault format, FAISS search and category auto-detect (no ComfyUI). Conditioning assembly is in
luna_vault.core.conditioning; the errors and encoder/text types the vault API uses are re-exported here.

`retrieve` and `Retrieval` (query -> conditioning, in .retrieval) need torch, whose import takes seconds:
they are imported on first use, so opening, inspecting or searching a vault does not pay for it."""

from typing import Any

from ..core.encoder import EncoderFingerprint
from ..core.errors import (
    DimensionError,
    EmptyVaultError,
    EncoderMismatchError,
    QueryError,
    TextFamilyMismatchError,
    UnsafeNameError,
    VaultCorruptError,
    VaultError,
    VaultExistsError,
    VaultFormatError,
    VaultNotFoundError,
)
from ..core.families import TextSpec
from .entries import AddReport, Skipped
from .filters import Filter, parse_filter
from .index import VaultIndex, choose_index
from .ops import append, build, compact, delete_where, merge, rebuild_index, upgrade
from .query import Detection, Match, QueryResult, detect_category, get_index, search
from .store import Vault, VaultWriter

__all__ = [
    "AddReport", "Detection", "DimensionError", "EmptyVaultError", "EncoderFingerprint", "EncoderMismatchError",
    "Filter", "Match", "QueryError", "QueryResult", "Retrieval", "Skipped", "TextFamilyMismatchError", "TextSpec",
    "UnsafeNameError", "Vault", "VaultCorruptError", "VaultError", "VaultExistsError", "VaultFormatError",
    "VaultIndex", "VaultNotFoundError", "VaultWriter", "append", "build", "choose_index", "compact", "delete_where",
    "detect_category", "get_index", "merge", "parse_filter", "rebuild_index", "retrieve", "search", "upgrade",
]


def __getattr__(name: str) -> Any:
    if name in ("Retrieval", "retrieve"):
        from . import retrieval

        return getattr(retrieval, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
