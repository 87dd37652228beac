"""Teacher outputs cached on disk for a fixed (non-augmented) dataset: the teacher runs once over the
data, not once per epoch. Outputs (and requested teacher features) are stored as memory-mapped raw
tensors, one row per dataset item, under a folder named by a fingerprint of the teacher's weights, the
dataset and the feature paths; ``meta.json``, written last and atomically, marks a complete cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

from compresskit.io import atomic_write_json
from compresskit.training.batch import to_device

CACHE_KEY = "__teacher__"


def fingerprint(teacher: nn.Module, dataset: Dataset, feature_paths: Sequence[str]) -> str:
    """sha256 of the teacher's state (names, shapes, bytes), the dataset length and first item, the paths."""
    h = hashlib.sha256()
    for name, t in teacher.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(f"{len(dataset)}|{list(feature_paths)}".encode())
    for x in _as_tuple(dataset[0], "dataset item 0"):
        if isinstance(x, torch.Tensor):
            h.update(x.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


class TeacherOutputs:
    """The cached rows: ``outputs[i]`` and ``features[path][i]`` for dataset item ``i``."""

    def __init__(self, folder: Path, meta: dict[str, Any]):
        self.folder = folder
        self.outputs = _open(folder / "output.bin", meta["output"], meta["n"])
        self.features = {p: _open(folder / f"feature{k}.bin", spec, meta["n"])
                         for k, (p, spec) in enumerate(meta["features"].items())}


def build_cache(teacher: nn.Module, loader: DataLoader, *, inputs_fn: Callable[[Any], Sequence[Any]],
                feature_hooks: Any, cache_dir: str | os.PathLike, device: torch.device,
                feature_paths: Sequence[str]) -> TeacherOutputs:
    """Run the (frozen) teacher once over ``loader.dataset`` in order and store its outputs; reuse a
    complete cache with the same fingerprint."""
    dataset = loader.dataset
    a, b = _as_tuple(dataset[0], "dataset item 0"), _as_tuple(dataset[0], "dataset item 0")
    if any(isinstance(x, torch.Tensor) and not torch.equal(x, y) for x, y in zip(a, b)):
        raise ValueError("cache_teacher=True needs a fixed dataset, but two reads of item 0 differ (random "
                         "augmentation?); turn the cache off or cache before augmenting")
    folder = Path(cache_dir) / f"teacher-{fingerprint(teacher, dataset, feature_paths)}"
    if (folder / "meta.json").is_file():
        return TeacherOutputs(folder, json.loads((folder / "meta.json").read_text()))
    folder.mkdir(parents=True, exist_ok=True)
    ordered = DataLoader(dataset, batch_size=loader.batch_size or 1, shuffle=False,
                         collate_fn=loader.collate_fn, num_workers=loader.num_workers)
    n = len(dataset)
    files: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"n": n, "output": None, "features": {}}
    row = 0
    with torch.no_grad():
        for batch in ordered:
            batch = to_device(batch, device)
            out = teacher(*inputs_fn(batch))
            feats = feature_hooks.pop() if feature_hooks is not None else {}
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"cache_teacher=True needs a teacher that returns one tensor, got "
                                f"{type(out).__name__}")
            named = {"output": out, **{f"feature{k}": feats[p] for k, p in enumerate(feature_paths)}}
            if row == 0:
                for key, t in named.items():
                    spec = {"shape": list(t.shape[1:]), "dtype": str(t.dtype).replace("torch.", "")}
                    if key == "output":
                        meta["output"] = spec
                    else:
                        meta["features"][feature_paths[int(key[7:])]] = spec
                    files[key] = _create(folder / f"{key}.bin.tmp", spec, n)
            for key, t in named.items():
                files[key][row : row + t.shape[0]] = t.detach().cpu()
            row += out.shape[0]
    for key in files:
        os.replace(folder / f"{key}.bin.tmp", folder / f"{key}.bin")
    atomic_write_json(meta, folder / "meta.json")
    return TeacherOutputs(folder, meta)


class WithTeacherOutputs(Dataset):
    """``dataset[i]`` plus a last element ``{"__teacher__": {"output": ..., "features": {...}}}``."""

    def __init__(self, dataset: Dataset, cache: TeacherOutputs):
        self.dataset, self.cache = dataset, cache

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        item = _as_tuple(self.dataset[i], f"dataset item {i}")
        features = {p: f[i] for p, f in self.cache.features.items()}
        extra = {"output": self.cache.outputs[i], "features": features}
        return (*item, {CACHE_KEY: extra})


def cached_loader(loader: DataLoader, cache: TeacherOutputs) -> DataLoader:
    """A loader like ``loader`` whose batches carry the cached teacher outputs as their last element."""
    if not isinstance(loader.sampler, (RandomSampler, SequentialSampler)) or loader.batch_size is None:
        raise ValueError("cache_teacher=True needs a DataLoader with a batch_size and the default sampler")
    return DataLoader(WithTeacherOutputs(loader.dataset, cache), batch_size=loader.batch_size,
                      shuffle=isinstance(loader.sampler, RandomSampler), num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last)


def split_cached(batch: Any) -> tuple[Any, dict[str, Any] | None]:
    """``(batch without the cache element, cached teacher outputs or None)``."""
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[-1], dict) and CACHE_KEY in batch[-1]:
        return type(batch)(batch[:-1]), batch[-1][CACHE_KEY]
    return batch, None


def _create(path: Path, spec: dict[str, Any], n: int) -> torch.Tensor:
    dtype = getattr(torch, spec["dtype"])
    numel = n * math.prod(spec["shape"])
    with open(path, "wb") as f:
        f.truncate(numel * torch.empty((), dtype=dtype).element_size())
    return torch.from_file(str(path), shared=True, size=numel, dtype=dtype).view(n, *spec["shape"])


def _open(path: Path, spec: dict[str, Any], n: int) -> torch.Tensor:
    dtype = getattr(torch, spec["dtype"])
    numel = n * math.prod(spec["shape"])
    return torch.from_file(str(path), shared=False, size=numel, dtype=dtype).view(n, *spec["shape"])


def _as_tuple(item: Any, where: str) -> tuple[Any, ...]:
    if not isinstance(item, (tuple, list)):
        raise TypeError(f"{where}: expected a tuple or list (input_1, ..., input_n, target), "
                        f"got {type(item).__name__}")
    return tuple(item)
