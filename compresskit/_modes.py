"""Train/eval modes of every submodule: switch a model to eval for a measurement and put each module back.

``model.train(was)`` is not a restore: it sets *every* submodule to the root's mode, so a BatchNorm the
user froze in eval inside a model in train mode would come back in train mode.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` (and all their submodules) in eval mode; on exit restore each module's own mode.

    Submodules shared by several roots (a ``GraphModule`` built on the model) end in the mode recorded
    under the first root that holds them: the roots are restored last to first.
    """
    saved = [{m: m.training for m in root.modules()} for root in modules]
    for root in modules:
        root.eval()
    try:
        yield
    finally:
        for modes in reversed(saved):
            _restore(modes)


def _restore(modes: dict[nn.Module, bool]) -> None:
    # pre-order (parents first): a parent's ``train(mode)`` recurses, so its children are set after it
    for m, training in modes.items():
        if m.training != training:
            m.train(training)


def copy_modes(src: nn.Module, dst: nn.Module) -> None:
    """Give each module of ``dst`` the train/eval mode of the module of ``src`` with the same name.

    Modules of ``dst`` without a namesake in ``src`` take the mode of their closest named ancestor.
    """
    by_name = {name: m.training for name, m in src.named_modules()}
    modes = {}
    for name, m in dst.named_modules():
        key = name
        while key not in by_name and key:
            key = key.rpartition(".")[0]
        modes[m] = by_name.get(key, src.training)
    _restore(modes)
