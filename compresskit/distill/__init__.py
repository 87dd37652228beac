"""The distillation engine: Distiller, the loss registry, feature hooks."""
