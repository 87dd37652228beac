"""Tracing a model into a channel-dependency graph (torch.fx) and its channel groups."""
