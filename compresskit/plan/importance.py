"""How much each unit of each prunable channel group matters: the :class:`Importance` protocol.

An importance maps ``(model, graph)`` to ``{group id: float64 tensor of length group.size}``; larger
means keep. The target planner removes the units with the lowest importance per unit of cost, and the
surgery keeps the highest-ranked ones, so one criterion decides both *how many* and *which*.

- :class:`TaylorImportance` (default, data-driven): the first-order Taylor estimate of the loss change
  when a unit is removed, ``Σ_i |w_i| · E|∂L/∂w_i|`` over the unit's entries (Molchanov et al. 2019,
  "Importance Estimation for Neural Network Pruning"), the gradients taken on the user's loss while
  stage I trains. It kept the most quality on the pretrained VFI teachers of the benchmarks
  (``benchmarks/importance_compare.py``, docs/sparsify.md).
- :class:`FisherImportance` (data-driven): ``E[(Σ_i w_i · ∂L/∂w_i)²]``, the group Taylor (Fisher) form.
- :class:`L1Importance`: the l1 mass of the unit's slices in every member tensor (rows of the producing
  weights, columns of the consuming ones, biases, norm scales), divided by the group's mean unit mass so
  that groups of different scale compare (an average unit scores 1, a zeroed unit 0).
- :class:`DensityImportance`: the fraction of non-zero entries in the unit's slices (already in [0, 1]);
  l1 mass breaks ties.

Criteria are looked up by name in :data:`IMPORTANCES` (``PlanConfig(importance="taylor")``); a new one
is one class plus ``@ck.register_importance("name")``. An object with ``__call__(model, graph)`` works
too (``PlanConfig(importance=MyImportance())``). Optional parts an importance may have:
``fingerprint()`` (what its scores depend on; a change redoes the stages that used it) and, for a
data-driven one, ``callback(model, graph)`` (a training :class:`~compresskit.training.loop.Callback` that
collects statistics while stage I trains), ``estimate(model, batches, loss_of, graph)`` (collect them
without training, when stage I did not run) and ``has_data()``, ``state_dict()`` / ``load_state_dict()``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn

from compresskit._registry import Registry, describe
from compresskit.measure.mass import unit_l1_mass, unit_sums, unit_sums_of

if TYPE_CHECKING:  # pragma: no cover
    from compresskit.graph.channels import ChannelGraph, ChannelGroup

__all__ = ["Importance", "L1Importance", "DensityImportance", "TaylorImportance", "FisherImportance",
           "IMPORTANCES",
           "register_importance", "get_importance", "importance_fingerprint", "keep_from_importance"]

T = TypeVar("T")

#: name -> factory of an :class:`Importance` (a class, or a function returning one)
IMPORTANCES: Registry[Callable[..., Any]] = Registry("importance")


def register_importance(name: str, factory: T | None = None, *, replace: bool = False) -> Any:
    """Register an importance criterion under ``name``: ``@register_importance("name")`` on a class (or a
    function returning an :class:`Importance`), or ``register_importance("name", factory)``.

    The factory is called without arguments, or with ``reference=`` (the original model, before
    sparsification) when it takes that keyword. ``PlanConfig(importance="name")`` then selects it.
    """
    decorator = IMPORTANCES.decorator("register_importance", name,
                                      "a class or a function returning an Importance", replace=replace)
    return decorator if factory is None else decorator(factory)


@runtime_checkable
class Importance(Protocol):
    """``importance(model, graph) -> {group id: per-unit scores}`` for every prunable group."""

    name: str

    def __call__(self, model: nn.Module, graph: ChannelGraph) -> dict[int, torch.Tensor]: ...


class L1Importance:
    """l1 mass of each unit's slices, normalised by its group's mean unit mass.

    With a ``reference`` model (the original, before sparsification: same module names) the mean is
    the reference's, so a group that sparsification emptied as a whole scores near 0 instead of 1.
    """

    name = "l1"

    def __init__(self, reference: nn.Module | None = None):
        self.reference = reference

    def __call__(self, model: nn.Module, graph: ChannelGraph) -> dict[int, torch.Tensor]:
        out = {}
        for group in graph.prunable_groups:
            mass = unit_l1_mass(model, group)
            ref = unit_l1_mass(self.reference, group) if self.reference is not None else mass
            mean = float(ref.mean()) if ref.numel() else 0.0
            out[group.id] = mass / mean if mean > 0 else torch.zeros_like(mass)
        return out


def unit_density(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """float64 tensor of length ``group.size``: non-zeros / entries in each unit's parameter slices."""
    nnz, total = unit_sums(model, group, lambda t: t != 0)
    return torch.where(total > 0, nnz / total.clamp_min(1), torch.zeros_like(nnz))


