"""Pydantic configuration for every stage; loads from and dumps to YAML or JSON.

Every run writes its resolved config next to its outputs (``Config.dump``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import Field, field_serializer, field_validator, model_validator

# the configs' base and the trainer's settings, re-exported: compresskit.config.TrainConfig is public
from compresskit._config import (  # noqa: F401
    RUN_WIDE,
    Config,
    Interval,
    Optimizer,
    Scheduler,
    StepConfig,
    TrainConfig,
    _default,
)
from compresskit.target import Target


def _strategy_name(value: Any) -> Any:
    """How a strategy field dumps: a name as is, an object by its ``name`` (else its class)."""
    if value is None or isinstance(value, str):
        return value
    from compresskit._registry import describe

    return getattr(value, "name", None) or describe(type(value))


def _check_strategy(value: Any, field: str, registry: Any, needs: tuple[str, ...], how: str) -> Any:
    """A name registered in ``registry`` (the plugins' names included) or an object with ``needs``;
    anything else is a ValueError naming the field, the registered names and how to add one."""
    what = registry.kind
    if value is None or (isinstance(value, str) and value in registry):
        return value
    if isinstance(value, str) and value:
        raise ValueError(f"{field}: unknown {what} {value!r}; registered: "
                         f"{', '.join(map(repr, registry.names()))} ({how} adds one)")
    missing = [n for n in needs if not callable(getattr(value, n, None))]
    if isinstance(value, str) or missing:
        raise ValueError(f"{field}: expected the name of a registered {what} or an object with "
                         f"{', '.join(needs)}, got {value!r}")
    return value


class FeaturePair(Config):
    """One feature-distillation pair: student module path → teacher module path."""

    student: str = Field(..., description="dotted module path in the student, e.g. 'encoder.conv3'")
    teacher: str = Field(..., description="dotted module path in the teacher")
    weight: float = Field(1.0, ge=0, description="weight of this pair's loss")
    loss: str = Field("mse", description="registered loss comparing adapted student and teacher features")


class DistillTerms(Config):
    """The distillation objective ``α·L_student(S, GT) + distill_loss(S, T) + feature terms``, declared
    once: :class:`DistillConfig` (``ck.distill``) takes it with ST-MFNet Mini's defaults (α 0.1, the
    Laplacian pyramid loss), :class:`RecoverConfig` (``compress()``'s stage IV) with the recovery
    recipe's (α 0.5, L1, light automatic features). Each default is measured where it is used:
    benchmarks/distill_vs_gt.py for ``ck.distill``'s, benchmarks/compress_targets.py for recovery's
    (docs/distillation.md, "What compress() does by default, and why").
    """

    alpha: float = Field(0.1, ge=0, description="weight α of the ground-truth term")
    distill_loss: str = Field(
        "laplacian", min_length=1, description="registered loss between student and teacher outputs "
        "(ck.list_losses(); the papers: 'laplacian')")
    features: Literal["auto"] | list[FeaturePair] | None = Field(
        default_factory=list, description="intermediate features to distil (1x1 adapters bridge widths): "
        "explicit pairs, 'auto' (the last layer of each block, paired by module name; see "
        "compresskit.distillation.features.auto_feature_pairs), or None / [] (none)")
    feature_weight: float = Field(
        1.0, ge=0, description="weight of the feature terms (features='auto': their total; each pair's MSE "
        "is divided by its teacher feature's mean square, then by the number of pairs)")
    early_stop_patience: int | None = Field(
        None, ge=1, description="stop after this many validations without improvement of `monitor` and "
        "restore the best weights (needs a val_loader)")


class DistillConfig(TrainConfig, DistillTerms):
    """Settings of :func:`compresskit.distill`: ``L = α·L_student(S, GT) + L_distill(S, T)``.

    Defaults are ST-MFNet Mini's: α = 0.1 and the Laplacian pyramid loss for both terms
    (:class:`DistillTerms`); the learning rate follows a cosine schedule over the run's steps
    (``scheduler="step"`` for the papers' StepLR).
    """

    scheduler: Scheduler = _default(TrainConfig, "scheduler", "cosine")
    scheduler_interval: Interval = _default(TrainConfig, "scheduler_interval", "step")
    student_loss: str = Field("laplacian", description="registered loss of the student vs ground truth")
    loss_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of both registered losses")
    cache_teacher: bool = Field(
        False, description="run the teacher once over a fixed (non-augmented) dataset and reuse its outputs")
    cache_dir: Path | None = Field(None, description="where teacher outputs are cached (None: out_dir/cache)")

    @field_validator("features")
    @classmethod
    def _no_features(cls, value: Any) -> Any:
        return [] if value is None else value


T = TypeVar("T", bound=TrainConfig)


class StageTrainConfig(StepConfig):
    """A training stage of ``compress()``: :class:`StepConfig` plus its steps and its learning rate
    (``"auto"``: a probe picks it). The run-wide settings (:data:`RUN_WIDE`) come from
    :class:`CompressConfig`; :meth:`train_config` joins the two."""

    #: StepConfig fields the stage's first config did not have: left at their defaults they stay out of
    #: :meth:`fingerprint`, so runs from before resume without redoing the stage
    _added: ClassVar[tuple[str, ...]] = ()

    steps: int = Field(300, ge=0, description="training steps of the stage (0 skips it); set by compress()'s "
                       "budget unless given here")
    lr: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        "auto", description="learning rate, or 'auto': chosen by a short probe on held-out batches "
        "(compresskit.training.lr_probe)")

    def train_config(self, run: TrainConfig, cls: type[T] = TrainConfig, **values: Any) -> T:
        """``cls`` for this stage: the settings ``run`` was given (the run-wide ones), this config's
        training settings over them (None: the default), then ``values`` (what the stage resolved)."""
        mine = {k: getattr(self, k) for k in type(self).model_fields
                if k in cls.model_fields and getattr(self, k) is not None}
        return cls(**{**run.model_dump(exclude_unset=True), **mine, **values})

    def fingerprint(self) -> dict[str, Any]:
        """``model_dump(mode="json")`` less the :attr:`_added` settings left at their defaults."""
        data = self.model_dump(mode="json")
        defaults = type(self).model_construct().model_dump(mode="json")
        return {k: v for k, v in data.items() if k not in self._added or v != defaults[k]}


#: SparsifyConfig settings that only OBProx-SG reads; giving one with method="progressive" is an error
_OBPROXSG_ONLY = ("growth", "zero_tol", "kept_floor", "eps", "n_prox_steps", "n_orthant_steps", "l1_on")
#: settings of the default optimizer; OBProx-SG is the optimizer of method="obproxsg" (an error there)
_OPTIMIZER_ONLY = ("optimizer", "betas", "momentum", "weight_decay")


class SparsifyConfig(StageTrainConfig):
    """Stage I: train so that the units the plan removes carry no weight when they go; no λ to tune.

    ``method="progressive"`` (default; target sparsity in the spirit of HESSO): the plan for the current
    weights names the units to remove (recomputed every ``calibrate_every`` steps), their slices are
    scaled to exactly zero by ``ramp`` of the steps while the whole model trains on the loss (Adamax,
    ``lr``), so the rest takes over their work before the surgery.

    ``method="obproxsg"`` (the papers' l1 training): with ``lambda_="auto"`` λ starts at
    ``λ0 = q(|w|, f) / (lr · steps)`` (OBProx-SG moves a weight by about ``lr·λ`` per step, so the
    weights below the ``f``-quantile, ``f`` the fraction of units the target removes, can reach zero
    within the budget); every ``calibrate_every`` steps it multiplies λ by ``growth`` while the l1 mass
    of the units the plan would remove falls more slowly than a schedule reaching ``1 − zero_tol`` gone
    at ``ramp`` of the steps, and divides it when ahead or when the units the plan keeps fall below
    ``kept_floor`` of their mass (dual ascent, as CoFi does on its cost). A number fixes λ (the papers'
    expert knob); with no ``method`` a number selects ``"obproxsg"`` and ``"auto"`` selects
    ``"progressive"`` (also on assignment); a number, or another OBProx-SG-only setting, with
    ``method="progressive"`` is a ValueError. The training settings are :class:`StepConfig`'s
    (``optimizer``, ``grad_clip``, ``amp``, ...; the optimizer's only with ``method="progressive"``).
    """

    _added = tuple(k for k in StepConfig.model_fields if k != "lr")

    method: Any = Field(
        None, description="'obproxsg': l1 training (λ auto or fixed); 'progressive': the units the "
        "plan removes are scaled to zero on a schedule while the rest trains (HESSO-like, no λ); "
        "another name registered with ck.register_sparsifier, or a Sparsifier object; "
        "None: 'obproxsg' when lambda_ is a number, else 'progressive'")
    scheduler: Scheduler | None = Field(
        None, description="LR schedule (None: the method's own; 'none' for progressive, the papers' StepLR "
        "for obproxsg)")
    lambda_: Annotated[float, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="l1 strength λ of OBProx-SG, or 'auto' to calibrate it from the target")
    growth: float = Field(1.25, gt=1, description="auto-λ: factor applied per calibration when off schedule")
    calibrate_every: int | None = Field(
        None, ge=1, description="auto-λ: steps between calibrations (None: steps // 10, at least 1)")
    ramp: float = Field(0.75, gt=0, le=1, description="auto-λ: fraction of the steps by which the target "
                        "fraction of units should be heading to zero")
    zero_tol: float = Field(0.05, gt=0, lt=1, description="auto-λ: the removed units should keep at most "
                            "this fraction of their initial l1 mass")
    kept_floor: float = Field(0.85, gt=0, le=1, description="auto-λ: λ backs off when the units the plan "
                              "keeps fall below this fraction of their initial l1 mass")
    eps: float = Field(0.0, ge=0, description="OBProx-SG orthant threshold: entries at or below it become 0")
    n_prox_steps: int | None = Field(
        None, ge=0, description="Prox-SG steps before orthant steps (None: Prox-SG for ever)")
    n_orthant_steps: int | None = Field(
        None, ge=1, description="orthant steps before returning to Prox-SG steps (None: for ever)")
    l1_on: Literal["weights", "all"] = Field(
        "weights", description="l1 on 'weights' (biases and norms exempt) or on 'all' parameters (papers)")

    @field_validator("method")
    @classmethod
    def _method(cls, value: Any) -> Any:
        from compresskit.sparsify.auto import SPARSIFIERS

        return _check_strategy(value, "sparsify.method", SPARSIFIERS, ("run", "fingerprint"),
                               "ck.register_sparsifier")

    @field_serializer("method")
    def _dump_method(self, value: Any) -> Any:
        return _strategy_name(value)

    @model_validator(mode="after")
    def _resolve_method(self) -> SparsifyConfig:
        # a method not named by the user follows λ (also after ``cfg.lambda_ = 1e-4``); a named one must agree
        if "method" not in self.model_fields_set or self.method is None:
            # set without validate_assignment (which would re-enter this validator) and without marking
            # the field as given, so a later λ still decides
            self.__dict__["method"] = "progressive" if self.lambda_ == "auto" else "obproxsg"
        elif self.method == "progressive":
            given = [k for k in _OBPROXSG_ONLY  # a dump holds every default: only other values count
                     if getattr(self, k) != type(self).model_fields[k].default]
            if self.lambda_ != "auto":
                given.insert(0, "lambda_")
            if given:
                raise ValueError(f"method='progressive' uses no l1 penalty, but {', '.join(given)} "
                                 f"(OBProx-SG settings) {'is' if len(given) == 1 else 'are'} set: "
                                 "use method='obproxsg', or drop them")
        if self.method == "obproxsg":
            given = [k for k in _OPTIMIZER_ONLY if getattr(self, k) != type(self).model_fields[k].default]
            if given:
                raise ValueError(f"method='obproxsg' trains with OBProx-SG, but {', '.join(given)} (settings "
                                 f"of the default optimizer) {'is' if len(given) == 1 else 'are'} set: use "
                                 "method='progressive', or drop them")
        if self.n_orthant_steps is not None and self.n_prox_steps is None:
            raise ValueError("n_orthant_steps is set but n_prox_steps is None (Prox-SG for ever): "
                             "give n_prox_steps too, or leave n_orthant_steps None")
        return self


class PlanConfig(Config):
    """Stage II: the widths. ``rule="target"`` (default) ranks every unit of every prunable group by
    ``importance`` (default: first-order Taylor on the loss) per unit of marginal cost and removes the
    cheapest-to-lose until the target is met, then shrinks and counts to verify. ``"linear"``/``"sqrt"``
    are the papers' density rules (``ck.plan_widths``; the target is then only reported)."""

    rule: Literal["target", "linear", "sqrt"] = Field(
        "target", description="'target': meet the target; 'linear'/'sqrt': the papers' density rules")
    importance: Any = Field(
        "taylor", description="unit importance: 'taylor' (first-order Taylor Σ|w|·E|∂L/∂w| on the loss, "
        "gathered while stage I trains; measured best, benchmarks/importance_compare.py), 'l1' (l1 mass of "
        "its slices), 'density' (their density), another name registered with ck.register_importance, or "
        "an Importance object")
    min_width: int = Field(1, ge=1, description="no group shrinks below this many units")
    min_keep: Annotated[float, Field(ge=0, lt=1)] | Literal["auto"] = Field(
        "auto", description="target plans: no group keeps less than this fraction of its units; 'auto': "
        "half the width that thinning every group alike would keep, 1/(2·√r) for a target of r× (the "
        "largest ratio of its parts), else its half, its quarter or none: the first whose plan meets the "
        "target within 5 %, else the closest that meets it (resolved once per run); 0: no floor")
    round_to: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="widths (in channels) are multiples of this; 'auto': 8 on CUDA, 1 on CPU")
    coupling: Literal["max", "min", "mean"] = Field(
        "max", description="density rules: one width for a group shared by several layers")
    verify: bool = Field(True, description="shrink and count (or time) the planned model; correct if off")
    latency_repeats: int = Field(5, ge=1, description="timed runs per latency check of a latency target")

    @field_validator("importance")
    @classmethod
    def _importance(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("plan.importance: expected the name of a registered importance or an "
                             "Importance object, got None")
        from compresskit.plan.importance import IMPORTANCES

        return _check_strategy(value, "plan.importance", IMPORTANCES, ("__call__",), "ck.register_importance")

    @field_serializer("importance")
    def _dump_importance(self, value: Any) -> Any:
        return _strategy_name(value)


class ShrinkConfig(Config):
    """Stage III: the surgery."""

    init: Literal["inherit", "reinit"] = Field(
        "inherit", description="'inherit': copy the kept channels' weights; 'reinit': fresh initialisation")
    drop_unused: bool = Field(
        False, description="remove the parameters the traced forward never reads (found when tracing, "
        "named in the report) from the result and from the counts; False keeps them (they count)")


class RecoverConfig(StageTrainConfig, DistillTerms):
    """Stage IV: win the quality back by distilling from the teacher (default: the original, frozen):
    ``L = α·loss(S, batch) + distill_loss(S, T) + feature_weight·Σ feature terms``.

    The objective is :class:`DistillTerms` with the stage's defaults (α 0.5, features "auto", feature
    weight 0.05: the benchmark's best recipe, docs/distillation.md); the training settings are
    :class:`StepConfig`'s (``optimizer``, ``grad_clip``, ``amp``, ...) with a cosine schedule per step."""

    _added = tuple(k for k in StepConfig.model_fields if k not in ("lr", "scheduler"))

    scheduler: Scheduler = _default(StepConfig, "scheduler", "cosine")
    scheduler_interval: Interval = _default(StepConfig, "scheduler_interval", "step")
    teacher: Literal["original", "none"] = Field(
        "original", description="without teacher=: distil from the original model, or 'none' (plain "
        "fine-tuning on the loss)")
    alpha: float = _default(DistillTerms, "alpha", 0.5)
    distill_loss: str = _default(DistillTerms, "distill_loss", "l1")
    features: Literal["auto"] | list[FeaturePair] | None = _default(DistillTerms, "features", "auto")
    feature_weight: float = _default(DistillTerms, "feature_weight", 0.05)
    val_every: int | None = _default(TrainConfig, "val_every", None)


#: flat keys of the first CompressConfig → (sub-config, field); still accepted, with a FutureWarning
_LEGACY = {
    "sparsify_steps": ("sparsify", "steps"), "lambda_": ("sparsify", "lambda_"), "lr": ("sparsify", "lr"),
    "eps": ("sparsify", "eps"), "n_prox_steps": ("sparsify", "n_prox_steps"),
    "n_orthant_steps": ("sparsify", "n_orthant_steps"), "l1_on": ("sparsify", "l1_on"),
    "width_rule": ("plan", "rule"), "coupling": ("plan", "coupling"), "min_width": ("plan", "min_width"),
    "divisor": ("plan", "round_to"), "init": ("shrink", "init"), "finetune_steps": ("recover", "steps"),
    "finetune_lr": ("recover", "lr"), "distill_alpha": ("recover", "alpha"),
    "distill_loss": ("recover", "distill_loss"),
}


class CompressConfig(Config):
    """Every knob of :func:`compresskit.compress`, one sub-model per stage::

        CompressConfig(target="4x params", sparsify=SparsifyConfig(steps=300), plan=PlanConfig(...),
                       shrink=ShrinkConfig(...), recover=RecoverConfig(steps=300), out_dir="run")

    Each sub-model's ``model_dump()`` is its stage's fingerprint: changing it redoes that stage and the
    ones after it. Mappings work for the sub-models (``sparsify={"steps": 100}``). The flat keys of the
    first version (``sparsify_steps``, ``lambda_``, ``finetune_steps``, ...) are still read, with a
    FutureWarning.
    """

    target: Target | None = Field(
        None, description="what to reach, e.g. '4x params', '50% macs', '2x latency' (None: "
        "compress()'s target= argument, else the default '2x macs')")
    sparsify: SparsifyConfig = Field(default_factory=SparsifyConfig, description="stage I")
    plan: PlanConfig = Field(default_factory=PlanConfig, description="stage II")
    shrink: ShrinkConfig = Field(default_factory=ShrinkConfig, description="stage III")
    recover: RecoverConfig = Field(default_factory=RecoverConfig, description="stage IV")
    # bookkeeping
    out_dir: Path | None = Field(
        None, description="folder for stage checkpoints, config and report (None: nothing is written)")
    resume: bool = Field(True, description="continue from the checkpoints found in out_dir")
    wait_for_lock: float = Field(
        0.0, ge=0, description="seconds to wait while another live run holds out_dir (0: fail at once)")
    seed: int = Field(0, ge=0, description="seed of every random choice (data order, reinit)")
    checkpoint_every: int = Field(50, ge=1, description="training steps between checkpoints")
    eval_batches: int | None = Field(
        None, ge=1, description="validation batches used for metrics before/after (None: all)")
    measure_latency: bool = Field(True, description="measure latency before and after")
    latency_repeats: int = Field(10, ge=1, description="timed forward passes per latency measurement")
    latency_runtimes: str | list[str] = Field(
        "auto", description="where latency is measured: 'auto' (eager NCHW, eager channels-last, and ONNX "
        "Runtime when the [onnx] extra is installed) or a list of 'eager', 'channels_last', "
        "'onnxruntime'; the report uses each model's fastest and shows the others "
        "(compresskit.deploy.runtime)")
    progress: bool = Field(True, description="show progress and the report")
    budget: str | None = Field(
        None, description="what the run may spend: '30min', '2h', '2000 steps', '3 epochs' (None: "
        "compress()'s budget= argument, else the steps given in sparsify/recover, else "
        "compresskit.budget.DEFAULT_BUDGET); see compresskit.budget")
    holdout: float = Field(
        0.1, ge=0, lt=1, description="with a budget and no val_loader: the fraction of the training data "
        "held out for validation (never trained on; 0: none, no best-weight selection)")
    batch_shapes: Literal["same", "spatial", "off"] = Field(
        "same", description="training batches keep the first one's shapes except the batch size ('same'), "
        "may change their spatial sizes too ('spatial', fully convolutional models), or are not checked "
        "('off'); passed to every training stage (TrainConfig.batch_shapes)")

    @field_validator("budget")
    @classmethod
    def _check_budget(cls, value: str | None) -> str | None:
        if value is not None:
            from compresskit.budget import parse_budget  # here: compresskit.budget imports the train loop

            parse_budget(value)  # ValueError naming 'budget' and the forms it takes
        return value

    @model_validator(mode="before")
    @classmethod
    def _legacy_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not any(k in _LEGACY for k in data):
            return data
        import warnings

        data = dict(data)
        moved = []
        for key in [k for k in data if k in _LEGACY]:
            section, name = _LEGACY[key]
            sub = data.get(section)
            # only what was given: a resolved default (sparsify.method) must not pin the flat key's stage
            sub = dict(sub) if isinstance(sub, dict) else (sub.model_dump(exclude_unset=True)
                                                           if isinstance(sub, Config) else {})
            sub[name] = data.pop(key)
            data[section] = sub
            moved.append(f"{key} → {section}.{name}")
        warnings.warn("CompressConfig: flat keys are deprecated, use the stage sub-configs: "
                      + ", ".join(moved), FutureWarning, stacklevel=2)
        return data
