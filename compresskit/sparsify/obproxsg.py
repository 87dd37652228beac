"""OBProx-SG: orthant-based proximal stochastic gradient for l1-regularised training.

Chen et al., "Orthant Based Proximal Stochastic Gradient Method for l1-Regularized Optimization"
(ECML-PKDD 2020); the optimizer both the CDFI and the ST-MFNet Mini papers sparsify with. It minimises
``f(x) + λ‖x‖₁``. With gradient ``g`` and step size ``α`` (the group's ``lr``) one step is either

- a **Prox-SG step**: ``x ← soft_threshold(x − α·g, α·λ)``, i.e. ``sign(y)·max(|y| − αλ, 0)``, or
- an **orthant step**: ``ζ = sign(x)``; ``x̂ = x − α·(g + λ·ζ)``; ``x ← x̂`` where ``x̂·ζ > eps`` else 0
  (zeros stay zero; an entry that would cross zero or shrink to ``≤ eps`` is zeroed).

Schedule (counted in ``step()`` calls, shared by all parameter groups): ``n_prox_steps`` prox steps,
then ``n_orthant_steps`` orthant steps, repeating. ``n_orthant_steps=None`` means orthant steps for ever
after the first ``n_prox_steps``; ``n_prox_steps=None`` means prox steps for ever (plain Prox-SG).
``steps_from_epochs`` converts the papers' epoch schedule (Np epochs, epoch size) into these two numbers.

The update runs on grouped tensor lists with ``torch._foreach_*`` ops (``compile=False``) or as one
fused ``torch.compile`` kernel per tensor (``compile=True``; falls back to the eager path with a warning
if compilation fails). The default ``compile="auto"`` decides at the first step: compiled when the
parameters being updated hold at least ``AUTO_COMPILE_NUMEL`` elements (a real network, where the fused
kernel is ~3× faster than eager and its one-off compilation pays for itself), eager below that (tests,
toy models, where compiling would cost more than it saves). float16/bfloat16 parameters are updated in
float32 and written back.
A NaN or infinite gradient is not hidden: it reaches the parameter as it would with SGD.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["OBProxSG", "steps_from_epochs", "l1_param_groups"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)
#: ``compile="auto"`` compiles the update for at least this many updated elements
AUTO_COMPILE_NUMEL = 4_000_000
PHASES = ("prox", "orthant")


def _check_number(name: str, value: Any, *, positive: bool = False, where: str = "") -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar{where}, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number{where}, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite{where}, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0{where}, got {value}")
    if not positive and value < 0:
        raise ValueError(f"{name} must be >= 0{where}, got {value}")
    return value


def _check_count(name: str, value: Any, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum} or None, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum} or None, got {value}")
    return value


def phase_at(step: int, n_prox_steps: int | None, n_orthant_steps: int | None) -> str:
    """The phase ("prox" or "orthant") of the ``step``-th ``step()`` call (0-based)."""
    if n_prox_steps is None:
        return "prox"
    if n_orthant_steps is None:
        return "prox" if step < n_prox_steps else "orthant"
    return "prox" if step % (n_prox_steps + n_orthant_steps) < n_prox_steps else "orthant"


def steps_from_epochs(
    n_prox_epochs: float | None, steps_per_epoch: int, n_orthant_epochs: float | None = None
) -> dict[str, int | None]:
    """Convert the papers' epoch schedule into OBProx-SG's step counts.

    ``n_prox_epochs`` epochs of prox steps, then ``n_orthant_epochs`` epochs of orthant steps, repeating
    (``None``: orthant for ever). Returns ``{"n_prox_steps": ..., "n_orthant_steps": ...}`` to pass as
    ``OBProxSG(params, lr, lambda_, **steps_from_epochs(2, len(loader)))`` (ST-MFNet Mini: Np = 2;
    CDFI: Np = 10). Fractional epochs are rounded to the nearest step. ``n_prox_epochs=None`` gives
    prox steps for ever.
    """
    if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
        raise ValueError(
            f"steps_per_epoch must be an int >= 1 (e.g. len(train_loader)), got {steps_per_epoch!r}"
        )
    if n_prox_epochs is None:
        if n_orthant_epochs is not None:
            raise ValueError("n_orthant_epochs needs n_prox_epochs (prox epochs come first in each cycle)")
        return {"n_prox_steps": None, "n_orthant_steps": None}
    n_prox = round(_check_number("n_prox_epochs", n_prox_epochs) * steps_per_epoch)
    if n_orthant_epochs is None:
        return {"n_prox_steps": n_prox, "n_orthant_steps": None}
    n_orth = round(_check_number("n_orthant_epochs", n_orthant_epochs, positive=True) * steps_per_epoch)
    if n_orth < 1:
        raise ValueError(
            f"n_orthant_epochs={n_orthant_epochs} x steps_per_epoch={steps_per_epoch} rounds to 0 steps; "
            "use at least one step or None (orthant for ever)"
        )
    return {"n_prox_steps": n_prox, "n_orthant_steps": n_orth}


def l1_param_groups(
    model: torch.nn.Module, lambda_: float, *, include_biases: bool = True, include_norms: bool = True
) -> list[dict[str, Any]]:
    """Parameter groups for ``OBProxSG``: λ on weights; biases / norm parameters get λ or 0.

    The papers regularised every parameter (``include_biases=include_norms=True``); set either to False
    to exempt biases or normalisation layers (BatchNorm, GroupNorm, LayerNorm, InstanceNorm) from l1.
    """
    norm_types = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)
    decayed, exempt, seen = [], [], set()
    for module in model.modules():
        is_norm = isinstance(module, norm_types)
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            skip = (is_norm and not include_norms) or (pname == "bias" and not include_biases)
            (exempt if skip else decayed).append(p)
    groups = [{"params": decayed, "lambda_": lambda_}]
    if exempt:
        groups.append({"params": exempt, "lambda_": 0.0})
    return groups


# ---------------------------------------------------------------------------------------------------
# eager kernels on same-device, same-dtype tensor lists (fp32 / fp64; low precision is upcast first)


def _prox_eager(xs: list[torch.Tensor], gs: list[torch.Tensor], lr: float, lam: float) -> None:
    """x ← soft_threshold(x − lr·g, lr·λ), in place."""
    torch._foreach_add_(xs, gs, alpha=-lr)
    threshold = lr * lam
    if threshold > 0:
        for x in xs:  # softshrink(y, t) = y − t if y > t, y + t if y < −t, else 0: the soft threshold
            torch.ops.aten.softshrink.out(x, threshold, out=x)


def _orthant_eager(xs: list[torch.Tensor], gs: list[torch.Tensor], lr: float, lam: float, eps: float) -> None:
    """ζ = sign(x); x̂ = x − lr·(g + λζ); x ← x̂ where x̂·ζ > eps else 0, in place."""
    zetas = torch._foreach_sign(xs)
    if lam != 0:
        direction = torch._foreach_mul(zetas, lam)
        torch._foreach_add_(direction, gs)
    else:
        direction = gs
    torch._foreach_add_(xs, direction, alpha=-lr)
    del direction
    torch._foreach_mul_(zetas, xs)  # zetas now hold x̂·ζ (0 where x was 0, so zeros stay zero)
    for x, along in zip(xs, zetas):
        x.masked_fill_(along.le(eps), 0)  # keep where x̂·ζ > eps (a NaN stays NaN, as in SGD)


_CPU_CHUNK = 1 << 18  # elements per slice on CPU: a few passes over a slice stay in cache


def _cpu_slices(xs: list[torch.Tensor], gs: list[torch.Tensor]):  # type: ignore[no-untyped-def]
    for x, g in zip(xs, gs):
        xf, gf = x.view(-1), g.reshape(-1)
        for start in range(0, xf.numel(), _CPU_CHUNK):
            yield xf[start : start + _CPU_CHUNK], gf[start : start + _CPU_CHUNK]


def _prox_slice(x: torch.Tensor, g: torch.Tensor, lr: float, lam: float) -> None:
    """x ← soft_threshold(x − lr·g, lr·λ) on one slice, in place."""
    x.add_(g, alpha=-lr)
    if lr * lam > 0:
        torch.ops.aten.softshrink.out(x, lr * lam, out=x)


def _orthant_slice(
    x: torch.Tensor, g: torch.Tensor, lr: float, lam: float, eps: float, zeta: torch.Tensor
) -> None:
    """The orthant step on one slice, in place; ``zeta`` is scratch of the same size.

    Where kept, ``x̂ = sign(x̂)·(x̂·ζ)`` exactly, so the masked result is
    ``copysign(threshold(x̂·ζ, eps, 0), x̂)`` (dropped entries become ``±0``).
    """
    torch.sign(x, out=zeta)
    x.add_(g, alpha=-lr)
    if lam != 0:
        x.add_(zeta, alpha=-lr * lam)  # x̂ = x − lr·g − lr·λ·ζ
    zeta.mul_(x)  # x̂·ζ (0 where x was 0, so zeros stay zero)
    torch.nn.functional.threshold_(zeta, eps, 0.0)  # x̂·ζ where > eps, else 0
    torch.copysign(zeta, x, out=x)


def _step_cpu(
    phase: str, xs: list[torch.Tensor], gs: list[torch.Tensor], lr: float, lam: float, eps: float,
    scratch: torch.Tensor,
) -> None:
    """Either step on contiguous CPU tensors, slice by slice, through reused scratch rows.

    On CPU a fresh temporary of a large tensor costs page faults that dwarf the arithmetic, and several
    passes over a cache-sized slice cost little more than one. float16/bfloat16 slices are upcast into
    float32 scratch rows, updated there and written back.
    """
    low = xs[0].dtype in _LOW_PRECISION
    for x, g in _cpu_slices(xs, gs):
        n = x.numel()
        xw, gw = (scratch[1, :n], scratch[2, :n]) if low else (x, g)
        if low:
            xw.copy_(x)
            gw.copy_(g)
        if phase == "prox":
            _prox_slice(xw, gw, lr, lam)
        else:
            _orthant_slice(xw, gw, lr, lam, eps, scratch[0, :n])
        if low:
            x.copy_(xw)


# ---------------------------------------------------------------------------------------------------
# compiled kernels: one fused read-modify-write per tensor; scalars are 0-d tensors (no recompiles
# when a scheduler changes lr)


def _prox_fused(xs, gs, lrs, lams):  # type: ignore[no-untyped-def]
    for x, g, lr, lam in zip(xs, gs, lrs, lams):
        x32 = x.float() if x.dtype in _LOW_PRECISION else x
        y = x32 - lr * g.to(x32.dtype)
        t = lr * lam
        x.copy_((y - torch.clamp(y, -t, t)).to(x.dtype))


def _orthant_fused(xs, gs, lrs, lams, epss):  # type: ignore[no-untyped-def]
    for x, g, lr, lam, eps in zip(xs, gs, lrs, lams, epss):
        x32 = x.float() if x.dtype in _LOW_PRECISION else x
        zeta = torch.sign(x32)
        x_hat = x32 - lr * (g.to(x32.dtype) + lam * zeta)
        x.copy_(torch.where(x_hat * zeta <= eps, torch.zeros_like(x_hat), x_hat).to(x.dtype))


_COMPILED: dict[str, Callable[..., None]] = {}


def _compiled(name: str) -> Callable[..., None]:
    if name not in _COMPILED:
        fn = _prox_fused if name == "prox" else _orthant_fused
        _COMPILED[name] = torch.compile(fn, fullgraph=True, dynamic=False)
    return _COMPILED[name]


# ---------------------------------------------------------------------------------------------------


class OBProxSG(torch.optim.Optimizer):
    """Orthant-based proximal SGD (Chen et al. 2020) for ``f(x) + λ‖x‖₁``; see the module docstring.

    Args:
        params: parameters or parameter groups; each group may set its own ``lr``, ``lambda_`` and
            ``eps`` (e.g. ``lambda_=0`` for biases and norms, see ``l1_param_groups``).
        lr: step size α (> 0). Read from ``group["lr"]`` at every step, so any LR scheduler works.
        lambda_: l1 strength λ (>= 0).
        eps: orthant-step threshold (>= 0): entries with ``x̂·ζ <= eps`` become 0.
        n_prox_steps: prox steps per cycle (int >= 0); ``None``: prox for ever.
        n_orthant_steps: orthant steps per cycle (int >= 1); ``None``: orthant for ever after.
        compile: fuse each update into one ``torch.compile`` kernel per tensor (much faster on large
            models; the first step compiles, tens of seconds). Falls back to eager with a warning.
            ``"auto"`` (default): compile when the first step updates >= ``AUTO_COMPILE_NUMEL`` elements.

    ``opt.phase`` is the phase of the next ``step()``; ``opt.num_steps`` the steps taken so far. Both
    are saved by ``state_dict()`` and restored exactly by ``load_state_dict()``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        lambda_: float,
        eps: float = 0.0,
        n_prox_steps: int | None = None,
        n_orthant_steps: int | None = None,
        *,
        compile: bool | str = "auto",
    ) -> None:
        lr = _check_number("lr", lr, positive=True)
        lambda_ = _check_number("lambda_", lambda_)
        eps = _check_number("eps", eps)
        self.n_prox_steps = _check_count("n_prox_steps", n_prox_steps, 0)
        self.n_orthant_steps = _check_count("n_orthant_steps", n_orthant_steps, 1)
        if self.n_prox_steps is None and self.n_orthant_steps is not None:
            raise ValueError(
                "n_orthant_steps needs n_prox_steps: a cycle starts with n_prox_steps prox steps "
                "(use n_prox_steps=0 for orthant steps only)"
            )
        if not (isinstance(compile, bool) or compile == "auto"):
            raise TypeError(f"compile must be True, False or 'auto', got {compile!r}")
        self.compile = compile
        self.num_steps = 0
        self._scratch: dict[torch.dtype, torch.Tensor] = {}  # CPU slices' temporaries, reused
        super().__init__(params, {"lr": lr, "lambda_": lambda_, "eps": eps})

    # -- groups and schedule -----------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        where = f" (param group {len(self.param_groups)})"
        value = {k: param_group.get(k, self.defaults[k]) for k in ("lr", "lambda_", "eps")}
        checked = {  # validated before the group joins, so a bad group never half-exists
            "lr": _check_number("lr", value["lr"], positive=True, where=where),
            "lambda_": _check_number("lambda_", value["lambda_"], where=where),
            "eps": _check_number("eps", value["eps"], where=where),
        }
        super().add_param_group({**param_group, **checked})

    @property
    def phase(self) -> str:
        """Phase of the next ``step()``: "prox" or "orthant"."""
        return phase_at(self.num_steps, self.n_prox_steps, self.n_orthant_steps)

    # -- state -------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["obproxsg"] = {
            "num_steps": self.num_steps,
            "n_prox_steps": self.n_prox_steps,
            "n_orthant_steps": self.n_orthant_steps,
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        schedule = state_dict.pop("obproxsg", None)
        if not isinstance(schedule, dict) or "num_steps" not in schedule:
            raise ValueError(
                "state_dict has no 'obproxsg' entry: it was not saved by OBProxSG.state_dict(), so the "
                "phase counter cannot be restored"
            )
        super().load_state_dict(state_dict)
        saved = (schedule["n_prox_steps"], schedule["n_orthant_steps"])
        if saved != (self.n_prox_steps, self.n_orthant_steps):
            warnings.warn(
                f"OBProxSG.load_state_dict: restoring the saved schedule n_prox_steps={saved[0]}, "
                f"n_orthant_steps={saved[1]} over the constructed "
                f"{self.n_prox_steps}, {self.n_orthant_steps}",
                stacklevel=2,
            )
        self.n_prox_steps, self.n_orthant_steps = saved
        self.num_steps = int(schedule["num_steps"])
        for i, group in enumerate(self.param_groups):  # a loaded group must still be valid
            where = f" (loaded param group {i})"
            _check_number("lr", group["lr"], where=where)
            _check_number("lambda_", group["lambda_"], where=where)
            _check_number("eps", group["eps"], where=where)

    def __getstate__(self) -> dict[str, Any]:  # pickling / deepcopy keep the schedule
        state = super().__getstate__()
        state.update(
            num_steps=self.num_steps,
            n_prox_steps=self.n_prox_steps,
            n_orthant_steps=self.n_orthant_steps,
            compile=self.compile,
        )
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._scratch = {}

    # -- the step ----------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One prox or orthant step (see ``phase``) on every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        phase = self.phase
        work: list[tuple[list[torch.Tensor], list[torch.Tensor], float, float, float]] = []
        for i, group in enumerate(self.param_groups):
            lr = _check_number("lr", group["lr"], where=f" (param group {i} at step {self.num_steps})")
            lam, eps = float(group["lambda_"]), float(group["eps"])
            buckets: dict[tuple[torch.device, torch.dtype], tuple[list, list]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse or g.layout != torch.strided:
                    g = g.to_dense()
                if g.dtype != p.dtype:
                    g = g.to(p.dtype)
                xs, gs = buckets.setdefault((p.device, p.dtype), ([], []))
                xs.append(p)
                gs.append(g)
            for xs, gs in buckets.values():
                work.append((xs, gs, lr, lam, eps))
        if work:
            if self.compile == "auto":  # decided once, on the first step's workload
                numel = sum(x.numel() for xs, *_ in work for x in xs)
                self.compile = numel >= AUTO_COMPILE_NUMEL
            if self.compile:
                self._step_compiled(phase, work)
            else:
                for xs, gs, lr, lam, eps in work:
                    self._step_eager(phase, xs, gs, lr, lam, eps)
        self.num_steps += 1
        return loss

    def _step_eager(
        self, phase: str, xs: list[torch.Tensor], gs: list[torch.Tensor], lr: float, lam: float, eps: float
    ) -> None:
        low = xs[0].dtype in _LOW_PRECISION
        if xs[0].device.type == "cpu" and all(x.is_contiguous() for x in xs):
            work_dtype = torch.float32 if low else xs[0].dtype
            scratch = self._scratch.get(work_dtype)
            if scratch is None:  # rows: ζ, and the float32 copies of a low-precision slice of x and g
                scratch = self._scratch[work_dtype] = torch.empty(3, _CPU_CHUNK, dtype=work_dtype)
            _step_cpu(phase, xs, gs, lr, lam, eps, scratch)
            return
        # CUDA & co: multi-tensor kernels, temporaries come from the caching allocator
        work_xs = [x.float() for x in xs] if low else xs
        work_gs = [g.float() for g in gs] if low else gs
        if phase == "prox":
            _prox_eager(work_xs, work_gs, lr, lam)
        else:
            _orthant_eager(work_xs, work_gs, lr, lam, eps)
        if low:
            torch._foreach_copy_(xs, work_xs)

    def _step_compiled(self, phase: str, work: list[tuple]) -> None:
        xs_all, gs_all, lrs, lams, epss = [], [], [], [], []
        for xs, gs, lr, lam, eps in work:
            dev = xs[0].device
            sdt = torch.float64 if xs[0].dtype == torch.float64 else torch.float32
            scalars = [torch.tensor(v, dtype=sdt, device=dev) for v in (lr, lam, eps)]
            xs_all += xs
            gs_all += gs
            lrs += [scalars[0]] * len(xs)
            lams += [scalars[1]] * len(xs)
            epss += [scalars[2]] * len(xs)
        try:
            if phase == "prox":
                _compiled("prox")(xs_all, gs_all, lrs, lams)
            else:
                _compiled("orthant")(xs_all, gs_all, lrs, lams, epss)
        except Exception as err:  # compilation unavailable (no compiler, unsupported device...)
            warnings.warn(
                f"OBProxSG: torch.compile failed ({type(err).__name__}: {err}); using the eager foreach "
                "update from now on",
                stacklevel=3,
            )
            self.compile = False
            for xs, gs, lr, lam, eps in work:
                self._step_eager(phase, xs, gs, lr, lam, eps)
