"""Luna Vault: ComfyUI node pack (this folder) and library (`luna_vault` when pip-installed).

ComfyUI imports this file and calls `comfy_entrypoint`; the core library (vault/, extraction/,
projector/) never imports ComfyUI, so importing the package outside ComfyUI stays light.
"""


async def comfy_entrypoint():  # noqa: ANN201 - ComfyUI's V3 entry point
    from .nodes import LunaExtension
    from .nodes.common import register_model_folders

    register_model_folders()  # before the node schemas list models/vaults
    return LunaExtension()
