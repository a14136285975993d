"""The identity of an image encoder, so that a vault only answers queries made with the model that built it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .errors import EncoderMismatchError

PROBE_MIN_COSINE = 0.98


@dataclass(frozen=True)
class EncoderFingerprint:
    """Identity of an image encoder: a vault answers only queries made with the same one.

    `weights_hash` identifies the weights as one loader sees them; `probe` is the encoder's
    embedding of a fixed test image (see extraction.encoders.probe_image), which identifies the
    *function* across loaders (ComfyUI, open_clip), devices and precisions. When both sides have a
    probe it decides (cosine >= PROBE_MIN_COSINE); otherwise differing weight hashes refuse.
    """

    name: str
    dim: int
    weights_hash: str = ""
    probe: tuple[float, ...] | None = field(default=None, compare=False, repr=False)

    def probe_cosine(self, other: "EncoderFingerprint") -> float | None:
        if not self.probe or not other.probe or len(self.probe) != len(other.probe):
            return None
        a, b = np.asarray(self.probe, np.float64), np.asarray(other.probe, np.float64)
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))

    def check_compatible(self, other: "EncoderFingerprint", where: str = "vault") -> None:
        """Raise EncoderMismatchError unless `other` is the same encoder (same dim, same function)."""
        if other.dim != self.dim:
            raise EncoderMismatchError(
                f"the {where} holds {self.dim}-d embeddings from '{self.name}', but the encoder in use "
                f"'{other.name}' gives {other.dim}-d ones; load the CLIP vision model the {where} was built with"
            )
        cos = self.probe_cosine(other)
        if cos is not None:
            if cos < PROBE_MIN_COSINE:
                raise EncoderMismatchError(
                    f"the {where} was built with encoder '{self.name}', the encoder in use is '{other.name}': both give "
                    f"{self.dim}-d embeddings but they disagree on a test image (cosine {cos:.3f}), so they are "
                    "different models and similarities would be meaningless. Use the CLIP vision model the "
                    f"{where} was built with, or rebuild it"
                )
            return
        if self.weights_hash and other.weights_hash and self.weights_hash != other.weights_hash:
            raise EncoderMismatchError(
                f"the {where} was built with encoder '{self.name}' (weights {self.weights_hash[:12]}), "
                f"the encoder in use is '{other.name}' (weights {other.weights_hash[:12]}); same dim, different "
                "model: similarities would be meaningless. Use the same CLIP vision model or rebuild the vault"
            )

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "dim": self.dim, "weights_hash": self.weights_hash}
        if self.probe is not None:
            d["probe"] = [round(float(x), 5) for x in self.probe]
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "EncoderFingerprint":
        probe = d.get("probe")
        return cls(name=str(d["name"]), dim=int(d["dim"]), weights_hash=str(d.get("weights_hash", "")),
                   probe=tuple(float(x) for x in probe) if probe else None)
