"""The ground floor of the configs: :class:`Config` (strict pydantic models that load from and dump to
YAML or JSON) and the trainer's settings, :class:`StepConfig` and :class:`TrainConfig`.

They live below :mod:`compresskit.config` so that the trainer (:mod:`compresskit.training`) reads its settings
without importing the stage configs, which validate strategy names against the sparsifier and importance
registries (those import the trainer). ``compresskit.config`` re-exports every name here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.fields import FieldInfo

from compresskit.io import atomic_write_text

C = TypeVar("C", bound="Config")

__all__ = ["Config", "StepConfig", "TrainConfig", "RUN_WIDE", "Optimizer", "Scheduler", "Interval"]


class Config(BaseModel):
    """Base of every config: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @classmethod
    def load(cls: type[C], path: str | os.PathLike) -> C:
        """Read a ``.json``, ``.yaml`` or ``.yml`` file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            data = _yaml().safe_load(text) or {}
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise ValueError(f"config file {str(path)!r}: expected a .json, .yaml or .yml file")
        if not isinstance(data, dict):
            raise ValueError(f"config file {str(path)!r}: expected a mapping at the top level")
        return cls.model_validate(data)

    def dump(self, path: str | os.PathLike) -> Path:
        """Write the resolved config (atomically); YAML when the suffix says so, else JSON."""
        path = Path(path)
        data: dict[str, Any] = self.model_dump(mode="json")
        if path.suffix.lower() in (".yaml", ".yml"):
            text = _yaml().safe_dump(data, sort_keys=False)
        else:
            text = json.dumps(data, indent=2) + "\n"
        return atomic_write_text(text, path)


def _yaml():
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("YAML configs need PyYAML: pip install 'compresskit[yaml]'") from e
    return yaml


def _default(model: type[BaseModel], name: str, default: Any) -> Any:
    """``model``'s field ``name`` (type bounds, description) with another default: a stage's own."""
    return FieldInfo.merge_field_infos(model.model_fields[name], default=default, default_factory=None)


Optimizer = Literal["adamax", "adam", "adamw", "sgd"]
Scheduler = Literal["step", "cosine", "none"]
Interval = Literal["epoch", "step"]


class StepConfig(Config):
    """How a training run takes its steps: optimizer, learning rate and schedule, accumulation, clipping,
    AMP. :class:`TrainConfig` is these plus the run's length and bookkeeping; each training stage of
    ``compress()`` takes them too (``sparsify={"grad_clip": 1.0}``, ``recover={"optimizer": "adamw"}``)."""

    # optimizer and schedule (used when train() builds them)
    optimizer: Optimizer = Field("adamax", description="default optimizer")
    lr: float = Field(1e-3, gt=0, description="learning rate")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam-family β1, β2")
    momentum: float = Field(0.9, ge=0, description="SGD momentum")
    weight_decay: float = Field(0.0, ge=0, description="weight decay of the default optimizer")
    scheduler: Scheduler = Field("step", description="default LR schedule")
    step_size: int = Field(20, ge=1, description="StepLR period, in scheduler intervals")
    gamma: float = Field(0.5, gt=0, description="StepLR decay factor")
    scheduler_interval: Interval = Field("epoch", description="when scheduler.step() runs")
    # the step itself
    grad_accum: int = Field(1, ge=1, description="micro-batches accumulated per optimizer step")
    grad_clip: float | None = Field(None, gt=0, description="max global gradient norm (None: no clipping)")
    amp: Literal["none", "bf16", "fp16"] = Field("none", description="autocast dtype on GPU (no-op on CPU)")


#: TrainConfig fields set once for the whole run of ``compress()`` (CompressConfig's own fields), the same
#: in every training stage
RUN_WIDE = ("seed", "device", "checkpoint_every", "progress", "batch_shapes")


class TrainConfig(StepConfig):
    """Settings of :func:`compresskit.train`: one loop for both stages (sparsify and retrain/distill).

    Defaults are the papers': Adamax (lr 1e-3, β 0.9/0.999) and StepLR(step 20 epochs, γ 0.5).
    Give ``steps`` (optimizer steps) or ``epochs``, not both; neither means one epoch.
    """

    epochs: int | None = Field(None, ge=1, description="passes over the training data")
    steps: int | None = Field(None, ge=1, description="optimizer steps (overrides epochs)")
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="torch.distributed backend")
    find_unused_parameters: bool = Field(False, description="passed to DistributedDataParallel")
    seed: int = Field(0, ge=0, description="seeds python, numpy, torch (+ rank) and the data order")
    # validation, checkpoints, logging
    val_every: int | None = Field(None, ge=1, description="validate every N steps (None: each epoch end)")
    monitor: str = Field("val_loss", description="validation value that picks the best checkpoint")
    mode: Literal["min", "max"] = Field("min", description="whether smaller or larger monitor is better")
    checkpoint_every: int | None = Field(
        None, ge=1, description="checkpoint every N steps (None: each epoch end); the end is always saved")
    keep_last: int = Field(3, ge=1, description="periodic checkpoints kept on disk")
    wait_for_lock: float = Field(
        0.0, ge=0, description="seconds to wait while another live run holds out_dir (0: fail at once)")
    load_best: bool = Field(False, description="load the best checkpoint's weights at the end")
    log_every: int = Field(10, ge=1, description="steps between train records in metrics.jsonl")
    progress: bool = Field(True, description="rich progress bar on a terminal; plain progress lines when not")
    progress_every: float = Field(30.0, gt=0, description="seconds between plain progress lines")
    batch_shapes: Literal["same", "spatial", "off"] = Field(
        "same", description="train batches must have the first one's shapes except the batch size ('same'), "
        "may also change spatial sizes together ('spatial', fully convolutional models), or are not checked")

    @model_validator(mode="after")
    def _check_length(self) -> TrainConfig:
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give steps or epochs, not both")
        return self
