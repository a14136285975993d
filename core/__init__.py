"""The shared kernel: atomic files and names, error types, encoder fingerprints, text families,
content hashes, file-stamped caches and conditioning assembly. Used by the vault, extraction, the
projector and the nodes; at run time it imports neither them nor ComfyUI."""
