"""compresskit-vfi plugin."""
