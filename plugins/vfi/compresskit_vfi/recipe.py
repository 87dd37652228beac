"""Machinery shared by the resumable VFI reproduction recipes (CDFI in compresskit-adacof, ST-MFNet Mini in
compresskit-stmfnet) and their example CLIs.

A recipe is a list of :class:`compresskit.pipeline.Stage` objects run by
:func:`compresskit.pipeline.run_stages` (the runner of ``ck.compress``): each finished stage leaves
``out_dir/<stage>.pt`` stamped with its fingerprint (the settings it read, the upstream stage's
fingerprint, the digests of the weight files it loaded), so a rerun with the same settings restores it,
and a changed setting redoes that stage and every stage downstream of it. A training stage's checkpoints
live in ``out_dir/<stage>/train/`` (emptied when its fingerprint changes). The paper-style table is
rewritten to ``out_dir/table.md`` from the evaluation stage's results. The helpers read the settings every
recipe config has by the same name: ``out_dir``, ``smoke``, ``smoke_steps``, ``smoke_size``,
``smoke_eval_samples``, ``step_size``, ``gamma``, ``eval_limit``, ``num_workers``, ``device``, ``seed``,
``progress``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import compresskit as ck
from compresskit.io import atomic_write_json, atomic_write_text
from compresskit.pipeline import Stage

__all__ = ["RecipeStage", "settings", "file_digest", "start_run", "resolve_device", "recipe_loader",
           "train_settings", "obproxsg_schedule", "smoke_test_sets", "count_params", "evaluate_models",
           "write_table", "paper_table", "add_run_arguments", "add_stop_arguments", "run_from_args"]

#: settings every training stage depends on (the smoke run's shape and the seed)
COMMON_FIELDS = ("smoke", "smoke_steps", "smoke_size", "seed")


# ---------------------------------------------------------------------------------------------- stages
def file_digest(path: Path | None) -> str | None:
    """SHA-1 of a file's bytes (a replaced weights file redoes the stages that loaded it); None for None."""
    if path is None:
        return None
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def settings(cfg: Any, fields: Sequence[str]) -> dict[str, Any]:
    """``{field: value}`` of ``cfg`` as JSON values (paths as strings), for a stage fingerprint."""
    dumped = cfg.model_dump(mode="json")
    return {f: dumped[f] for f in fields}


class RecipeStage(Stage):
    """A recipe stage: ``fields`` are the config settings it reads, ``upstream`` the stages whose results
    it uses, ``files`` the config paths whose file contents it loads. The fingerprint is made of these;
    ``artifact`` is ``<name>.pt`` in ``out_dir``. The state has ``cfg``, ``console`` and ``fingerprints``."""

    fields: tuple[str, ...] = ()
    upstream: tuple[str, ...] = ()
    files: tuple[str, ...] = ()

    @property
    def artifact(self) -> str:  # type: ignore[override]
        return f"{self.name}.pt"

    def fingerprint(self, state: Any) -> dict[str, Any]:
        """The declared settings (the ``smoke_*`` ones only in smoke mode, where they apply), the digests
        of the declared files, the upstream fingerprints."""
        cfg = state.cfg
        fields = [f for f in self.fields if cfg.smoke or not f.startswith("smoke_")]
        return {"stage": self.name, "settings": settings(cfg, fields),
                "files": {f: file_digest(getattr(cfg, f)) for f in self.files},
                "upstream": {u: state.fingerprints[u] for u in self.upstream}}

    def train_dir(self, state: Any) -> Path | None:
        """``out_dir/<name>/train``: this stage's training checkpoints, kept only for its fingerprint."""
        return state.store.train_dir(f"{self.name}/train", state.fingerprints[self.name])

    def done(self, state: Any) -> None:
        state.console.print(f"[green]{self.name}[/]: done ({state.cfg.out_dir / self.artifact})")


