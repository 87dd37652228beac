"""Data order the loop can reproduce: a seeded, shardable, resumable sampler and the loader built on it.

A ``DataLoader`` with the default random or sequential sampler is rebuilt on :class:`ResumableSampler`,
so that (a) under DDP every process reads its own shard (like ``DistributedSampler``: rank ``r`` takes
``perm[r::world]``, so a step over ``world`` processes of batch ``b`` sees the same samples as one process
with batch ``world·b``), (b) epoch ``e`` is shuffled with seed ``seed + e``, and (c) a resumed run starts
at the exact sample where its checkpoint stopped. Other loaders (custom samplers, iterable datasets,
plain lists of batches) are iterated as given and fast-forwarded by skipping batches.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, Sampler, SequentialSampler

from compresskit.training.distributed import DistContext


def require_reiterable(loader: Any, name: str) -> None:
    """A loader is read once per epoch (and once more for example inputs): a one-shot iterator such as a
    generator would be empty after its first pass, so it is refused up front."""
    if isinstance(loader, Iterator):  # iter(x) is x: nothing to restart
        raise TypeError(f"{name}: got a one-shot {type(loader).__name__} that is exhausted after one pass; "
                        "the loader must be re-iterable (a DataLoader or list)")


class ResumableSampler(Sampler[int]):
    """Indices of one epoch for one rank: ``perm_e[rank::world][skip:]`` (``perm_e`` seeded by ``seed+e``)."""

    def __init__(self, n: int, *, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def epoch_indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = math.ceil(self.n / self.world_size) * self.world_size
        order += order[: total - len(order)]  # pad so every rank gets as many samples (DistributedSampler)
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.skip :])

    def __len__(self) -> int:
        return max(0, math.ceil(self.n / self.world_size) - self.skip)


class EpochLoader:
    """Batches of epoch ``e`` from batch ``skip`` on, for this rank."""

    def __init__(self, loader: Iterable[Any], *, ctx: DistContext, seed: int, name: str):
        self.name = name
        self.ctx = ctx
        self.seed = seed
        self.loader = loader
        self.sampler: ResumableSampler | None = None
        self.batch_size: int | None = None
        self._generator: torch.Generator | None = None
        if not isinstance(loader, Iterable) or isinstance(loader, (str, bytes, torch.Tensor)):
            raise TypeError(f"{name} must be a torch DataLoader or a re-iterable collection of batches, "
                            f"got {type(loader).__name__}")
        if isinstance(loader, DataLoader) and self._rebuildable(loader):
            self._rebuild(loader)
        elif ctx.distributed:
            if isinstance(loader, DataLoader) and isinstance(loader.dataset, IterableDataset):
                warnings.warn(f"{name}: an IterableDataset is read as given on every rank; it must shard "
                              "itself by torch.distributed rank", stacklevel=3)
            else:
                raise ValueError(f"{name}: distributed training needs a DataLoader with a batch_size and the "
                                 "default (random or sequential) sampler so that it can be sharded by rank; "
                                 f"got {type(loader).__name__} with a custom sampler or batch_sampler")

    @staticmethod
    def _rebuildable(loader: DataLoader) -> bool:
        if isinstance(loader.dataset, IterableDataset) or loader.batch_size is None:
            return False
        if isinstance(loader.sampler, RandomSampler):
            return not loader.sampler.replacement and loader.sampler._num_samples is None
        return isinstance(loader.sampler, SequentialSampler)

    def _rebuild(self, loader: DataLoader) -> None:
        shuffle = isinstance(loader.sampler, RandomSampler)
        self.sampler = ResumableSampler(len(loader.dataset), shuffle=shuffle, seed=self.seed,
                                        rank=self.ctx.rank, world_size=self.ctx.world_size)
        self.batch_size = loader.batch_size
        self._generator = torch.Generator()
        extra: dict[str, Any] = {}
        if loader.num_workers > 0:
            extra = {"prefetch_factor": loader.prefetch_factor,
                     "persistent_workers": loader.persistent_workers}
        self.loader = DataLoader(
            loader.dataset, batch_size=loader.batch_size, sampler=self.sampler,
            num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
            drop_last=loader.drop_last,
            timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
            multiprocessing_context=loader.multiprocessing_context, generator=self._generator, **extra)

    def batches_per_epoch(self) -> int | None:
        """Batches in a full epoch on this rank, or None when the loader has no length."""
        if self.sampler is not None:
            self.sampler.set_epoch(0, 0)
            n = len(self.sampler)
            return n // self.batch_size if self.loader.drop_last else math.ceil(n / self.batch_size)
        try:
            return len(self.loader)  # type: ignore[arg-type]
        except TypeError:
            return None

    def batches(self, epoch: int, skip: int = 0) -> Iterator[Any]:
        """Iterate epoch ``epoch``, starting after its first ``skip`` batches."""
        if self.sampler is not None:
            self.sampler.set_epoch(epoch, skip * self.batch_size)
            # worker seeds come from this generator, not the global RNG, so resuming draws nothing extra
            self._generator.manual_seed(self.seed * 1_000_003 + epoch * 1009 + self.ctx.rank)
            return iter(self.loader)
        return itertools.islice(iter(self.loader), skip, None)
