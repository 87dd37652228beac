"""One training loop for both stages (l1-regularised sparsification and retraining / distillation).

``train(model, train_loader, loss_fn)`` calls ``model(*inputs_fn(batch))`` (default ``batch[:-1]``) and
``loss_fn(output, batch)`` on every micro-batch, steps the optimizer every ``grad_accum`` micro-batches,
and handles the rest: DDP under ``torchrun``, AMP on GPU, gradient clipping, validation with the best
checkpoint kept, atomic checkpoints with exact resume, a progress bar and ``metrics.jsonl``.

Defaults are the papers': Adamax (lr 1e-3, β 0.9/0.999) and StepLR(20 epochs, γ 0.5). Any
``torch.optim.Optimizer`` (e.g. ``ck.OBProxSG``) plugs in as ``optimizer=``, or a factory
``params -> Optimizer``; ``scheduler=`` takes a scheduler or a factory ``optimizer -> scheduler``.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from compresskit._config import StepConfig, TrainConfig
from compresskit._modes import eval_mode
from compresskit.checks import batch_spec, check_batch_consistent
from compresskit.io import atomic_torch_save, remove_stale_temps
from compresskit.training import checkpoint as ckpt
from compresskit.training.batch import to_device
from compresskit.training.data import EpochLoader, require_reiterable
from compresskit.training.distributed import (
    DistContext,
    all_reduce_mean,
    all_reduce_sum,
    gather_objects,
    setup,
)
from compresskit.training.progress import MetricsLog, ProgressBar, ProgressLines

LossFn = Callable[[Any, Any], "torch.Tensor | Mapping[str, torch.Tensor]"]
OptimizerArg = "torch.optim.Optimizer | Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped before the bad step touched the weights."""


class BatchError(ValueError):
    """A batch is not what the loop expected (type, length, tensor rank or dtype)."""


