"""The one latency clock: milliseconds per call of a function, the median of timed runs.

Every latency in compresskit is read by :class:`Clock` (the report's ``measure_latency``, the runtimes
of ``compresskit.deploy.runtime``, the verification of a latency target, the latency table)::

    ms(fn) = 1000 · median_r ( t_r / n )

- ``warmup`` untimed calls first (allocator, caches, lazy kernels);
- one timed call sizes a run: ``n = clamp(ceil(min_run_s / t_once), 1, 1000)`` calls, so a call shorter
  than the timer's resolution is timed in bulk;
- ``repeats`` runs, ``t_r`` the seconds of run ``r`` on ``timer`` (``time.perf_counter``; inject a fake
  clock in tests, or ``time.thread_time`` for CPU time that other work on a shared machine does not
  inflate); on CUDA the device is synchronised before and after each run, so kernels count, not launches;
- the statistic is the **median** of the runs (robust to the stalls a shared machine adds);
  :meth:`Clock.runs` returns every run for a caller that also shows the fastest;
- calls run under ``torch.inference_mode``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compresskit._modes import eval_mode
from compresskit.measure.counts import as_inputs

__all__ = ["Clock", "STATISTIC", "statistic", "time_ms", "measure_latency"]

#: the statistic every latency reports
STATISTIC = "median"


def statistic(times: Sequence[float]) -> float:
    """The clock's statistic of a list of times: their median."""
    return float(statistics.median(times))


@dataclass(frozen=True)
class Clock:
    """How latency is read (see the module docstring): device, runs, warm-up, run length, timer."""

    device: torch.device | str = "cpu"
    repeats: int = 10
    warmup: int = 2
    min_run_s: float = 2e-3
    timer: Callable[[], float] = field(default=time.perf_counter)

    def __post_init__(self) -> None:
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise ValueError(f"repeats: expected an int >= 1, got {self.repeats!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup: expected an int >= 0, got {self.warmup!r}")
        if not self.min_run_s >= 0:
            raise ValueError(f"min_run_s: expected seconds >= 0, got {self.min_run_s!r}")
        object.__setattr__(self, "device", torch.device(self.device))
        object.__setattr__(self, "timer", self.timer or time.perf_counter)

    def sync(self) -> None:
        """Wait for the device's queued work (CUDA); nothing on the CPU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _run(self, fn: Callable[[], Any], n: int) -> float:
        self.sync()
        t0 = self.timer()
        for _ in range(n):
            fn()
        self.sync()
        return self.timer() - t0

    def runs(self, fn: Callable[[], Any]) -> list[float]:
        """Milliseconds per call of ``fn`` in each of ``repeats`` timed runs, after the warm-up."""
        with torch.inference_mode():
            for _ in range(self.warmup):
                fn()
            once = self._run(fn, 1)
            n = max(1, min(1000, math.ceil(self.min_run_s / once))) if once > 0 else 1
            return [1000.0 * self._run(fn, n) / n for _ in range(self.repeats)]

    def ms(self, fn: Callable[[], Any]) -> float:
        """Milliseconds of one call of ``fn``: the :func:`statistic` of :meth:`runs`."""
        return statistic(self.runs(fn))


def time_ms(fn: Callable[[], Any], *, device: torch.device | str = "cpu", repeats: int = 10,
            warmup: int = 2, min_run_s: float = 2e-3, timer: Callable[[], float] | None = None) -> float:
    """Milliseconds of one call of ``fn`` on the one clock (:class:`Clock`)."""
    return Clock(device, repeats, warmup, min_run_s, timer or time.perf_counter).ms(fn)


def measure_latency(
    model: nn.Module, example_inputs: Any, repeats: int = 10, warmup: int = 2
) -> dict[str, Any]:
    """Latency of ``model(*example_inputs)`` in eval mode, on the device of its inputs (:class:`Clock`).

    Returns ``{"median_ms", "min_ms", "repeats", "threads", "device"}``: the median (the clock's
    statistic) and the fastest of ``repeats`` timed runs after ``warmup`` untimed calls.
    """
    inputs = as_inputs(example_inputs)
    device = next((t.device for t in inputs if isinstance(t, torch.Tensor)), torch.device("cpu"))
    clock = Clock(device, repeats, warmup)
    with eval_mode(model):
        times = clock.runs(lambda: model(*inputs))
    return {"median_ms": statistic(times), "min_ms": min(times), "repeats": repeats,
            "threads": torch.get_num_threads(), "device": str(device)}
