"""ComfyUI nodes: thin adapters over the core library (V3 API)."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .ab_probe import LunaAbProbe
from .embedding import LunaEmbeddingExtractor
from .vault_builder import LunaVaultBuilder
from .vault_query import LunaVaultInfo, LunaVaultQuery
from .vision_translator import LunaVisionTranslator

NODES: list[type[io.ComfyNode]] = [LunaVaultQuery, LunaVisionTranslator, LunaVaultBuilder, LunaEmbeddingExtractor,
                                   LunaVaultInfo, LunaAbProbe]


class LunaExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES
