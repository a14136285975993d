"""Luna Vault: ComfyUI node pack (this folder) and library (`luna_vault` when pip-installed).

The core library (vault/, extraction/, projector/) never imports ComfyUI; nodes/ adapts it.
"""
