"""Training checkpoints: atomic writes, the last k kept, RNG states captured and restored for exact resume.

Files in ``out_dir``: ``ckpt-step00000120.pt`` (periodic, the newest ``keep_last`` kept) and ``best.pt``.
Everything stored is plain (tensors, numbers, strings, lists, dicts) so loading uses ``weights_only=True``.
A checkpoint whose weights or optimizer state hold NaN/inf is never written (:class:`NonFiniteStateError`),
and resuming skips one written by an older version (:func:`latest_good_checkpoint`).
"""

from __future__ import annotations

import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compresskit.io import atomic_torch_save

FORMAT = "compresskit.train/1"
_NAME = re.compile(r"^ckpt-step(\d{8,})\.pt$")


def checkpoint_path(out_dir: str | os.PathLike, step: int) -> Path:
    return Path(out_dir) / f"ckpt-step{step:08d}.pt"


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Periodic checkpoints in ``out_dir``, oldest first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out_dir.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


class NonFiniteStateError(FloatingPointError):
    """Weights or optimizer state hold NaN/inf: the checkpoint was not written. ``names`` lists them."""

    def __init__(self, message: str, names: list[str]) -> None:
        super().__init__(message)
        self.names = names


def nonfinite_tensors(obj: Any, prefix: str = "") -> list[str]:
    """Names (``model.conv.weight``, ``optimizer.state.3.exp_avg``) of the floating-point tensors inside
    ``obj`` (nested dicts, lists, tuples) that hold a NaN or an infinity."""
    if isinstance(obj, torch.Tensor):
        floating = obj.is_floating_point() or obj.is_complex()
        if floating and obj.numel() and not bool(torch.isfinite(obj).all()):
            return [prefix]
        return []
    if isinstance(obj, dict):
        items: Any = obj.items()
    elif isinstance(obj, list | tuple):
        items = enumerate(obj)
    else:
        return []
    return [n for k, v in items for n in nonfinite_tensors(v, f"{prefix}.{k}" if prefix else str(k))]


def nonfinite_grads(params: Any) -> list[int]:
    """Indices (in ``params``) of the parameters whose gradient holds a NaN or an infinity (one sync)."""
    with_grad = [(i, p.grad) for i, p in enumerate(params) if p.grad is not None]
    if not with_grad:
        return []
    ok = torch.stack([torch.isfinite(g).all() for _, g in with_grad]).cpu()
    return [i for (i, _), good in zip(with_grad, ok.tolist()) if not good]


def check_finite_state(state: dict[str, Any], what: str) -> None:
    """Raise :class:`NonFiniteStateError` when ``state["model"]`` or ``state["optimizer"]`` holds NaN/inf."""
    bad = nonfinite_tensors(state.get("model"), "model")
    bad += nonfinite_tensors(state.get("optimizer"), "optimizer")
    if bad:
        shown = ", ".join(bad[:4]) + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else "")
        raise NonFiniteStateError(f"{what} not written: NaN/inf in {len(bad)} tensor(s): {shown}", bad)


def save_checkpoint(state: dict[str, Any], out_dir: str | os.PathLike, step: int, keep_last: int) -> Path:
    """Write ``state`` atomically as the checkpoint of ``step``; delete all but the newest ``keep_last``.

    Raises :class:`NonFiniteStateError` (and writes nothing, deletes nothing) when the weights or the
    optimizer state hold NaN/inf: such a file would poison every resume."""
    check_finite_state(state, f"checkpoint of step {step}")
    path = atomic_torch_save({"format": FORMAT, **state}, checkpoint_path(out_dir, step))
    for old in list_checkpoints(out_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a compresskit training checkpoint (format {FORMAT!r})")
    return state


def latest_good_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest periodic checkpoint whose weights and optimizer state are finite (older versions could
    write NaN weights); the non-finite ones skipped are named in a warning."""
    skipped = []
    for path in reversed(list_checkpoints(out_dir)):
        try:
            check_finite_state(load_checkpoint(path), str(path))
        except NonFiniteStateError:
            skipped.append(path.name)
            continue
        if skipped:
            warnings.warn(f"resume: skipping {len(skipped)} checkpoint(s) holding NaN/inf weights or "
                          f"optimizer state ({', '.join(skipped)}); resuming from {path.name}", stacklevel=3)
        return path
    if skipped:
        warnings.warn(f"resume: every checkpoint in {str(out_dir)!r} holds NaN/inf ({', '.join(skipped)}); "
                      "starting afresh", stacklevel=3)
    return None


def rng_state() -> dict[str, Any]:
    """The state of every random generator a training step may touch: python, numpy, torch CPU and CUDA."""
    version, keys, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(keys), gauss],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
