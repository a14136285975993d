"""Encoders (protocols, ComfyUI-backed, open_clip), dataset readers and the batch extraction pipeline."""