# -------------------------------------------------------------------------------------------- settings
def run_lock(cfg: Any) -> AbstractContextManager[None]:
    """Hold ``cfg.out_dir``'s lock (compresskit.lock) for a whole recipe run: a second run on the same
    folder fails at once naming the holder, instead of deleting the first run's stage checkpoints when
    its settings differ. Under torchrun only rank 0 takes it (the ranks of one run share the folder)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return nullcontext()
    from compresskit.lock import folder_lock

    return folder_lock(cfg.out_dir, 0.0, "this recipe run")


def start_run(cfg: Any, console: Console | None) -> Console:
    """Create ``cfg.out_dir``, record the config in ``config.json``; the console to report on."""
    console = console or Console(quiet=not cfg.progress)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    cfg.dump(cfg.out_dir / "config.json")
    return console


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` when a GPU is present, else ``"cpu"``; any other name is returned as is."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def recipe_loader(ds: Dataset, batch: int, cfg: Any) -> DataLoader:
    """Shuffled loader seeded by ``cfg.seed``; it keeps the last partial batch, as the published
    training scripts do (PyTorch's ``drop_last=False``)."""
    return DataLoader(ds, batch_size=batch, shuffle=True, drop_last=False,
                      num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed))


def train_settings(cfg: Any, epochs: int, lr: float, **kw: Any) -> dict[str, Any]:
    """Keyword arguments of ``ck.TrainConfig`` / ``ck.DistillConfig`` for one training stage: ``epochs``
    with StepLR(``cfg.step_size``, ``cfg.gamma``), or ``cfg.smoke_steps`` steps logged every step in smoke
    mode."""
    if cfg.smoke:
        return dict(steps=cfg.smoke_steps, lr=lr, device=cfg.device, seed=cfg.seed, progress=cfg.progress,
                    log_every=1, **kw)
    return dict(epochs=epochs, lr=lr, step_size=cfg.step_size, gamma=cfg.gamma, device=cfg.device,
                seed=cfg.seed, progress=cfg.progress, **kw)


