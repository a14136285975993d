"""The projector network: CLIP-vision embedding -> text conditioning (tokens [T, D] + pooled [P]).

Not a dense head (Linear 1024 -> 77x2048 is ~160M weights): the head is low-rank. A code is made of
an MLP trunk's output and a linear projection of the embedding (so the model contains a low-rank
linear map, the ridge baseline's family, and learns what is nonlinear on top). One Linear turns the
code into coefficients per token: R for a basis shared by all tokens (initialised from the principal
directions of the training tokens) and r for a small basis of each token's own. tokens[t] =
coef_shared[t] @ shared [R, D] + coef_own[t] @ own[t] [r, D]. Heads predict in standardised units:
output = mean + std * net(x), with the per-(token, dim) mean and std of the training conditioning
stored as buffers, so an untrained head outputs the mean-conditioning baseline.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..core.families import FAMILIES


@dataclass(frozen=True)
class TargetSpec:
    """What a head predicts: a model family's conditioning shape, and its parts for loss weights."""

    family: str
    tokens: int
    dim: int
    pooled_dim: int
    parts: tuple[tuple[str, int, int], ...]  # (name, start, end) slices of the token dim

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TargetSpec":
        return cls(d["family"], int(d["tokens"]), int(d["dim"]), int(d["pooled_dim"]),
                   tuple((str(n), int(a), int(b)) for n, a, b in d["parts"]))


# one target per text family (core.families): sd15 is CLIP-L alone, also the CLIP-L part of SDXL/Flux
TARGETS: dict[str, TargetSpec] = {f.name: TargetSpec(f.name, f.tokens, f.dim, f.pooled_dim, f.parts) for f in FAMILIES.values()}


@dataclass
class ProjectorConfig:
    """Architecture; saved in every projector file so the file explains itself."""

    in_dim: int
    target: TargetSpec
    hidden: int = 512  # trunk width
    trunk_blocks: int = 2
    linear: int = 256  # width of the linear projection of the embedding in the code
    rank: int = 64  # basis vectors shared by all tokens
    token_rank: int = 16  # basis vectors of each token's own
    dropout: float = 0.1

    @classmethod
    def preset(cls, in_dim: int, target: str | TargetSpec, **overrides: Any) -> "ProjectorConfig":
        """Sizes per target: SDXL ~11M parameters (a batch-1 forward reads every weight once, so fewer is
        faster on CPU), Flux ~20M, CLIP-L 2.3M (4.8 MB in fp16, under the 5 MB budget; its per-token bases
        get most of that budget: with 4 per token instead of 12 the head lost to ridge on synthetic data)."""
        spec = TARGETS[target] if isinstance(target, str) else target
        base: dict[str, Any] = {}
        if spec.dim <= 768:
            base = {"hidden": 256, "trunk_blocks": 1, "linear": 96, "rank": 16, "token_rank": 12}
        elif spec.tokens > 128:
            base = {"token_rank": 4}
        return cls(in_dim=in_dim, target=spec, **{**base, **overrides})

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["target"] = asdict(self.target)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ProjectorConfig":
        return cls(**{**d, "target": TargetSpec.from_json(d["target"])})


class ResidualMLP(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(2 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class TokenHead(nn.Module):
    """Code -> tokens [B, T, D] (shared + per-token low-rank bases, de-standardised) and pooled [B, P]."""

    def __init__(self, cfg: ProjectorConfig, code_dim: int) -> None:
        super().__init__()
        t = cfg.target
        self.tokens, self.rank, self.token_rank = t.tokens, cfg.rank, cfg.token_rank
        self.coef = nn.Linear(code_dim, t.tokens * (cfg.rank + cfg.token_rank))
        self.basis = nn.Parameter(torch.randn(cfg.rank, t.dim) / math.sqrt(t.dim))
        self.token_basis = nn.Parameter(torch.randn(t.tokens, cfg.token_rank, t.dim) / math.sqrt(t.dim))
        self.pooled = nn.Linear(code_dim, t.pooled_dim)
        for layer in (self.coef, self.pooled):  # start exactly at the mean conditioning
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.register_buffer("token_mean", torch.zeros(t.tokens, t.dim))
        self.register_buffer("token_std", torch.ones(t.tokens, t.dim))
        self.register_buffer("pooled_mean", torch.zeros(t.pooled_dim))
        self.register_buffer("pooled_std", torch.ones(t.pooled_dim))

    def standardised(self, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        coef = self.coef(code).view(-1, self.tokens, self.rank + self.token_rank)
        shared, own = coef.split([self.rank, self.token_rank], dim=-1)
        z = shared @ self.basis
        if self.token_rank:
            z = z + torch.einsum("btr,trd->btd", own, self.token_basis)
        return z, self.pooled(code)

    def forward(self, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_tok, z_pool = self.standardised(code)
        return torch.addcmul(self.token_mean, self.token_std, z_tok), torch.addcmul(self.pooled_mean, self.pooled_std, z_pool)


class Projector(nn.Module):
    """Image embedding [B, in_dim] -> (cond [B, T, D], pooled [B, P])."""

    def __init__(self, cfg: ProjectorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.trunk = nn.Sequential(nn.Linear(cfg.in_dim, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout),
                                   *[ResidualMLP(cfg.hidden, cfg.dropout) for _ in range(cfg.trunk_blocks)],
                                   nn.LayerNorm(cfg.hidden))
        self.linear = nn.Linear(cfg.in_dim, cfg.linear)
        self.head = TokenHead(cfg, cfg.hidden + cfg.linear)

    def code(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.normalize(x.float(), dim=-1) * math.sqrt(x.shape[-1])
        return torch.cat([self.trunk(x), self.linear(x)], dim=-1)

    def forward(self, x: torch.Tensor, standardised: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond [B, T, D], pooled [B, P]); standardised=True: before mean and std are added back (what the
        loss compares)."""
        code = self.code(x)
        return self.head.standardised(code) if standardised else self.head(code)

    @torch.no_grad()
    def set_stats(self, token_mean: torch.Tensor, token_std: torch.Tensor, pooled_mean: torch.Tensor,
                  pooled_std: torch.Tensor, basis: torch.Tensor | None = None) -> None:
        """Install the training data's statistics (and optionally its principal directions as the basis)."""
        h = self.head
        h.token_mean.copy_(token_mean)
        h.token_std.copy_(token_std)
        h.pooled_mean.copy_(pooled_mean)
        h.pooled_std.copy_(pooled_std)
        if basis is not None:
            h.basis.copy_(basis[: h.rank])

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

