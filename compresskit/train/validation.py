"""Held-out data and the best weights, when the user gives no ``val_loader``.

:func:`hold_out` sets a small, deterministic part of the training data aside: of a ``DataLoader`` over a
dataset with a length, the samples at evenly spaced indices ``⌊(i + ½)·N/n⌋`` (``n = ⌈fraction·N⌉``,
at least one batch); of a list of batches, the batches at evenly spaced positions the same way. The
held-out batches are drawn once (a random-crop dataset gives the same crops at every validation) and the
training loader is rebuilt without them, so they are never trained on. Other loaders (custom samplers,
iterable datasets) cannot be split deterministically: :func:`hold_out` returns None for them.

:class:`BestWeights` keeps the weights of the best validation in memory, restores them at the end of
the stage, and stops the stage after ``patience`` validations without improvement (counted from
``after_step``: stage I's zeroing schedule must have finished before its weights are worth keeping).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler, Subset

from compresskit.train.loop import Callback

__all__ = ["HeldOut", "hold_out", "held_out_indices", "BestWeights", "plot_validation"]


@dataclass
class HeldOut:
    """The training loader without the held-out part, the held-out batches, and which items they were
    (dataset indices of a DataLoader, batch positions of a list)."""

    train_loader: Iterable
    val_batches: list[Any]
    indices: list[int]
    of: str  # "samples" or "batches"
    total: int

    def describe(self) -> str:
        return (f"{len(self.indices)} of {self.total} training {self.of} held out for validation "
                f"(evenly spaced, never trained on)")


def held_out_indices(n: int, fraction: float, minimum: int = 1) -> list[int]:
    """``⌊(i + ½)·n/k⌋`` for ``i < k``, ``k = max(minimum, ⌈fraction·n⌉)`` (at most ``n − 1``)."""
    if n < 2:
        return []
    k = min(n - 1, max(minimum, math.ceil(fraction * n)))
    return sorted({int((i + 0.5) * n / k) for i in range(k)})


def hold_out(loader: Iterable, fraction: float = 0.1, *, seed: int = 0,
             max_batches: int = 32) -> HeldOut | None:
    """Split ``loader`` into training and held-out parts (see the module docstring); None when it cannot be
    split deterministically or is too small (a DataLoader needs at least two batches' worth of samples,
    a list at least two batches)."""
    if not 0 < fraction < 1:
        raise ValueError(f"holdout: expected a fraction in (0, 1), got {fraction!r}")
    if isinstance(loader, DataLoader):
        return _hold_out_dataloader(loader, fraction, seed, max_batches)
    if isinstance(loader, (list, tuple)):
        idx = held_out_indices(len(loader), fraction)[:max_batches]
        if not idx:
            return None
        chosen = set(idx)
        return HeldOut([b for i, b in enumerate(loader) if i not in chosen], [loader[i] for i in idx], idx,
                       "batches", len(loader))
    return None


def _hold_out_dataloader(loader: DataLoader, fraction: float, seed: int, max_batches: int) -> HeldOut | None:
    if isinstance(loader.dataset, IterableDataset) or loader.batch_size is None:
        return None
    if not isinstance(loader.sampler, (RandomSampler, SequentialSampler)):
        return None
    try:
        n = len(loader.dataset)  # type: ignore[arg-type]
    except TypeError:
        return None
    bs = loader.batch_size
    if n < 2 * bs:
        return None
    idx = held_out_indices(n, fraction, minimum=bs)[: max_batches * bs]
    chosen = set(idx)
    rest = [i for i in range(n) if i not in chosen]
    shuffle = isinstance(loader.sampler, RandomSampler)
    generator = None
    if shuffle:
        generator = torch.Generator().manual_seed(seed)
    extra: dict[str, Any] = {}
    if loader.num_workers > 0:
        extra = {"prefetch_factor": loader.prefetch_factor, "persistent_workers": loader.persistent_workers}
    train = DataLoader(Subset(loader.dataset, rest), batch_size=bs, shuffle=shuffle,
                       num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                       pin_memory=loader.pin_memory, drop_last=loader.drop_last and len(rest) >= bs,
                       timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
                       multiprocessing_context=loader.multiprocessing_context, generator=generator, **extra)
    val = DataLoader(Subset(loader.dataset, idx), batch_size=bs, shuffle=False, collate_fn=loader.collate_fn)
    with torch.random.fork_rng(devices=[]):  # random crops: drawn once, under the run's seed
        torch.manual_seed(seed)
        batches = list(val)
    return HeldOut(train, batches, idx, "samples", n)


class BestWeights(Callback):
    """Keeps the weights of the best validation of ``monitor`` (smaller is better) in memory and restores
    them at the end; with ``patience`` it stops after that many validations in a row without
    improvement (not before step ``stop_from``). With ``stop_margin`` m only a validation clearly worse
    than the best, ``value > best + m·|best|``, counts towards ``patience``; one within the margin ends
    the streak (on a few held-out batches the value moves by about 1 % between validations of weights
    that are still improving). Validations before ``after_step`` are recorded but neither kept nor
    counted; with ``validate_at_start`` the weights the stage starts from are validated (step 0) and
    compete too."""

    def __init__(self, monitor: str = "val_loss", *, patience: int | None = None, after_step: int = 0,
                 min_delta: float = 0.0, validate_at_start: bool = True, stop_from: int = 0,
                 stop_margin: float = 0.0):
        if patience is not None and patience < 1:
            raise ValueError(f"patience: expected an int >= 1 or None, got {patience}")
        if not stop_margin >= 0:
            raise ValueError(f"stop_margin: expected a relative margin >= 0 (0.01 = 1 %), got {stop_margin}")
        self.stop_margin = stop_margin
        self.monitor, self.patience, self.after_step = monitor, patience, after_step
        self.min_delta = min_delta
        self.validate_at_start = validate_at_start
        self.stop_from = stop_from
        self.best: float | None = None
        self.best_step: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad = 0
        self.stopped_at: int | None = None
        self.history: list[dict[str, float]] = []
        self.last: float | None = None

    def on_train_start(self, trainer: Any) -> None:
        if self.stopped_at is not None:
            trainer.should_stop = True
        elif (self.validate_at_start and trainer.step == 0 and not self.history
              and trainer.val_loader is not None):
            self.on_validation_end(trainer, trainer.validate())  # the starting weights compete too

    def on_validation_end(self, trainer: Any, values: dict[str, float]) -> None:
        if self.monitor not in values:
            raise ValueError(f"BestWeights: monitor {self.monitor!r} is not among the validation values "
                             f"{sorted(values)}")
        value = float(values[self.monitor])
        self.history.append({"step": trainer.step, self.monitor: value})
        self.last = value
        if trainer.step < self.after_step or not math.isfinite(value):
            return
        if self.best is None or value < self.best - self.min_delta * abs(self.best):
            self.best, self.best_step, self.bad = value, trainer.step, 0
            self.best_state = {k: v.detach().to("cpu", copy=True)
                               for k, v in trainer.model.state_dict().items()}
        elif value <= self.best + self.stop_margin * abs(self.best):
            self.bad = 0  # not better, but within the noise: the streak of clearly worse ones ends
        else:
            self.bad += 1
            if (self.patience is not None and self.bad >= self.patience and trainer.step >= self.stop_from
                    and not trainer.should_stop):
                self.stopped_at = trainer.step
                trainer.should_stop = True

    def on_train_end(self, trainer: Any) -> None:
        if self.best_state is not None:
            trainer.model.load_state_dict(self.best_state)

    def rescale_steps(self, new: int, old: int) -> None:
        """The stage was shortened (``compresskit.budget.Pace``): ``after_step`` moves with it."""
        self.after_step = round(self.after_step * new / old)
        self.stop_from = round(self.stop_from * new / old)

    def summary(self, final_step: int) -> dict[str, Any]:
        return {"monitor": self.monitor, "best": self.best, "best_step": self.best_step,
                "last": self.last, "final_step": final_step, "stopped_early_at": self.stopped_at,
                "returned": "best" if self.best_state is not None else "last", "history": list(self.history)}

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "best_state": self.best_state,
                "bad": self.bad, "stopped_at": self.stopped_at, "history": list(self.history),
                "last": self.last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step, self.best_state = state["best"], state["best_step"], state["best_state"]
        self.bad, self.stopped_at = state["bad"], state["stopped_at"]
        self.history, self.last = list(state["history"]), state["last"]


def plot_validation(curves: dict[str, dict[str, Any]], path: str | Path) -> Path | None:
    """``validation.png``: the validation value against the step, one panel per stage, the returned
    (best) step marked. None when matplotlib is not installed (the ``[plot]`` extra)."""
    try:
        from matplotlib.figure import Figure  # no pyplot: the user's backend is left alone
    except ImportError:
        return None
    import io

    from compresskit.io import atomic_write_bytes

    curves = {k: v for k, v in curves.items() if v.get("history")}
    if not curves:
        return None
    fig = Figure(figsize=(4.2 * len(curves), 3.2), dpi=110)
    for i, (stage, rec) in enumerate(curves.items(), start=1):
        ax = fig.add_subplot(1, len(curves), i)
        monitor = rec["monitor"]
        steps = [h["step"] for h in rec["history"]]
        values = [h[monitor] for h in rec["history"]]
        ax.plot(steps, values, "o-", ms=3)
        if rec.get("best_step") is not None:
            ax.axvline(rec["best_step"], color="C2", ls="--", lw=1,
                       label=f"returned (step {rec['best_step']})")
            ax.legend(fontsize=7)
        ax.set_title(f"{stage}: held-out {monitor}", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(buf.getvalue(), Path(path))
