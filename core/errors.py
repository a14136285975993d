"""Exceptions raised by the vault: each message says what was expected, what was found, what to do."""

from __future__ import annotations


class VaultError(Exception):
    """Base class for every error the vault library raises on purpose."""


class VaultNotFoundError(VaultError, FileNotFoundError):
    """The path holds no vault (no folder, or no manifest.json in it)."""


class VaultExistsError(VaultError, FileExistsError):
    """A vault is already at the path and the caller asked to create a new one."""


class VaultFormatError(VaultError):
    """The manifest names a format or version this code does not read."""


class VaultCorruptError(VaultError):
    """Files are truncated, missing, or disagree with the manifest."""


class DimensionError(VaultError, ValueError):
    """An array has the wrong shape or embedding dimension for this vault."""


class EncoderMismatchError(VaultError, ValueError):
    """The image encoder used for a query is not the one the vault was built with."""


class TextFamilyMismatchError(VaultError, ValueError):
    """Baked conditioning does not match the conditioning it is blended with."""


class EmptyVaultError(VaultError, ValueError):
    """The vault (or the part a filter leaves) holds no entries to search."""


class QueryError(VaultError, ValueError):
    """A query's arguments are out of range (k, filter syntax, blend mode...)."""


class UnsafeNameError(VaultError, ValueError):
    """A name that would reach the file system is not a plain name."""
