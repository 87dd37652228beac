"""What a run shows and keeps: a rich progress bar (loss, rate, ETA) on a terminal, plain progress lines
in a log (stdout redirected, a batch job, CI), and metrics as JSON lines."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from compresskit.budget import duration
from compresskit.io import atomic_write_text


class ProgressBar:
    """A rich bar over optimizer steps with the running loss, steps/s and ETA; silent when ``enabled`` is
    False or stdout is not a terminal."""

    def __init__(self, total: int | None, *, enabled: bool, description: str = "train",
                 console: Console | None = None):
        console = console or Console()
        self.enabled = bool(enabled and console.is_terminal)
        self._progress: Progress | None = None
        self._task = None
        self._t0 = time.perf_counter()
        self._n0 = 0
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]}"),
                TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False)
            self._task = self._progress.add_task(description, total=total, loss="-", rate="")

    def start(self, completed: int) -> None:
        self._n0 = completed
        self._t0 = time.perf_counter()
        if self._progress is not None:
            self._progress.update(self._task, completed=completed)
            self._progress.start()

    def update(self, completed: int, loss: float | None) -> None:
        if self._progress is None:
            return
        elapsed = time.perf_counter() - self._t0
        rate = (completed - self._n0) / elapsed if elapsed > 0 else 0.0
        self._progress.update(self._task, completed=completed,
                              loss="-" if loss is None else f"{loss:.4g}", rate=f"{rate:.2f} step/s")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _number(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


_Fields = Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None


class ProgressLines:
    """Plain progress lines for logs: one at the start, one every ``every`` seconds, one at the end::

        [sparsify] step 120/300 (40%) | loss 0.01234 | density 0.62 | elapsed 1m02s | ETA 1m33s

    Printed to ``stream`` (stdout by default) only when it is not a terminal (where the rich bar shows
    instead) and ``enabled``; appended to ``log_path`` (the run's ``out_dir/log.txt``) whenever one is
    given. ETA = elapsed / steps done × steps left (steps done since ``start``, so a resumed run is fair).
    ``fields`` (e.g. ``density``): a mapping of values or callables, or a callable returning one,
    evaluated only when a line is written.
    ``clock``: seconds (``time.monotonic``; a fake one in tests).
    """

    def __init__(self, total: int | None, *, stage: str = "train", every: float = 30.0, enabled: bool = True,
                 stream: IO[str] | None = None, log_path: str | os.PathLike | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not (isinstance(every, int | float) and every > 0):
            raise ValueError(f"every: expected a number of seconds > 0, got {every!r}")
        self.total, self.stage, self.every, self.clock = total, stage, float(every), clock
        self.stream = stream if stream is not None else sys.stdout
        isatty = getattr(self.stream, "isatty", None)
        self.to_stream = bool(enabled) and not (callable(isatty) and isatty())
        self.log_path = Path(log_path) if log_path is not None else None
        self.lines: list[str] = []  # everything written, for callers and tests
        self._t0 = self._last = clock()
        self._n0 = 0

    @property
    def active(self) -> bool:
        return self.to_stream or self.log_path is not None

    def _steps(self, step: int) -> str:
        if self.total:
            return f"step {step}/{self.total} ({step / self.total:.0%})"
        return f"step {step}"

    def _emit(self, text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} [{self.stage}] {text}"
        self.lines.append(line)
        if self.to_stream:
            print(line, file=self.stream, flush=True)
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a") as f:
                f.write(line + "\n")

    @staticmethod
    def _fields(fields: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None) -> list[str]:
        if callable(fields):
            fields = fields()
        out = []
        for k, v in (fields or {}).items():
            value = v() if callable(v) else v
            if value is not None:
                out.append(f"{k} {_number(value)}")
        return out

    def start(self, step: int = 0) -> None:
        self._t0 = self._last = self.clock()
        self._n0 = step
        if self.active:
            resumed = f", resuming at step {step}" if step else ""
            self._emit(f"start: {self.total if self.total else '?'} steps{resumed}")

    def update(self, step: int, loss: float | None, fields: _Fields = None) -> bool:
        """Write a line if ``every`` seconds passed since the last one; returns whether it did."""
        now = self.clock()
        if not self.active or now - self._last < self.every:
            return False
        self._last = now
        elapsed = now - self._t0
        done = step - self._n0
        eta = (elapsed / done * (self.total - step)) if self.total and done > 0 else float("nan")
        parts = [self._steps(step)]
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        parts += self._fields(fields)
        parts += [f"elapsed {duration(elapsed)}", f"ETA {duration(eta)}"]
        self._emit(" | ".join(parts))
        return True

    def close(self, step: int, loss: float | None, fields: _Fields = None) -> None:
        if not self.active:
            return
        parts = [f"done: {self._steps(step)}"]
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        parts += self._fields(fields)
        parts.append(f"elapsed {duration(self.clock() - self._t0)}")
        self._emit(" | ".join(parts))

    def fail(self, step: int, error: BaseException) -> None:
        """The last line of a run that stopped on an exception."""
        if self.active:
            self._emit(f"stopped at {self._steps(step)}: {type(error).__name__}: {error}"[:500])


class MetricsLog:
    """Append-only JSON lines (``metrics.jsonl``); ``path=None`` keeps records in memory only."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path is not None else None
        self.records: list[dict[str, Any]] = []
        if self.path is not None and self.path.is_file():
            self.records = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def __len__(self) -> int:
        return len(self.records)

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` records (a resumed run drops what was logged after its checkpoint)."""
        if n < len(self.records):
            self.records = self.records[:n]
            if self.path is not None:
                atomic_write_text("".join(json.dumps(r) + "\n" for r in self.records), self.path)

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
