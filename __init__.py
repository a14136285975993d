"""Luna Vault: ComfyUI node pack (this folder) and library (`luna_vault` when pip-installed).

ComfyUI imports this file and calls `comfy_entrypoint`; the core library (vault/, extraction/,
projector/) never imports ComfyUI, so importing the package outside ComfyUI stays light.
"""


WEB_DIRECTORY = "./web"  # the "Luna Vaults" sidebar tab


async def comfy_entrypoint():  # noqa: ANN201 - ComfyUI's V3 entry point
    from .nodes import LunaExtension
    from .nodes.common import register_model_folders
    from .nodes.routes import register_routes

    register_model_folders()  # before the node schemas list models/vaults
    register_routes()  # the vault browser's HTTP routes, on ComfyUI's server
    return LunaExtension()
