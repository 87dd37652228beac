"""compresskit-adacof plugin."""