def obproxsg_schedule(cfg: Any, prox_epochs: float, steps_per_epoch: int) -> dict[str, int | None]:
    """``n_prox_steps`` / ``n_orthant_steps`` of OBProx-SG: Np = ``prox_epochs`` epochs of Prox-SG steps
    (``ck.steps_from_epochs``), or half the smoke steps in smoke mode."""
    if cfg.smoke:
        return {"n_prox_steps": cfg.smoke_steps // 2, "n_orthant_steps": None}
    return ck.steps_from_epochs(prox_epochs, steps_per_epoch)


def smoke_test_sets(cfg: Any, kind: str) -> dict[str, Dataset]:
    """``{"sample_val": the first cfg.smoke_eval_samples embedded validation samples of kind}``."""
    from compresskit_vfi.data.samples import sample_dataset

    ds = sample_dataset(kind, "val", size=cfg.smoke_size)
    return {"sample_val": Subset(ds, range(min(len(ds), cfg.smoke_eval_samples)))}


def count_params(model: nn.Module) -> int:
    """Number of parameters (every element of every parameter tensor)."""
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------- results
def evaluate_models(cfg: Any, models: Mapping[str, nn.Module], test_sets: Callable[[], Any], console: Console,
                    **evaluate_kw: Any) -> dict:
    """Score ``models`` on ``test_sets()`` with ``compresskit_vfi.evaluate`` (on ``cfg.device``, the first
    ``cfg.eval_limit`` samples, or ``cfg.smoke_eval_samples`` in smoke mode); also written to
    ``evaluate/results.json``. Returns ``EvaluationResult.to_dict()``."""
    from compresskit_vfi.evaluate import evaluate

    limit = cfg.smoke_eval_samples if cfg.smoke else cfg.eval_limit
    result = evaluate(dict(models), test_sets(), device=resolve_device(cfg.device), limit=limit,
                      progress=cfg.progress, console=console, **evaluate_kw)
    atomic_write_json(result.to_dict(), cfg.out_dir / "evaluate" / "results.json")
    return result.to_dict()


def write_table(cfg: Any, text: str, console: Console) -> str:
    """Write the paper-style table to ``out_dir/table.md`` and print it."""
    atomic_write_text(text, cfg.out_dir / "table.md")
    console.print(text, soft_wrap=True, markup=False, highlight=False)
    return text


def paper_table(results: Mapping[str, Any], published: Mapping[str, Mapping[str, Sequence[float | None]]],
                published_params: Mapping[str, int], sets: Sequence[str],
                metrics: Sequence[tuple[str, int]]) -> str:
    """Markdown table: the ``published`` rows, then ours from ``results`` (``EvaluationResult.to_dict()``).

    One column per test set (``sets`` first, then any other set scored), each cell the ``metrics``
    ``(name, digits)`` joined by " / "; ``published[model][set]`` holds the values in ``metrics`` order and
    a missing or NaN value shows as "-"."""
    sets = list(sets)
    ours_sets = [d for per in results["scores"].values() for d in per]
    sets += [d for d in dict.fromkeys(ours_sets) if d not in sets]
    names = " / ".join(name.upper() for name, _ in metrics)
    header = "| model | params | " + " | ".join(f"{d} {names}" for d in sets) + " |"
    lines = [header, "|" + "---|" * (len(sets) + 2)]

    def fmt(v: float | None, digits: int) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"

    def cell(values: Sequence[float | None]) -> str:
        return " / ".join(fmt(v, digits) for v, (_, digits) in zip(values, metrics))

    for name, scores in published.items():
        row = [cell(scores[d]) if d in scores else "-" for d in sets]
        lines.append(f"| {name} (published) | {published_params[name]:,} | " + " | ".join(row) + " |")
    first = metrics[0][0]
    for name, per in results["scores"].items():
        row = [cell([per[d][first], *(per[d].get(m) for m, _ in metrics[1:])]) if d in per else "-"
               for d in sets]
        params = results["models"].get(name, {}).get("params")
        lines.append(f"| {name} (ours) | {params:,} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------- CLI
def add_run_arguments(p: argparse.ArgumentParser, default_out: Path, config_name: str) -> None:
    """``--out``, ``--config`` (a JSON/YAML ``config_name``), ``--smoke`` and ``--smoke-steps``."""
    p.add_argument("--out", type=Path, default=default_out, help="output folder (resumes from it)")
    p.add_argument("--config", type=Path, default=None, help=f"JSON/YAML {config_name}; flags override")
    p.add_argument("--smoke", action="store_true", help="embedded sample clips, a few steps per stage")
    p.add_argument("--smoke-steps", type=int, default=None, help="optimizer steps per stage in smoke mode")


def add_stop_arguments(p: argparse.ArgumentParser, stages: Sequence[str]) -> None:
    """``--stop-after`` (one of ``stages``, default the last)."""
    p.add_argument("--stop-after", choices=stages, default=stages[-1], help="stop after this stage")


def run_from_args(args: argparse.Namespace, config_cls: Any, flags: Mapping[str, Any],
                  run: Callable[..., Any], console: Console) -> int:
    """Build the recipe config (``--config`` file, overridden by the flags that were given) and run it.

    ``flags`` maps config fields to the recipe-specific flag values (``None``: not given). Returns the exit
    status: 0, or 2 after printing a ``ValueError`` / ``FileNotFoundError`` (also to stderr with
    ``--quiet``)."""
    values = config_cls.load(args.config).model_dump() if args.config else {}
    given = {"out_dir": args.out, "smoke": args.smoke or values.get("smoke", False),
             "smoke_steps": args.smoke_steps, **flags, "progress": False if args.quiet else None}
    values.update({k: v for k, v in given.items() if v is not None})
    try:
        cfg = config_cls.model_validate(values)
        run(cfg, console, stop_after=args.stop_after)
    except (ValueError, FileNotFoundError) as e:
        console.print(f"[red]error[/]: {e}")
        if args.quiet:
            print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