class Callback:
    """Hooks into a run; override what you need. ``state_dict`` is saved in checkpoints and restored."""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer) -> None:
        """After each optimizer step (``trainer.step`` already counts it)."""

    def on_validation_end(self, trainer: Trainer, values: dict[str, float]) -> None: ...

    def on_train_end(self, trainer: Trainer) -> None: ...

    def progress_fields(self, trainer: Trainer) -> dict[str, float]:
        """Values shown in the plain progress lines (e.g. ``{"density": 0.4}``); asked only when a
        line is written."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    """What a run leaves: the trained model and where it stands."""

    model: nn.Module
    step: int
    epoch: int
    loss: float | None
    best: float | None = None
    best_step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    out_dir: Path | None = None
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Length:
    """How long a run is: batches per epoch (None: unknown), epochs or steps, and the total steps."""

    n_batches: int | None
    epochs: int | None
    max_steps: int | None
    total: int | None
    steps_per_epoch: int | None

    @classmethod
    def of(cls, cfg: TrainConfig, n_batches: int | None) -> _Length:
        if n_batches == 0:
            raise ValueError("train_loader yields no batches (empty dataset, or fewer samples than "
                             "batch_size with drop_last=True)")
        steps_per_epoch = math.ceil(n_batches / cfg.grad_accum) if n_batches is not None else None
        epochs = None if cfg.steps is not None else (cfg.epochs or 1)
        total = cfg.steps if cfg.steps is not None else (
            epochs * steps_per_epoch if steps_per_epoch is not None else None)
        return cls(n_batches, epochs, cfg.steps, total, steps_per_epoch)

    def intervals(self, interval: str) -> int | None:
        """Scheduler intervals in the run (steps or epochs)."""
        if interval == "step":
            return self.total
        if self.epochs is not None:
            return self.epochs
        return math.ceil(self.total / self.steps_per_epoch) if self.steps_per_epoch else None


def build_optimizer(params: list[nn.Parameter], cfg: StepConfig, lr: float | None = None
                    ) -> torch.optim.Optimizer:
    """The optimizer ``cfg.optimizer`` names with its settings (``lr`` in place of ``cfg.lr`` when given:
    a stage's ``"auto"`` rate being probed)."""
    lr = cfg.lr if lr is None else lr
    if cfg.optimizer == "adamax":
        return torch.optim.Adamax(params, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def default_inputs(batch: Any) -> tuple[Any, ...]:
    """``batch[:-1]``: every element but the last (the target)."""
    return tuple(batch[:-1])


class Trainer:
    """The loop behind :func:`train`; see the module docstring. ``Trainer(...).fit() -> TrainResult``."""

    def __init__(self, model: nn.Module, train_loader: Iterable[Any], loss_fn: LossFn, *,
                 optimizer: Any = None, scheduler: Any = None, config: TrainConfig | None = None,
                 val_loader: Iterable[Any] | None = None,
                 metrics: Mapping[str, Callable[[Any, Any], Any]] | None = None,
                 inputs_fn: Callable[[Any], Sequence[Any]] | None = None,
                 out_dir: str | os.PathLike | None = None, resume: bool = True,
                 callbacks: Sequence[Callback] = (), stage: str = "train"):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable as loss_fn(output, batch), "
                            f"got {type(loss_fn).__name__}")
        if config is None:
            config = TrainConfig()
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a compresskit TrainConfig, got {type(config).__name__}")
        if metrics is not None and not (isinstance(metrics, Mapping)
                                        and all(callable(f) for f in metrics.values())):
            raise TypeError("metrics must be a mapping {name: fn(output, batch) -> number}")
        if inputs_fn is not None and not callable(inputs_fn):
            raise TypeError(f"inputs_fn must be callable as inputs_fn(batch), got {type(inputs_fn).__name__}")
        if train_loader is None:
            raise TypeError("train_loader must be a DataLoader (or re-iterable batches), got None")
        require_reiterable(train_loader, "train_loader")
        if val_loader is not None:
            require_reiterable(val_loader, "val_loader")
        self.model = model
        self.train_loader = train_loader
        self.loss_fn = loss_fn
        self.optimizer_arg = optimizer
        self.scheduler_arg = scheduler
        self.config = config
        self.val_loader = val_loader
        self.metrics = dict(metrics or {})
        self.inputs_fn = inputs_fn
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.resume = resume
        self.callbacks = list(callbacks)
        self.stage = str(stage)
        # run state, readable by callbacks
        self.step = 0
        self.epoch = 0
        self.position = 0  # micro-batches of the current epoch already consumed
        self.best: float | None = None
        self.best_step: int | None = None
        self.last_output: Any = None
        self.last_batch: Any = None
        self.last_checkpoint: Path | None = None
        self.best_checkpoint: Path | None = None
        self.should_stop = False  # a callback sets it to end the run after the current step
        self.ctx = DistContext()
        self.device = torch.device("cpu")
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self._batch_spec: list[Any] | None = None
        self._batch_shapes: Any = None
        self._pending_logs: dict[str, list[float]] = {}
        self._val: EpochLoader | None = None

    # ------------------------------------------------------------------ set-up
    def _resolve_device(self) -> torch.device:
        want = self.config.device
        if want == "auto":
            return torch.device(f"cuda:{self.ctx.local_rank}" if torch.cuda.is_available() else "cpu")
        device = torch.device(want)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"config.device={want!r} but CUDA is not available")
        return device

    def _build_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        arg, cfg = self.optimizer_arg, self.config
        if isinstance(arg, torch.optim.Optimizer):
            mine = {id(p) for p in self.model.parameters()}
            for group in arg.param_groups:
                if any(id(p) not in mine for p in group["params"]):
                    raise ValueError("optimizer holds parameters that are not the model's (was it built "
                                     "for another copy of the model?); pass a factory params -> Optimizer")
            return arg
        if not params:
            raise ValueError("model has no parameters with requires_grad=True: nothing to train")
        if callable(arg):
            opt = arg(params)
            if not isinstance(opt, torch.optim.Optimizer):
                raise TypeError(f"the optimizer factory must return a torch.optim.Optimizer, "
                                f"got {type(opt).__name__}")
            return opt
        if arg is not None:
            raise TypeError("optimizer must be a torch.optim.Optimizer, a factory params -> Optimizer, "
                            f"or None; got {type(arg).__name__}")
        return build_optimizer(params, cfg)

    def _build_scheduler(self, total_intervals: int | None) -> Any:
        arg, cfg = self.scheduler_arg, self.config
        if arg is None:
            if cfg.scheduler == "none":
                return None
            if cfg.scheduler == "step":
                return torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=cfg.step_size,
                                                       gamma=cfg.gamma)
            if total_intervals is None:
                raise ValueError("scheduler='cosine' needs a known length: give config.steps or a loader "
                                 "with len()")
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(1, total_intervals))
        if hasattr(arg, "step") and hasattr(arg, "state_dict"):
            if getattr(arg, "optimizer", self.optimizer) is not self.optimizer:
                raise ValueError("scheduler drives a different optimizer than the one being trained; pass a "
                                 "factory optimizer -> scheduler instead")
            return arg
        if callable(arg):
            return arg(self.optimizer)
        raise TypeError("scheduler must be an LR scheduler, a factory optimizer -> scheduler, or None; "
                        f"got {type(arg).__name__}")

    # ------------------------------------------------------------------ batches
    def _inputs(self, batch: Any, where: str) -> tuple[Any, ...]:
        if self.inputs_fn is not None:
            inputs = self.inputs_fn(batch)
            if isinstance(inputs, torch.Tensor):
                return (inputs,)
            if not isinstance(inputs, (tuple, list)):
                raise BatchError(f"inputs_fn must return a tuple or list of model inputs (or one tensor), "
                                 f"got {type(inputs).__name__} for {where}")
            return tuple(inputs)
        if not isinstance(batch, (tuple, list)):
            raise BatchError(f"{where}: expected a tuple or list (input_1, ..., input_n, target) so that the "
                             f"model is called as model(*batch[:-1]); got {type(batch).__name__}. "
                             "Pass inputs_fn=... to call the model another way")
        if len(batch) < 2:
            raise BatchError(f"{where}: expected at least 2 elements (input_1, ..., input_n, target), "
                             f"got {len(batch)}")
        return default_inputs(batch)

    def _check_spec(self, batch: Any, where: str) -> None:
        """Every training batch must look like the first: same length, tensor ranks, dtypes and shapes
        (``config.batch_shapes``; see :func:`compresskit.checks.check_batch_consistent`)."""
        if not isinstance(batch, (tuple, list)):
            if isinstance(batch, Mapping | torch.Tensor):  # dict batches: the shapes alone
                if self._batch_shapes is None:
                    self._batch_shapes = batch_spec(batch)
                else:
                    self._check_shapes(batch, where)
            return
        spec = [_describe(x) for x in batch]
        if self._batch_spec is None:
            self._batch_spec = spec
            self._batch_shapes = batch_spec(batch)
            return
        if len(spec) != len(self._batch_spec):
            raise BatchError(f"{where}: expected {len(self._batch_spec)} elements like the first batch "
                             f"({_fmt_spec(self._batch_spec)}), got {len(spec)} ({_fmt_spec(spec)})")
        for i, (want, got) in enumerate(zip(self._batch_spec, spec)):
            if want != got:
                raise BatchError(f"{where}: element {i} should be {_fmt_one(want)} like in the first batch, "
                                 f"got {_fmt_one(got)}")
        self._check_shapes(batch, where)

    def _check_shapes(self, batch: Any, where: str) -> None:
        if self.config.batch_shapes != "off":  # shapes too: a 1-channel target must not broadcast silently
            try:
                check_batch_consistent(batch, self._batch_shapes, where,
                                       spatial=self.config.batch_shapes == "spatial")
            except ValueError as e:
                raise BatchError(str(e)) from None

    def _forward(self, module: nn.Module, batch: Any, where: str
                 ) -> tuple[Any, torch.Tensor, dict[str, float]]:
        inputs = self._inputs(batch, where)
        try:
            output = module(*inputs)
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            shapes = _fmt_spec([_shape(x) for x in inputs])
            raise BatchError(f"{where}: model(*inputs) failed for inputs {shapes}: {e}") from e
        result = self.loss_fn(output, batch)
        loss, parts = _split_loss(result)
        return output, loss, parts

    # ------------------------------------------------------------------ checkpoints
    def _unwrapped(self) -> nn.Module:
        return self.model

    def _state(self, log_len: int, rng: list[Any]) -> dict[str, Any]:
        return {
            "step": self.step, "epoch": self.epoch, "position": self.position,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self._scaler.state_dict() if self._scaler is not None else None,
            "rng": rng, "world_size": self.ctx.world_size,
            "best": self.best, "best_step": self.best_step,
            "callbacks": [cb.state_dict() for cb in self.callbacks],
            "log_len": log_len,
            "config": self.config.model_dump(mode="json"),
        }

    def _save(self) -> None:
        rng = gather_objects(ckpt.rng_state(), self.ctx)  # every rank's generators
        if self.out_dir is not None and self.ctx.is_main:
            try:
                self.last_checkpoint = ckpt.save_checkpoint(self._state(len(self._log), rng), self.out_dir,
                                                            self.step, self.config.keep_last)
            except ckpt.NonFiniteStateError as e:  # never write (or name) a poisoned checkpoint as good
                raise ckpt.NonFiniteStateError(
                    f"{e} at step {self.step}; {self._last_good()}. Lower the learning rate, clip "
                    "gradients (config.grad_clip) or check the data for NaN/inf", e.names) from None
        self._saved_at = (self.step, self.epoch, self.position)

    def _last_good(self) -> str:
        return (f"the last good checkpoint is {str(self.last_checkpoint)!r}" if self.last_checkpoint
                else "no checkpoint was written before it")

    def _restore(self, path: Path) -> None:
        state = ckpt.load_checkpoint(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self._scaler is not None and state["scaler"] is not None:
            self._scaler.load_state_dict(state["scaler"])
        saved, live = state["callbacks"], self.callbacks
        if len(saved) != len(live):  # a stateless one (a progress field) added since: match the others
            saved, live = [s for s in saved if s], [cb for cb in live if cb.state_dict()]
        if len(saved) != len(live):
            raise ValueError(f"checkpoint {str(path)!r} was written with {len(state['callbacks'])} "
                             f"callbacks, this run has {len(self.callbacks)}")
        for cb, cb_state in zip(live, saved):
            cb.load_state_dict(cb_state)
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.best, self.best_step = state["best"], state["best_step"]
        if state["world_size"] == self.ctx.world_size:
            ckpt.set_rng_state(state["rng"][self.ctx.rank])
        else:
            warnings.warn(f"checkpoint written with {state['world_size']} processes, resuming with "
                          f"{self.ctx.world_size}: data order continues, random generators are reseeded",
                          stacklevel=5)
            ckpt.seed_everything(self.config.seed + self.ctx.rank + self.step)
        self._log.truncate(state["log_len"])
        self.last_checkpoint = path
        best = self.out_dir / "best.pt" if self.out_dir is not None else None
        self.best_checkpoint = best if best is not None and best.is_file() else None
        self._saved_at = (self.step, self.epoch, self.position)

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict[str, float]:
        """Mean loss and metrics over ``val_loader`` (weighted by batch size, all ranks together)."""
        if self._val is None:
            raise ValueError("validate() runs during fit() and needs a val_loader")
        module = self._unwrapped()
        cpu_rng = torch.get_rng_state()  # validation must not move the training run's random streams
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        names = ["val_loss", *self.metrics]
        sums = torch.zeros(len(names) + 1, dtype=torch.float64)
        try:
            with eval_mode(module), torch.no_grad(), self._autocast():
                for i, batch in enumerate(self._val.batches(0)):
                    batch = to_device(batch, self.device)
                    output, loss, _ = self._forward(module, batch, f"val_loader batch {i}")
                    n = _batch_size(batch)
                    sums[0] += float(loss) * n
                    for j, fn in enumerate(self.metrics.values(), start=1):
                        sums[j] += float(fn(output, batch)) * n
                    sums[-1] += n
        finally:
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
        sums = all_reduce_sum(sums, self.ctx)
        if sums[-1] == 0:
            raise ValueError("val_loader yielded no batches")
        return {name: float(sums[k] / sums[-1]) for k, name in enumerate(names)}

    def _run_validation(self) -> None:
        values = self.validate()
        monitor = self.config.monitor
        if monitor not in values:
            raise ValueError(f"config.monitor={monitor!r} is not among the validation values "
                             f"{sorted(values)}")
        value = values[monitor]
        better = self.best is None or (value < self.best if self.config.mode == "min" else value > self.best)
        if better and math.isfinite(value):
            self.best, self.best_step = value, self.step
            if self.out_dir is not None and self.ctx.is_main:
                self.best_checkpoint = atomic_torch_save(
                    {"format": ckpt.FORMAT, "model": self.model.state_dict(), "step": self.step,
                     "monitor": monitor, "value": value}, self.out_dir / "best.pt")
        self._log.append({"kind": "val", "step": self.step, "epoch": self.epoch, **values,
                          "best": self.best, "best_step": self.best_step})
        for cb in self.callbacks:
            cb.on_validation_end(self, values)

    # ------------------------------------------------------------------ the loop
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.amp == "none" or self.device.type != "cuda":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.amp == "bf16" else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)

    def log(self, name: str, value: float) -> None:
        """Add a value to the next train record of metrics.jsonl (averaged over the logging window)."""
        self._pending_logs.setdefault(name, []).append(float(value))

    def fit(self) -> TrainResult:
        """Train; the output folder is locked for the run (:mod:`compresskit.lock`).

        The run is four named steps: :meth:`_setup` (device, optimizer, loaders, schedule, resume),
        :meth:`_epoch` (micro-batches and optimizer steps, each followed by :meth:`_after_step`:
        logs, validation, checkpoints), :meth:`_end_epoch`, and :meth:`_finish` (best weights, result).
        """
        from compresskit.lock import folder_lock

        main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 writes (and locks)
        folder = self.out_dir if main else None
        with folder_lock(folder, self.config.wait_for_lock, "ck.train"):
            return self._fit()

    def _fit(self) -> TrainResult:
        length = self._setup()
        module = self._start()
        enabled = self.config.progress and self.ctx.is_main
        self._bar = ProgressBar(length.total, enabled=enabled, description=self.stage)
        self._bar.start(self.step)
        log_txt = self.out_dir / "log.txt" if self.out_dir is not None and self.ctx.is_main else None
        self._lines = ProgressLines(length.total, stage=self.stage, every=self.config.progress_every,
                                    enabled=enabled, log_path=log_txt)
        self._lines.start(self.step)
        self._last_loss: float | None = None
        self._t_last = time.perf_counter()
        self._window: list[float] = []
        try:
            while not self._done(length):
                if self._epoch(module, length):
                    break
            if self._window:
                self._log_train(self._window, time.perf_counter() - self._t_last)
            if self._saved_at != (self.step, self.epoch, self.position):
                self._save()
        except BaseException as e:
            self._bar.close()  # the bar's last frame before the line saying why the run stopped
            self._lines.fail(self.step, e)
            raise
        finally:
            self._bar.close()
        return self._finish()

    # ------------------------------------------------------------------ fit, step by step
    def _setup(self) -> _Length:
        """Device, optimizer, scaler, loaders, schedule and the run's length; then resume or start fresh."""
        cfg = self.config
        self.ctx = setup(cfg.backend)
        self.device = self._resolve_device()
        if cfg.amp != "none" and self.device.type != "cuda":
            warnings.warn(f"config.amp={cfg.amp!r} only applies on a CUDA device; training on "
                          f"{self.device.type} in full precision", stacklevel=3)
        self.model.to(self.device)
        self.optimizer = self._build_optimizer()
        self._scaler = (torch.amp.GradScaler("cuda") if cfg.amp == "fp16" and self.device.type == "cuda"
                        else None)
        self._train = EpochLoader(self.train_loader, ctx=self.ctx, seed=cfg.seed, name="train_loader")
        self._val = (EpochLoader(self.val_loader, ctx=self.ctx, seed=cfg.seed, name="val_loader")
                     if self.val_loader is not None else None)
        length = _Length.of(cfg, self._train.batches_per_epoch())
        self.scheduler = self._build_scheduler(length.intervals(cfg.scheduler_interval))
        self._resume_or_start()
        return length

    def _resume_or_start(self) -> None:
        """Restore the newest good checkpoint, or seed a fresh run (clearing an earlier run's checkpoints)."""
        cfg = self.config
        writes = self.out_dir is not None and self.ctx.is_main
        self._log = MetricsLog(self.out_dir / "metrics.jsonl" if writes else None)
        self._saved_at: tuple[int, int, int] | None = None
        if writes:  # half-written temp files of a killed run
            remove_stale_temps(self.out_dir)
        resume = self.out_dir is not None and self.resume
        latest = ckpt.latest_good_checkpoint(self.out_dir) if resume else None
        if latest is not None:
            self._restore(latest)
        else:
            self._log.truncate(0)
            ckpt.seed_everything(cfg.seed + self.ctx.rank)
            if writes:  # a fresh start in a used folder: older checkpoints would pass for newer ones
                stale = [*ckpt.list_checkpoints(self.out_dir), self.out_dir / "best.pt"]
                stale = [p for p in stale if p.is_file()]
                if stale:
                    warnings.warn(f"resume=False: removing {len(stale)} checkpoint(s) of an earlier run in "
                                  f"{str(self.out_dir)!r}", stacklevel=4)
                for p in stale:
                    p.unlink()
        if writes:
            cfg.dump(self.out_dir / "config.json")

    def _start(self) -> nn.Module:
        """The module the steps run (DDP-wrapped under torchrun), in train mode; callbacks told."""
        module: nn.Module = self.model
        if self.ctx.distributed:
            module = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.config.find_unused_parameters)
        self.model.train()
        for cb in self.callbacks:
            cb.on_train_start(self)
        return module

    def _done(self, length: _Length) -> bool:
        return self.should_stop or (length.max_steps is not None and self.step >= length.max_steps) or (
            length.epochs is not None and self.epoch >= length.epochs)

    def _epoch(self, module: nn.Module, length: _Length) -> bool:
        """One pass over the rest of the current epoch; True when the run ended inside it."""
        cfg, n_batches = self.config, length.n_batches
        seen_any = self.position > 0
        group: list[tuple[torch.Tensor, dict[str, float]]] = []
        for batch in self._train.batches(self.epoch, self.position):
            where = f"train_loader batch {self.position} of epoch {self.epoch}"
            seen_any = True
            self._check_spec(batch, where)
            batch = to_device(batch, self.device)
            group_start = self.position - len(group)
            group_size = (min(cfg.grad_accum, n_batches - group_start) if n_batches is not None
                          else cfg.grad_accum)
            last_micro = len(group) + 1 == group_size
            group.append(self._micro_batch(module, batch, where, group_size, last_micro))
            if last_micro:
                self._stepped(self._optimizer_step(group, where))
                group = []
                if self._after_step(length):
                    return True
        if not seen_any:
            raise ValueError(f"train_loader yielded no batches in epoch {self.epoch}")
        if group:  # loaders without len(): the epoch's last, partial accumulation group
            self._stepped(self._optimizer_step(group, f"end of epoch {self.epoch}"))
            self._show()
        self._end_epoch()
        return False

    def _micro_batch(self, module: nn.Module, batch: Any, where: str, group_size: int, last_micro: bool
                     ) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward and backward of one micro-batch (DDP syncs gradients on its group's last); its loss."""
        sync = module.no_sync() if self.ctx.distributed and not last_micro else contextlib.nullcontext()
        with sync:
            with self._autocast():
                output, loss, parts = self._forward(module, batch, where)
            _check_scalar(loss, where)
            scaled = loss.float() / group_size
            (self._scaler.scale(scaled) if self._scaler is not None else scaled).backward()
        self.position += 1
        self.last_output, self.last_batch = output, batch
        return loss.detach().float(), parts

    def _stepped(self, loss: float) -> None:
        self._last_loss = loss
        self._window.append(loss)

    def _show(self) -> None:
        self._bar.update(self.step, self._last_loss)
        self._lines.update(self.step, self._last_loss, self._progress_fields)

    def _after_step(self, length: _Length) -> bool:
        """Log, show, validate and checkpoint on their cadences; True when the run ends here."""
        cfg = self.config
        last_step = length.max_steps is not None and self.step >= length.max_steps
        if self.step % cfg.log_every == 0 or last_step:
            now = time.perf_counter()
            self._log_train(self._window, now - self._t_last)
            self._window, self._t_last = [], now
        self._show()
        if cfg.val_every is not None and self.step % cfg.val_every == 0 and self._val is not None:
            self._run_validation()
        if cfg.checkpoint_every is not None and self.step % cfg.checkpoint_every == 0:
            self._save()
        return self.should_stop or last_step

    def _end_epoch(self) -> None:
        cfg = self.config
        if self.scheduler is not None and cfg.scheduler_interval == "epoch":
            self.scheduler.step()
        self.epoch += 1
        self.position = 0
        if cfg.val_every is None and self._val is not None:
            self._run_validation()
        if cfg.checkpoint_every is None:
            self._save()

    def _finish(self) -> TrainResult:
        """The closing progress line, the best weights when asked, callbacks told, the result."""
        self._lines.close(self.step, self._last_loss, self._progress_fields)
        if self.config.load_best and self.best_checkpoint is not None:
            best = torch.load(self.best_checkpoint, map_location=self.device, weights_only=True)
            self.model.load_state_dict(best["model"])
        for cb in self.callbacks:
            cb.on_train_end(self)
        return TrainResult(model=self.model, step=self.step, epoch=self.epoch, loss=self._last_loss,
                           best=self.best, best_step=self.best_step, history=list(self._log.records),
                           out_dir=self.out_dir, last_checkpoint=self.last_checkpoint,
                           best_checkpoint=self.best_checkpoint)

    def _progress_fields(self) -> dict[str, float]:
        """What the callbacks add to the plain progress lines (a sparsifier's density, ...)."""
        out: dict[str, float] = {}
        for cb in self.callbacks:
            out.update(cb.progress_fields(self))
        return out

    def _optimizer_step(self, group: list[tuple[torch.Tensor, dict[str, float]]], where: str) -> float:
        cfg = self.config
        local = torch.stack([loss for loss, _ in group]).mean().cpu()
        mean_loss = float(all_reduce_mean(local.to(self.device), self.ctx))
        if not math.isfinite(mean_loss):
            self.optimizer.zero_grad(set_to_none=True)
            kept = (f"the last good checkpoint is {str(self.last_checkpoint)!r}" if self.last_checkpoint
                    else "no checkpoint was written before it")
            raise NonFiniteLossError(
                f"loss is {mean_loss} at step {self.step + 1} ({where}); training stopped before this step "
                f"changed the weights, {kept}. Lower the learning rate, clip gradients (config.grad_clip) "
                "or check the data for NaN/inf")
        if self._scaler is None:  # (AMP's scaler skips steps with inf gradients itself)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            bad = ckpt.nonfinite_grads(params)
            if bad:
                self.optimizer.zero_grad(set_to_none=True)
                names = {id(p): n for n, p in self._unwrapped().named_parameters()}
                shown = ", ".join(names.get(id(params[i]), f"parameter {i}") for i in bad[:4])
                raise NonFiniteLossError(
                    f"the gradient of {len(bad)} parameter(s) ({shown}) is NaN/inf at step {self.step + 1} "
                    f"({where}) although the loss is finite ({mean_loss:.6g}); training stopped before this "
                    f"step changed the weights, {self._last_good()}. Lower the learning rate, clip "
                    "gradients (config.grad_clip) or check the data and the loss for NaN/inf")
        for _, parts in group:
            for name, value in parts.items():
                self.log(name, value)
        if cfg.grad_clip is not None:
            if self._scaler is not None:
                self._scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        if self._scaler is not None:
            self._scaler.step(self.optimizer)
            self._scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.scheduler is not None and cfg.scheduler_interval == "step":
            self.scheduler.step()
        for cb in self.callbacks:
            cb.on_step_end(self)
        return mean_loss

    def _log_train(self, window: list[float], seconds: float) -> None:
        extra = {k: sum(v) / len(v) for k, v in self._pending_logs.items() if v}
        self._pending_logs = {}
        self._log.append({"kind": "train", "step": self.step, "epoch": self.epoch,
                          "loss": sum(window) / len(window), "lr": self.optimizer.param_groups[0]["lr"],
                          "steps_per_s": len(window) / seconds if seconds > 0 else None, **extra})


def train(model: nn.Module, train_loader: Iterable[Any], loss_fn: LossFn, *, optimizer: Any = None,
          scheduler: Any = None, config: TrainConfig | None = None, val_loader: Iterable[Any] | None = None,
          metrics: Mapping[str, Callable[[Any, Any], Any]] | None = None,
          inputs_fn: Callable[[Any], Sequence[Any]] | None = None, out_dir: str | os.PathLike | None = None,
          resume: bool = True, callbacks: Sequence[Callback] = (), stage: str = "train") -> TrainResult:
    """Train ``model`` on ``train_loader`` minimising ``loss_fn(model(*inputs_fn(batch)), batch)``.

    See :class:`Trainer` and :class:`compresskit.TrainConfig`; with ``out_dir`` the run writes
    ``config.json``, ``metrics.jsonl``, ``log.txt`` (the progress lines), ``ckpt-step*.pt`` and ``best.pt``
    there, and ``resume=True`` continues exactly from the newest checkpoint found. ``stage`` names the run
    in the progress bar and lines (``"sparsify"``, ``"distill"``).
    """
    return Trainer(model, train_loader, loss_fn, optimizer=optimizer, scheduler=scheduler, config=config,
                   val_loader=val_loader, metrics=metrics, inputs_fn=inputs_fn, out_dir=out_dir,
                   resume=resume, callbacks=callbacks, stage=stage).fit()


# ---------------------------------------------------------------------- helpers
def _split_loss(result: Any) -> tuple[torch.Tensor, dict[str, float]]:
    if isinstance(result, Mapping):
        if "loss" not in result:
            raise TypeError("loss_fn returned a mapping without a 'loss' entry")
        parts = {k: float(v) for k, v in result.items() if k != "loss"}
        return result["loss"], parts
    return result, {}


def _check_scalar(loss: Any, where: str) -> None:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        got = (f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor)
               else type(loss).__name__)
        raise TypeError(f"loss_fn must return a scalar tensor (or a mapping with 'loss'), got {got} "
                        f"at {where}")
    if not loss.requires_grad:
        raise ValueError(f"the loss does not depend on any trainable parameter at {where} (requires_grad is "
                         "False): does loss_fn detach the output or use torch.no_grad()?")


def _batch_size(batch: Any) -> int:
    items = batch if isinstance(batch, (tuple, list)) else [batch]
    for x in items:
        if isinstance(x, torch.Tensor) and x.dim() > 0:
            return int(x.shape[0])
    return 1


def _describe(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return ("tensor", x.dim(), str(x.dtype).replace("torch.", ""))
    return (type(x).__name__,)


def _shape(x: Any) -> Any:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _fmt_one(spec: Any) -> str:
    if spec[0] == "tensor":
        return f"a {spec[1]}-d {spec[2]} tensor"
    return f"a {spec[0]}"


def _fmt_spec(spec: list[Any]) -> str:
    return ", ".join(_fmt_one(s) if isinstance(s, tuple) and s and s[0] == "tensor" else str(s) for s in spec)