class DensityImportance:
    """Density of each unit's slices (non-zeros / entries); the normalised l1 mass breaks ties."""

    name = "density"

    def __init__(self, reference: nn.Module | None = None):
        self.reference = reference

    def __call__(self, model: nn.Module, graph: ChannelGraph) -> dict[int, torch.Tensor]:
        l1 = L1Importance(self.reference)(model, graph)
        return {g.id: unit_density(model, g) + 1e-6 * l1[g.id] / (1 + l1[g.id])
                for g in graph.prunable_groups}


#: the score of a unit whose parameters never received a gradient (removed only when nothing else is left)
NO_GRADIENT = 1e30


class TaylorImportance:
    """First-order Taylor importance ``Σ_i |w_i| · E|∂L/∂w_i|`` over each unit's entries (Molchanov et al.
    2019), on the user's loss.

    The gradient magnitudes are averaged per entry while stage I trains (an exponential moving average,
    ``decay`` per observed batch, bias-corrected), and multiplied by the *current* weights when scored, so
    a unit stage I drove to zero scores exactly 0. The default average is long (``decay`` 0.98, about 50
    batches): with 0.9 the short runs of benchmarks/importance_compare.py lost more on FlowVFI (a ranking
    that moves less between the replans of stage I is the likely reason; not measured). Without training
    (``sparsify.steps=0``) ``estimate`` takes them from ``batches`` batches. Scores are expected loss
    changes: they compare across groups as they are; ``normalize=True`` divides each group's by its mean
    (as l1 is; Molchanov et al. 2017 normalise per layer), which lost most of Taylor's lead on RIFE.
    """

    name = "taylor"

    def __init__(self, *, decay: float = 0.98, batches: int = 8, normalize: bool = False):
        if not 0 <= decay < 1:
            raise ValueError(f"TaylorImportance: decay must be in [0, 1), got {decay!r}")
        if batches < 1:
            raise ValueError(f"TaylorImportance: batches must be >= 1, got {batches!r}")
        self.decay, self.batches, self.normalize = float(decay), int(batches), bool(normalize)
        self._avg: dict[str, torch.Tensor] = {}  # parameter name -> running mean of |gradient|
        self._seen: dict[str, int] = {}

    def fingerprint(self) -> dict[str, Any]:
        fp = {"name": self.name, "decay": self.decay, "batches": self.batches}
        if self.normalize:
            fp["normalize"] = True
        return fp

    # -- collecting ----------------------------------------------------------------------------------
    def observe(self, name: str, grad: torch.Tensor) -> None:
        """Add one batch's gradient of parameter ``name``."""
        g = grad.detach().abs().float()
        old = self._avg.get(name)
        if old is not None:
            old = old.to(g.device)  # statistics restored from a checkpoint live on the CPU
        self._avg[name] = g * (1 - self.decay) if old is None else old * self.decay + g * (1 - self.decay)
        self._seen[name] = self._seen.get(name, 0) + 1

    def hooks(self, model: nn.Module) -> list[Any]:
        """Gradient hooks on every trainable parameter (remove them with ``handle.remove()``)."""
        return [p.register_hook(lambda g, n=n: self.observe(n, g))
                for n, p in model.named_parameters() if p.requires_grad]

    def end_batch(self, model: nn.Module, graph: ChannelGraph | None) -> None:
        """Called after each batch's backward pass (per-entry statistics need nothing here)."""

    def callback(self, model: nn.Module, graph: ChannelGraph | None = None) -> Any:
        """A training callback that observes every batch's gradients while ``model`` trains."""
        return _GradientObserver(self, model, graph)

    def estimate(self, model: nn.Module, batches: Iterable[Any],
                 loss_of: Callable[[nn.Module, Any], torch.Tensor],
                 graph: ChannelGraph | None = None) -> None:
        """Observe the gradients of ``loss_of(model, batch)`` on the first ``self.batches`` batches
        (no weight changes; the gradients are cleared afterwards)."""
        handles = self.hooks(model)
        try:
            for i, batch in enumerate(batches):
                if i >= self.batches:
                    break
                model.zero_grad(set_to_none=True)
                loss_of(model, batch).backward()
                self.end_batch(model, graph)
        finally:
            for h in handles:
                h.remove()
            model.zero_grad(set_to_none=True)

    def has_data(self) -> bool:
        return bool(self._avg)

    def state_dict(self) -> dict[str, Any]:
        return {"avg": {k: v.cpu() for k, v in self._avg.items()}, "seen": dict(self._seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._avg = {k: v.clone() for k, v in state.get("avg", {}).items()}
        self._seen = {k: int(v) for k, v in state.get("seen", {}).items()}

    # -- scoring -------------------------------------------------------------------------------------
    def mean_abs_grad(self, name: str) -> torch.Tensor | None:
        """The bias-corrected running mean of ``|∂L/∂w|`` of parameter ``name`` (None if never seen)."""
        avg = self._avg.get(name)
        if avg is None:
            return None
        return avg / (1 - self.decay ** self._seen[name]) if self.decay > 0 else avg

    def __call__(self, model: nn.Module, graph: ChannelGraph) -> dict[int, torch.Tensor]:
        if not self._avg:
            raise RuntimeError("importance 'taylor' has no gradients yet: it collects them while stage I "
                               "trains (sparsify.steps > 0) or from estimate(model, batches, loss_of)")
        names = {}
        for n, p in model.named_parameters():
            names.setdefault(id(p), n)

        def values(p: nn.Parameter) -> torch.Tensor | None:
            g = self.mean_abs_grad(names.get(id(p), ""))
            return None if g is None else p.detach().abs().float() * g.to(p.device)

        out = {}
        for group in graph.prunable_groups:
            sums, counts = unit_sums_of(model, group, values)
            # no gradient ever reached its parameters (frozen with requires_grad=False): no evidence that
            # its units are free to remove, so they go last
            if counts.sum() == 0:
                out[group.id] = torch.full_like(sums, NO_GRADIENT)
            elif self.normalize:  # over the group's mean, as l1 does: groups compare by relative score
                mean = float(sums.mean())
                out[group.id] = sums / mean if mean > 0 else sums
            else:
                out[group.id] = sums
        return out


class FisherImportance(TaylorImportance):
    """Group Taylor (Fisher) importance ``E_batch[(Σ_{i∈unit} w_i · ∂L/∂w_i)²]`` over each unit's entries
    (Molchanov et al. 2019, eq. 8; Liu et al. 2021, "Group Fisher Pruning"): the squared first-order
    change of the loss when the unit is removed, averaged over batches (``decay`` per batch, as
    :class:`TaylorImportance`). A unit whose weights are all zero scores 0."""

    name = "fisher"

    def __init__(self, *, decay: float = 0.98, batches: int = 8):
        super().__init__(decay=decay, batches=batches)
        self._batch: dict[str, torch.Tensor] = {}
        self._units: dict[str, torch.Tensor] = {}  # group id (str) -> running mean of s²
        self._count = 0

    def hooks(self, model: nn.Module) -> list[Any]:
        def hook(name: str, p: nn.Parameter) -> Callable[[torch.Tensor], None]:
            def observe(g: torch.Tensor) -> None:
                wg = p.detach().float() * g.detach().float()
                self._batch[name] = wg if name not in self._batch else self._batch[name] + wg
            return observe

        return [p.register_hook(hook(n, p)) for n, p in model.named_parameters() if p.requires_grad]

    def end_batch(self, model: nn.Module, graph: ChannelGraph | None) -> None:
        if graph is None:
            raise ValueError("importance 'fisher' needs the channel graph to sum each unit's w·g per batch")
        if not self._batch:
            return
        names = {}
        for n, p in model.named_parameters():
            names.setdefault(id(p), n)
        d = self.decay
        for group in graph.prunable_groups:
            s, counts = unit_sums_of(model, group, lambda p: self._batch.get(names.get(id(p), "")))
            if counts.sum() == 0:
                continue
            key = str(group.id)
            old = self._units.get(key)
            old = None if old is None else old.to(s.device)  # restored statistics live on the CPU
            self._units[key] = s.square() * (1 - d) if old is None else old * d + s.square() * (1 - d)
        self._batch = {}
        self._count += 1

    def has_data(self) -> bool:
        return bool(self._units)

    def state_dict(self) -> dict[str, Any]:
        return {"units": {k: v.cpu() for k, v in self._units.items()}, "count": self._count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._units = {k: v.clone() for k, v in state.get("units", {}).items()}
        self._count = int(state.get("count", 0))

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "decay": self.decay, "batches": self.batches}

    def __call__(self, model: nn.Module, graph: ChannelGraph) -> dict[int, torch.Tensor]:
        if not self._units:
            raise RuntimeError("importance 'fisher' has no gradients yet: it collects them while stage I "
                               "trains (sparsify.steps > 0) or from estimate(model, batches, loss_of, graph)")
        scale = 1 - self.decay ** self._count if self.decay > 0 else 1.0
        out = {}
        for group in graph.prunable_groups:
            avg = self._units.get(str(group.id))
            if avg is None:
                out[group.id] = torch.full((group.size,), NO_GRADIENT, dtype=torch.float64)
                continue
            alive = unit_l1_mass(model, group) > 0
            avg = avg.to(alive.device)
            out[group.id] = torch.where(alive, avg / scale, torch.zeros_like(avg))
        return out


class _GradientObserver:
    """Training callback of a data-driven importance: gradient hooks from start to end of training; its
    statistics travel in the trainer's checkpoints (an interrupted stage I resumes with them)."""

    def __init__(self, importance: TaylorImportance, model: nn.Module, graph: ChannelGraph | None = None):
        self.importance, self.model, self.graph, self._handles = importance, model, graph, []

    def on_train_start(self, trainer: Any) -> None:
        if not self._handles:
            self._handles = self.importance.hooks(self.model)

    def on_step_end(self, trainer: Any) -> None:
        self.importance.end_batch(self.model, self.graph)

    def on_validation_end(self, trainer: Any, values: dict[str, float]) -> None: ...

    def on_train_end(self, trainer: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def progress_fields(self, trainer: Any) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return self.importance.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.importance.load_state_dict(state)


register_importance("l1", L1Importance)
register_importance("density", DensityImportance)
register_importance("taylor", TaylorImportance)
register_importance("fisher", FisherImportance)


def get_importance(name: str | Importance, reference: nn.Module | None = None) -> Importance:
    """The importance registered as ``name`` (``"l1"``, ``"density"``, ``"taylor"``, ...) or an Importance
    class, built with ``reference=`` (the unsparsified model) when it takes it; an object as is."""
    if isinstance(name, (str, type)):
        factory = IMPORTANCES.find(name) if isinstance(name, str) else name
        if factory is None:
            raise ValueError(f"importance: unknown criterion {name!r}; registered: "
                             f"{', '.join(map(repr, IMPORTANCES.names()))} (ck.register_importance adds one)")
        try:
            takes_reference = "reference" in inspect.signature(factory).parameters
        except (TypeError, ValueError):  # builtins without a signature
            takes_reference = False
        return factory(reference=reference) if takes_reference else factory()
    if not callable(name):
        raise TypeError(f"importance: expected a registered name or an Importance object (a callable "
                        f"importance(model, graph)), got {type(name).__name__}")
    return name


def importance_fingerprint(importance: Any) -> Any:
    """What an importance's scores depend on: its own ``fingerprint()``, else its name or class."""
    if hasattr(importance, "fingerprint"):
        return importance.fingerprint()
    return getattr(importance, "name", None) or describe(type(importance))


def removal_order(scores: torch.Tensor) -> torch.Tensor:
    """Unit indices from the first to remove to the last: lowest score first, ties by higher index first
    (so the kept set is the top scores with ties to the lower index, as ``keep_from_plan`` keeps)."""
    keep_first = torch.sort(-scores.to(torch.float64), stable=True).indices
    return keep_first.flip(0)


def keep_from_importance(scores: dict[int, torch.Tensor], widths: dict[int, int],
                         sizes: dict[int, int]) -> dict[int, torch.LongTensor]:
    """``{group id: sorted indices of the widths[id] highest-scoring units}`` for every group that shrinks."""
    keep = {}
    for gid, width in widths.items():
        if width >= sizes[gid]:
            continue
        order = removal_order(scores[gid]).flip(0)  # keep first
        keep[gid] = torch.sort(order[:width]).values
    return keep
