"""One stage runner for :func:`compresskit.compress` and the reproduction recipes.

A pipeline is a sequence of :class:`Stage` objects sharing one state object. Each stage has a ``name``,
an ``artifact`` (its checkpoint file under the store's folder, or ``None``: always run),
``fingerprint(state)`` (everything its result depends on, the upstream stage's fingerprint included),
``run(state)`` (does the work, returns the payload to checkpoint) and ``restore(state, payload)`` (puts a
checkpointed result back); ``old_artifacts`` are names the artifact had in earlier versions, read when
the current one is absent. :func:`run_stages` restores a stage whose artifact carries this run's
fingerprint and runs the others, so a rerun with the same settings skips finished stages, and a changed
setting redoes its stage and every later one (their fingerprints chain through ``"upstream"``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compresskit.io import atomic_torch_save, atomic_write_json

__all__ = ["Stage", "StageStore", "run_stages", "checksum"]


class Stage:
    """One step of a pipeline: ``fingerprint(state)``, ``run(state) -> payload | None``,
    ``restore(state, payload)``; ``artifact`` is the checkpoint file (None: always run).

    A payload is a dict of tensors, state_dicts, numbers and strings (it is saved with ``torch.save`` and
    read back with ``weights_only=True``)."""

    name = ""
    artifact: str | None = None
    #: the artifact's names in earlier versions: a run folder written then still resumes
    old_artifacts: tuple[str, ...] = ()

    def fingerprint(self, state: Any) -> dict[str, Any]:
        raise NotImplementedError

    def run(self, state: Any) -> dict[str, Any] | None:
        raise NotImplementedError

    def restore(self, state: Any, payload: dict[str, Any]) -> None:
        raise NotImplementedError


class StageStore:
    """Stage artifacts in ``out_dir``; an artifact counts only when its fingerprint matches this run.

    ``out_dir=None`` keeps nothing (every stage runs); ``resume=False`` ignores what is there."""

    def __init__(self, out_dir: str | Path | None, resume: bool = True):
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.resume = resume

    def path(self, name: str) -> Path | None:
        return None if self.out_dir is None else self.out_dir / name

    def find(self, name: str, old_names: Iterable[str] = ()) -> str:
        """``name``, or the first of ``old_names`` (what an earlier version called the same file or folder)
        that exists when ``name`` does not: run folders written before a rename still resume."""
        if self.out_dir is None or (self.out_dir / name).exists():
            return name
        return next((old for old in old_names if (self.out_dir / old).exists()), name)

    def load(self, name: str, fingerprint: dict[str, Any],
             old_names: Iterable[str] = ()) -> dict[str, Any] | None:
        """The payload saved under ``name`` (or one of its ``old_names``, see :meth:`find`) with this
        ``fingerprint``, else None."""
        path = self.path(self.find(name, old_names))
        if path is None or not self.resume or not path.is_file():
            return None
        data = torch.load(path, map_location="cpu", weights_only=True)
        return data if data.get("fingerprint") == fingerprint else None

    def save(self, name: str, fingerprint: dict[str, Any], **data: Any) -> None:
        path = self.path(name)
        if path is not None:
            atomic_torch_save({"fingerprint": fingerprint, **data}, path)

    def train_dir(self, name: str, fingerprint: dict[str, Any], old_names: Iterable[str] = ()) -> Path | None:
        """Checkpoint folder of a training stage (an existing one under one of ``old_names`` when ``name`` is
        absent, see :meth:`find`); emptied when it belongs to other settings (or no resume)."""
        if self.out_dir is None:
            return None
        folder = self.out_dir / self.find(name, old_names)
        stamp = folder / "fingerprint.json"
        if folder.exists():
            old = json.loads(stamp.read_text()) if stamp.is_file() else None
            if not self.resume or old != fingerprint:
                shutil.rmtree(folder, ignore_errors=True)  # another rank may be clearing it too
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(fingerprint, stamp)
        return folder


def checksum(module: nn.Module | None) -> str | None:
    """Fingerprint of a module's weights (names, shapes and bytes): artifacts of another model are not
    reused."""
    if module is None:
        return None
    h = hashlib.sha1()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def run_stages(stages: Iterable[Stage], state: Any, store: StageStore, *,
               fingerprints: dict[str, dict[str, Any]] | None = None,
               timings: dict[str, float] | None = None, stop_after: str | None = None,
               on_stage: Callable[[Stage, bool], None] | None = None) -> dict[str, dict[str, Any]]:
    """Run (or restore) ``stages`` in order on ``state``, until the one named ``stop_after``.

    ``fingerprints`` (filled here, by stage name) is where a stage's ``fingerprint`` reads its upstream's;
    ``timings`` receives each stage's seconds; ``on_stage(stage, restored)`` is called after each.
    Returns ``fingerprints``."""
    fingerprints = {} if fingerprints is None else fingerprints
    for stage in stages:
        t0 = time.perf_counter()
        fp = fingerprints[stage.name] = stage.fingerprint(state)
        done = store.load(stage.artifact, fp, getattr(stage, "old_artifacts", ())) if stage.artifact else None
        if done is not None:
            stage.restore(state, done)
        else:
            payload = stage.run(state)
            if payload is not None and stage.artifact:
                store.save(stage.artifact, fp, **payload)
        if timings is not None:
            timings[stage.name] = time.perf_counter() - t0
        if on_stage is not None:
            on_stage(stage, done is not None)
        if stage.name == stop_after:
            break
    return fingerprints
