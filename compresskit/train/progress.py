"""What a run shows and keeps: a rich progress bar (loss, rate, ETA) and metrics as JSON lines."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

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
