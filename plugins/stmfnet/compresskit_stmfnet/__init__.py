"""compresskit-stmfnet plugin."""
