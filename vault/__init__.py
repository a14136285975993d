"""Path 1 core: the vault format, FAISS search, category auto-detect and conditioning assembly (no ComfyUI)."""

from .conditioning import (
    BLEND_MODES,
    EncodingCache,
    baked_lookup,
    blend,
    check_baked_family,
    retrieval_weights,
    retrieved_conditioning,
    text_lookup,
)
from .entries import AddReport, Skipped
from .errors import (
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
from .filters import Filter, parse_filter
from .index import VaultIndex, choose_index
from .manifest import EncoderFingerprint, TextSpec
from .ops import append, build, compact, delete_where, merge, rebuild_index, upgrade
from .query import Detection, Match, QueryResult, detect_category, get_index, search
from .retrieve import Retrieval, retrieve
from .store import Vault, VaultWriter

__all__ = [
    "AddReport", "BLEND_MODES", "Detection", "DimensionError", "EmptyVaultError", "EncoderFingerprint",
    "EncoderMismatchError", "EncodingCache", "Filter", "Match", "QueryError", "QueryResult", "Skipped",
    "TextFamilyMismatchError", "TextSpec", "UnsafeNameError", "Vault", "VaultCorruptError", "VaultError",
    "VaultExistsError", "VaultFormatError", "VaultIndex", "VaultNotFoundError", "VaultWriter", "append",
    "baked_lookup", "blend", "build", "check_baked_family", "choose_index", "compact", "delete_where",
    "detect_category", "get_index", "merge", "parse_filter", "rebuild_index", "retrieval_weights",
    "retrieved_conditioning", "Retrieval", "retrieve", "search", "text_lookup", "upgrade",
]
