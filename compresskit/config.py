"""Pydantic configuration for every stage; loads from and dumps to YAML or JSON.

Every run writes its resolved config next to its outputs (``Config.dump``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compresskit.io import atomic_write_text

C = TypeVar("C", bound="Config")


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


class TrainConfig(Config):
    """Settings of :func:`compresskit.train`: one loop for both stages (sparsify and retrain/distill).

    Defaults are the papers': Adamax (lr 1e-3, β 0.9/0.999) and StepLR(step 20 epochs, γ 0.5).
    Give ``steps`` (optimizer steps) or ``epochs``, not both; neither means one epoch.
    """

    epochs: int | None = Field(None, ge=1, description="passes over the training data")
    steps: int | None = Field(None, ge=1, description="optimizer steps (overrides epochs)")
    # optimizer and schedule (used when train() builds them)
    optimizer: Literal["adamax", "adam", "adamw", "sgd"] = Field("adamax", description="default optimizer")
    lr: float = Field(1e-3, gt=0, description="learning rate")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam-family β1, β2")
    momentum: float = Field(0.9, ge=0, description="SGD momentum")
    weight_decay: float = Field(0.0, ge=0, description="weight decay of the default optimizer")
    scheduler: Literal["step", "cosine", "none"] = Field("step", description="default LR schedule")
    step_size: int = Field(20, ge=1, description="StepLR period, in scheduler intervals")
    gamma: float = Field(0.5, gt=0, description="StepLR decay factor")
    scheduler_interval: Literal["epoch", "step"] = Field("epoch", description="when scheduler.step() runs")
    # the step itself
    grad_accum: int = Field(1, ge=1, description="micro-batches accumulated per optimizer step")
    grad_clip: float | None = Field(None, gt=0, description="max global gradient norm (None: no clipping)")
    amp: Literal["none", "bf16", "fp16"] = Field("none", description="autocast dtype on GPU (no-op on CPU)")
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
    load_best: bool = Field(False, description="load the best checkpoint's weights at the end")
    log_every: int = Field(10, ge=1, description="steps between train records in metrics.jsonl")
    progress: bool = Field(True, description="rich progress bar (off anyway when not a terminal)")

    @model_validator(mode="after")
    def _check_length(self) -> TrainConfig:
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give steps or epochs, not both")
        return self


class FeaturePair(Config):
    """One feature-distillation pair: student module path → teacher module path."""

    student: str = Field(..., description="dotted module path in the student, e.g. 'encoder.conv3'")
    teacher: str = Field(..., description="dotted module path in the teacher")
    weight: float = Field(1.0, ge=0, description="weight of this pair's loss")
    loss: str = Field("mse", description="registered loss comparing adapted student and teacher features")


class DistillConfig(TrainConfig):
    """Settings of :func:`compresskit.distill`: ``L = α·L_student(S, GT) + L_distill(S, T)``.

    Defaults are ST-MFNet Mini's: α = 0.1 and the Laplacian pyramid loss for both terms.
    """

    alpha: float = Field(0.1, ge=0, description="weight α of the ground-truth term")
    student_loss: str = Field("laplacian", description="registered loss of the student vs ground truth")
    distill_loss: str = Field("laplacian", description="registered loss of the student vs the teacher")
    loss_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of both registered losses")
    features: list[FeaturePair] = Field(
        default_factory=list, description="intermediate features to distil (1x1 adapters bridge widths)")
    cache_teacher: bool = Field(
        False, description="run the teacher once over a fixed (non-augmented) dataset and reuse its outputs")
    cache_dir: Path | None = Field(None, description="where teacher outputs are cached (None: out_dir/cache)")


class CompressConfig(Config):
    """Every knob of :func:`compresskit.compress`: sparsify → plan → shrink → fine-tune.

    Defaults follow the ST-MFNet Mini recipe (λ 1e-4, lr 1e-3) scaled down to steps; the papers' epoch
    schedules convert with ``ck.steps_from_epochs``.
    """

    # stage I: l1-regularised training with OBProx-SG
    sparsify_steps: int = Field(300, ge=0, description="OBProx-SG steps of stage I (0 skips it)")
    lambda_: float = Field(1e-4, ge=0, description="l1 strength λ of OBProx-SG")
    lr: float = Field(1e-3, gt=0, description="learning rate of stage I")
    eps: float = Field(0.0, ge=0, description="OBProx-SG orthant threshold: entries at or below it become 0")
    n_prox_steps: int | None = Field(
        None, ge=0, description="Prox-SG steps before orthant steps (None: Prox-SG for ever)")
    n_orthant_steps: int | None = Field(
        None, ge=1, description="orthant steps before returning to Prox-SG steps (None: for ever)")
    l1_on: Literal["weights", "all"] = Field(
        "weights", description="l1 on 'weights' (biases and norms exempt) or on 'all' parameters (papers)")
    # widths
    width_rule: Literal["linear", "sqrt"] = Field(
        "linear", description="'linear': ceil(d·C) back to front (ST-MFNet Mini); 'sqrt': floor(√d·C) (CDFI)")
    coupling: Literal["max", "min", "mean"] = Field(
        "max", description="one width for a group shared by several layers: max, min or mean of their widths")
    min_width: int = Field(1, ge=1, description="no group shrinks below this many channels")
    divisor: int = Field(1, ge=1, description="widths are rounded up to a multiple of this")
    # shrink
    init: Literal["inherit", "reinit"] = Field(
        "inherit", description="'inherit': copy the kept channels' weights; 'reinit': fresh initialisation")
    # stage II: fine-tuning (distillation when a teacher is given)
    finetune_steps: int = Field(300, ge=0, description="training steps of the small model (0 skips it)")
    finetune_lr: float = Field(1e-3, gt=0, description="learning rate of stage II (Adamax)")
    distill_alpha: float = Field(
        0.1, ge=0, description="weight α of the ground-truth loss when distilling: α·L(S, GT) + L(S, T)")
    distill_loss: str = Field(
        "l1", min_length=1, description="registered loss L(S, T) between student and teacher outputs "
        "(ck.list_losses(); the papers: 'laplacian')")
    # bookkeeping
    out_dir: Path | None = Field(
        None, description="folder for stage checkpoints, config and report (None: nothing is written)")
    resume: bool = Field(True, description="continue from the checkpoints found in out_dir")
    seed: int = Field(0, ge=0, description="seed of every random choice (data order, reinit)")
    checkpoint_every: int = Field(50, ge=1, description="training steps between checkpoints")
    eval_batches: int | None = Field(
        None, ge=1, description="validation batches used for metrics before/after (None: all)")
    measure_latency: bool = Field(True, description="measure CPU latency before and after")
    latency_repeats: int = Field(10, ge=1, description="timed forward passes per latency measurement")
    progress: bool = Field(True, description="show rich progress bars")

    @model_validator(mode="after")
    def _check_schedule(self) -> CompressConfig:
        if self.n_orthant_steps is not None and self.n_prox_steps is None:
            raise ValueError("n_orthant_steps is set but n_prox_steps is None (Prox-SG for ever): "
                             "give n_prox_steps too, or leave n_orthant_steps None")
        return self
