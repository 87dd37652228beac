"""The mode training uses: code that runs only in train mode (an auxiliary head, an EMA buffer update,
``if self.training: ...``) is invisible to the eval-mode trace, so shrinking could cut channels it reads.

:func:`cover_train_mode` traces a copy in train mode as well and compares: every channel group of the
train-mode graph whose tensors the eval-mode graph does not hold alike (a tensor only train mode uses,
channels joined only in train mode, channels frozen only in train mode) freezes the eval-mode groups it
touches, with the modules named. If the train-mode forward cannot be traced, modules with weights that
run only in train mode are refused up front (ValueError naming them), before any training.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import torch
from torch import nn

from compresskit.graph.channels import ChannelGraph

__all__ = ["cover_train_mode", "train_only_modules"]


def _key(m: Any) -> tuple[str, str, int]:
    return (m.module, m.tensor, m.dim)


def train_only_modules(model: nn.Module, example_inputs: tuple) -> list[str]:
    """Modules holding parameters or buffers that a forward in train mode calls and one in eval mode does
    not (run on deep copies, without gradients)."""
    called: dict[bool, set[str]] = {}
    for training in (False, True):
        m = copy.deepcopy(model).train(training)
        seen: set[str] = set()
        handles = [mod.register_forward_hook(lambda *_, n=name, s=seen: s.add(n))
                   for name, mod in m.named_modules()
                   if next(mod.parameters(recurse=False), None) is not None
                   or next(mod.buffers(recurse=False), None) is not None]
        try:
            with torch.no_grad():
                m(*copy.deepcopy(example_inputs))
        finally:
            for h in handles:
                h.remove()
        called[training] = seen
    return sorted(called[True] - called[False])


def cover_train_mode(model: nn.Module, graph: ChannelGraph, example_inputs: tuple) -> list[str]:
    """Freeze (in place) the groups of ``graph`` (an eval-mode trace of ``model``) that train-mode code
    reads differently; return notes for the report. ValueError if train-mode code cannot be traced and
    modules with weights run only in train mode."""
    from compresskit.graph.trace import trace

    try:
        train_graph = trace(model, example_inputs, mode="train")
    except Exception as e:
        try:
            extra = train_only_modules(model, example_inputs)
        except Exception as run_error:  # train mode does not even run on these inputs: training will say so
            return [f"train-mode code not checked: the model does not run in train mode on the example "
                    f"inputs ({type(run_error).__name__}: {str(run_error)[:120]})"]
        if extra:
            raise ValueError(
                f"model: {', '.join(repr(n) for n in extra)} run(s) only in train mode, and the train-mode "
                f"forward cannot be traced ({type(e).__name__}: {e}); compressing would cut channels that "
                "code reads and fail in training. Make that code traceable, or compress the model without "
                "it (e.g. drop the auxiliary head) and add it back") from e
        return []
    eval_group: dict[tuple[str, str, int], set[int]] = defaultdict(set)
    for g in graph.groups:
        for m in g.members:
            eval_group[_key(m)].add(g.id)
    eval_keys = {g.id: {_key(m) for m in g.members} for g in graph.groups}
    notes: list[str] = []
    for t in train_graph.groups:
        keys = {_key(m) for m in t.members}
        hit = sorted({gid for k in keys for gid in eval_group.get(k, ())})
        if not hit or not any(graph.groups[gid].prunable for gid in hit):
            continue
        new = sorted({k for k in keys if k not in eval_group})
        covered = set().union(*(eval_keys[gid] for gid in hit))
        differs = bool(new) or len(hit) > 1 or not t.prunable or not keys >= covered
        if not differs:
            continue
        if new:
            why = "train-mode code also uses " + ", ".join(f"{m}.{n}" if m else n for m, n, _ in new[:3])
        elif not t.prunable:
            why = "train mode freezes them: " + "; ".join(t.reasons[:1])
        else:
            why = "train mode joins them with other channels"
        reason = (f"channels read differently in train mode ({why}); the eval-mode trace never saw it, "
                  "so they are kept")
        for gid in hit:
            g = graph.groups[gid]
            if g.prunable:
                g.prunable = False
                g.reasons.append(reason)
                who = ", ".join(g.producers) or "no producer"
                notes.append(f"frozen channel group {gid} ({who}): {reason}")
    return notes
