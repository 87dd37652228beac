"""compresskit: make neural networks smaller and faster without losing their quality.

compress(model, loader, target="4x params"): trace → sparsify → plan widths for the target → shrink → distill.

The public API is exactly the names in ``__all__``; they are imported on first use so that
``import compresskit`` stays fast and a plugin that only registers a model pays for nothing else.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_API: dict[str, str] = {
    # graph (Core I)
    "trace": "compresskit.graph.trace",
    "register_leaf": "compresskit.graph.trace",
    "ChannelGraph": "compresskit.graph.channels",
    "ChannelGroup": "compresskit.graph.channels",
    "register_rule": "compresskit.graph.rules",
    # strategies (House III): what to remove, how stage I trains, what a target measures
    "register_importance": "compresskit.shrink.importance",
    "register_sparsifier": "compresskit.sparsify.auto",
    "register_metric": "compresskit.shrink.metric",
    # shrink (Core I / II)
    "shrink": "compresskit.shrink.surgery",
    "register_resizer": "compresskit.shrink.resize",
    "plan_widths": "compresskit.shrink.plan",
    "plan_for_target": "compresskit.shrink.plan",
    "WidthPlan": "compresskit.shrink.plan",
    # sparsify (Core II)
    "OBProxSG": "compresskit.sparsify.obproxsg",
    "steps_from_epochs": "compresskit.sparsify.obproxsg",
    "layer_densities": "compresskit.sparsify.density",
    # compress (Core II)
    "compress": "compresskit.api",
    "CompressResult": "compresskit.api",
    "load": "compresskit.api",
    "recover": "compresskit.recover",
    "RecoverResult": "compresskit.recover",
    "CompressConfig": "compresskit.config",
    "TrainConfig": "compresskit.config",
    "DistillConfig": "compresskit.config",
    # targets and planning (Core IV)
    "Target": "compresskit.target",
    "SparsifyConfig": "compresskit.config",
    "PlanConfig": "compresskit.config",
    "ShrinkConfig": "compresskit.config",
    "RecoverConfig": "compresskit.config",
    # training and distillation (Core III)
    "train": "compresskit.train.loop",
    "Trainer": "compresskit.train.loop",
    "distill": "compresskit.distill.engine",
    "Distiller": "compresskit.distill.engine",
    "register_loss": "compresskit.distill.registry",
    "get_loss": "compresskit.distill.registry",
    "list_losses": "compresskit.distill.registry",
    # models and plugins
    "register_model": "compresskit.registry",
    "create_model": "compresskit.registry",
    "list_models": "compresskit.registry",
    "model_info": "compresskit.registry",
    "load_state_dict_strict": "compresskit.registry",
    "load_plugins": "compresskit.plugins",
}

_SUBMODULES = {"testing", "losses", "report", "config", "io"}

__all__ = sorted([*_API, *_SUBMODULES, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f"compresskit.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'compresskit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


class _Package(types.ModuleType):
    """Keeps ``ck.train`` and ``ck.distill`` the functions: importing the subpackage ``compresskit.train``
    would otherwise set the attribute ``compresskit.train`` to that subpackage (it stays in sys.modules)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # static analysers and IDEs see the real names
    from compresskit import config, io, losses, report, testing  # noqa: F401
    from compresskit.api import CompressResult, compress, load  # noqa: F401
    from compresskit.config import (  # noqa: F401
        CompressConfig,
        DistillConfig,
        PlanConfig,
        RecoverConfig,
        ShrinkConfig,
        SparsifyConfig,
        TrainConfig,
    )
    from compresskit.distill.engine import Distiller, distill  # noqa: F401
    from compresskit.distill.registry import get_loss, list_losses, register_loss  # noqa: F401
    from compresskit.graph.channels import ChannelGraph, ChannelGroup  # noqa: F401
    from compresskit.graph.rules import register_rule  # noqa: F401
    from compresskit.graph.trace import register_leaf, trace  # noqa: F401
    from compresskit.plugins import load_plugins  # noqa: F401
    from compresskit.registry import (  # noqa: F401
        create_model,
        list_models,
        load_state_dict_strict,
        model_info,
        register_model,
    )
    from compresskit.shrink.importance import register_importance  # noqa: F401
    from compresskit.shrink.metric import register_metric  # noqa: F401
    from compresskit.shrink.plan import WidthPlan, plan_for_target, plan_widths  # noqa: F401
    from compresskit.shrink.resize import register_resizer  # noqa: F401
    from compresskit.shrink.surgery import shrink  # noqa: F401
    from compresskit.sparsify.auto import register_sparsifier  # noqa: F401
    from compresskit.sparsify.density import layer_densities  # noqa: F401
    from compresskit.sparsify.obproxsg import OBProxSG, steps_from_epochs  # noqa: F401
    from compresskit.target import Target  # noqa: F401
    from compresskit.train.loop import Trainer, train  # noqa: F401
