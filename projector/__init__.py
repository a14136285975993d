"""Neural projector: image embedding -> conditioning (Path 2)."""
