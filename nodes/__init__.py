"""ComfyUI nodes (thin adapters over the core library)."""
