"""Sparsification: the OBProx-SG optimizer and per-layer densities."""
