"""Loud input checks: batches that change shape, and traces that take another path than eager execution.

``check_batch_consistent(batch, reference, index)``: every batch must have the first batch's structure and
tensor shapes. Allowed, by design:

- the **batch dimension** (dim 0) may change (a short last batch), as long as the tensors that shared a
  batch size in the reference still share one (inputs and targets of 4 samples each, then of 3 each);
- with ``spatial=True`` (fully convolutional models, ``(N, C, *spatial)`` tensors), the **spatial
  sizes** (dims 2 and up) may change under the same rule: sizes equal across tensors in the reference stay
  equal (frames and target of 64×64, then all of 96×96; a 96×96 target beside 64×64 frames is an error).

Everything else (channels, a target of another size, a different rank, dtype or structure) is a
``ValueError`` naming the batch index, the element and both shapes, instead of silent broadcasting.

``check_trace_matches_eager(model, graph, second_inputs)``: the channel graph describes the path the
example inputs took through ``forward``. If ``forward`` branches on tensor *values* (``if x.mean() > 0``),
another input can take another path and the graph (hence the shrink) is wrong for it. The traced
``torch.fx`` graph is run as a module next to the eager model on a second input; a different result is
a ``ValueError`` before any training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

from compresskit._modes import eval_mode

if TYPE_CHECKING:  # pragma: no cover
    from compresskit.graph.channels import ChannelGraph

__all__ = ["TensorSpec", "batch_spec", "check_batch_consistent", "check_trace_matches_eager",
           "output_difference", "check_module_usable", "check_integer_inputs", "run_error_hint"]


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one tensor of a batch (what the checks compare; cheap to keep)."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    def __str__(self) -> str:
        return f"{tuple(self.shape)} {str(self.dtype).replace('torch.', '')}"


def batch_spec(batch: Any) -> Any:
    """``batch`` with every tensor replaced by its :class:`TensorSpec` (tuples, lists, dicts kept)."""
    if isinstance(batch, TensorSpec):
        return batch
    if isinstance(batch, torch.Tensor):
        return TensorSpec(tuple(batch.shape), batch.dtype)
    if isinstance(batch, Mapping):
        return {k: batch_spec(v) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(batch_spec(v) for v in batch) if not hasattr(batch, "_fields") else tuple(
            batch_spec(v) for v in batch)
    return type(batch).__name__


def _leaves(spec: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(spec, Mapping):
        return [x for k, v in spec.items() for x in _leaves(v, f"{path}[{k!r}]")]
    if isinstance(spec, tuple | list):
        return [x for i, v in enumerate(spec) for x in _leaves(v, f"{path}[{i}]")]
    return [(path or "batch", spec)]


def _structure(spec: Any) -> Any:
    if isinstance(spec, Mapping):
        return ("dict", tuple((k, _structure(v)) for k, v in spec.items()))
    if isinstance(spec, tuple | list):
        return ("seq", len(spec), tuple(_structure(v) for v in spec))
    return "leaf"


def check_batch_consistent(batch: Any, reference: Any, index: int | str, *, spatial: bool = False) -> None:
    """Raise ``ValueError`` if ``batch`` does not look like ``reference`` (the first batch, or its
    :func:`batch_spec`); see the module docstring for what may change. ``index`` names the batch in the
    message (an int, or a phrase such as ``"train_loader batch 7 of epoch 0"``)."""
    where = f"batch {index}" if isinstance(index, int) else str(index)
    got, ref = batch_spec(batch), batch_spec(reference)
    if _structure(got) != _structure(ref):
        raise ValueError(f"{where}: its structure differs from the first batch's: expected {_brief(ref)}, "
                         f"got {_brief(got)}")
    pairs = [(p, r, g) for (p, r), (_, g) in zip(_leaves(ref), _leaves(got))]
    free: list[tuple[str, int, int, int, int]] = []  # (path, dim, dim from the end, reference size, size)
    for path, r, g in pairs:
        if not isinstance(r, TensorSpec) or not isinstance(g, TensorSpec):
            if r != g:
                raise ValueError(f"{where}: element {path} is a {g}, the first batch's is a {r}")
            continue
        if len(r.shape) != len(g.shape) or r.dtype != g.dtype:
            raise ValueError(f"{where}: element {path} has shape {g}, the first batch's has {r} "
                             "(rank or dtype differs)")
        for d, (a, b) in enumerate(zip(r.shape, g.shape)):
            movable = d == 0 or (spatial and d >= 2)
            if a == b:
                if movable:
                    free.append((path, d, d - len(r.shape), a, b))
                continue
            if not movable:
                what = ("channels differ" if d == 1 and len(r.shape) >= 3 else f"dim {d} differs")
                allowed = "only the batch size (dim 0)" + (" and spatial sizes (dims 2+)" if spatial else "")
                raise ValueError(
                    f"{where}: element {path} has shape {tuple(g.shape)}, the first batch's has "
                    f"{tuple(r.shape)} ({what}: {b} vs {a}); {allowed} may change between batches")
            free.append((path, d, d - len(r.shape), a, b))
    # sizes that agreed across tensors in the first batch must still agree (input and target together)
    # (dim 0 with dim 0; spatial dims aligned from the end, so a 5-D clip and its 4-D target compare H, W)
    for i, (p1, d1, e1, a1, b1) in enumerate(free):
        for p2, d2, e2, a2, b2 in free[i + 1:]:
            same_dim = (d1 == 0 and d2 == 0) or (d1 > 0 and d2 > 0 and e1 == e2)
            if p1 == p2 or not same_dim or a1 != a2 or b1 == b2:
                continue
            shape1 = next(g.shape for p, _, g in pairs if p == p1)
            shape2 = next(g.shape for p, _, g in pairs if p == p2)
            kind = "batch size" if d1 == 0 else "spatial size"
            raise ValueError(
                f"{where}: element {p1} has shape {tuple(shape1)} but element {p2} has {tuple(shape2)}: "
                f"in the first batch their {kind} agreed ({a1}), here dim {d1} is {b1} and dim {d2} is {b2}")


def _brief(spec: Any) -> str:
    return ", ".join(f"{p}: {s}" for p, s in _leaves(spec))


# ---------------------------------------------------------------------- trace vs eager
def check_trace_matches_eager(model: nn.Module, graph_or_traced: ChannelGraph | fx.GraphModule,
                              second_inputs: Any, *, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Run the traced graph and ``model`` on ``second_inputs`` (eval mode, no grad, the same random
    seed) and raise ``ValueError`` if they disagree or the graph cannot run (data-dependent control flow:
    the trace recorded the example inputs' path). Graphs from ``torch.export`` are not re-run: export
    itself refuses Python branches on tensor values."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    inputs = second_inputs if isinstance(second_inputs, tuple | list) else (second_inputs,)
    if isinstance(graph_or_traced, fx.GraphModule):
        gm = graph_or_traced
    else:
        method = getattr(graph_or_traced, "method", None)
        fx_graph = getattr(graph_or_traced, "fx_graph", None)
        if method is None or fx_graph is None:
            raise TypeError("graph_or_traced: expected the ChannelGraph of ck.trace(model, ...) or a "
                            f"torch.fx.GraphModule, got {type(graph_or_traced).__name__}")
        if method != "fx":
            return
        gm = graph_or_traced.graph_module(model)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with eval_mode(model, gm), torch.no_grad():
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            eager = model(*inputs)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            try:
                traced = gm(*inputs)
            except Exception as e:
                raise ValueError(
                    "the traced graph cannot run on a second batch's inputs "
                    f"({_shapes(inputs)}) although the model can: {type(e).__name__}: {e}. "
                    + _advice(gm)) from e
    problem = output_difference(eager, traced, "output", rtol, atol)
    if problem is not None:
        raise ValueError(f"the traced graph disagrees with eager execution on a second batch's inputs "
                         f"({_shapes(inputs)}): {problem}. " + _advice(gm))


def output_difference(a: Any, b: Any, path: str, rtol: float, atol: float) -> str | None:
    """The first difference between two outputs (tensors, sequences, mappings, plain values), ``a`` from
    the eager model and ``b`` from its trace or program, as a sentence; None when they agree (floats
    within ``allclose(rtol, atol)``, NaN equal to NaN; other dtypes exactly)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return f"{path} is a {type(a).__name__} in eager mode, a {type(b).__name__} in the trace"
        if a.shape != b.shape:
            return f"{path} has shape {tuple(a.shape)} in eager mode, {tuple(b.shape)} in the trace"
        if a.dtype != b.dtype:
            return f"{path} has dtype {a.dtype} in eager mode, {b.dtype} in the trace"
        if a.is_floating_point() or a.is_complex():
            if not torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True):
                diff = float((a - b).abs().nan_to_num(0.0).max())
                return f"{path} differs by up to {diff:.3g} (max |eager| {float(a.abs().max()):.3g})"
        elif not torch.equal(a, b):
            return f"{path} differs"
        return None
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            return f"{path} has keys {sorted(map(str, a))} in eager mode, {sorted(map(str, b))} in the trace"
        for k in a:
            p = output_difference(a[k], b[k], f"{path}[{k!r}]", rtol, atol)
            if p:
                return p
        return None
    if isinstance(a, Sequence) and isinstance(b, Sequence) and not isinstance(a, str):
        if len(a) != len(b):
            return f"{path} has {len(a)} items in eager mode, {len(b)} in the trace"
        for i, (x, y) in enumerate(zip(a, b)):
            p = output_difference(x, y, f"{path}[{i}]", rtol, atol)
            if p:
                return p
        return None
    if a != b:
        return f"{path} is {a!r} in eager mode, {b!r} in the trace"
    return None


_READS = {"gt", "lt", "ge", "le", "eq", "ne", "any", "all", "is_nonzero", "item", "tolist", "__bool__"}


def _advice(gm: fx.GraphModule) -> str:
    """Where forward read tensor values as Python (computed nodes nobody uses: a branch, a loop count)."""
    reads = []
    for n in gm.graph.nodes:
        if n.op not in ("call_function", "call_method") or n.users:
            continue
        name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", "")
        if name in _READS:
            reads.append(n.format_node() or n.name)
    where = ("; values read by Python during tracing: " + "; ".join(r.strip() for r in reads[:3])
             if reads else "")
    return ("The model's forward probably branches on tensor values (data-dependent control flow), so the "
            "channel graph only describes the path the example inputs took" + where + ". Make the branch "
            "depend on shapes or arguments only, or register the module that branches with "
            "ck.register_leaf so it is traced as one unit.")


def _shapes(inputs: Sequence[Any]) -> str:
    return ", ".join(str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__ for x in inputs)


# ---------------------------------------------------------------------- modules and inputs torch rejects
def check_module_usable(model: nn.Module, argument: str) -> None:
    """Refuse, naming ``argument`` and the fix, a module compresskit cannot copy or run: weights on the meta
    device (no data) and the old ``torch.nn.utils.weight_norm`` (its computed weight breaks
    ``copy.deepcopy``)."""
    from torch.nn.utils.weight_norm import WeightNorm

    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        raise ValueError(f"{argument}: {len(meta)} weights are on the meta device, which holds shapes but no "
                         f"data (e.g. {meta[0]!r}); build the model on a real device, or materialise it with "
                         f"{argument}.to_empty(device='cpu') and load its weights before compressing")
    for name, module in model.named_modules():
        if any(isinstance(h, WeightNorm) for h in module._forward_pre_hooks.values()):
            raise ValueError(f"{argument}: module {name or type(module).__name__!r} uses the old "
                             "torch.nn.utils.weight_norm, whose computed weight cannot be copied "
                             "(copy.deepcopy); use torch.nn.utils.parametrizations.weight_norm instead, or "
                             f"call torch.nn.utils.remove_weight_norm on it before compressing")


def run_error_hint(error: BaseException, inputs: Sequence[Any], model: nn.Module) -> str:
    """A sentence explaining a raw torch error from running ``model`` on ``inputs`` when it is a known
    pitfall (integer inputs into float layers), else ``""``."""
    text = str(error)
    floats = {p.dtype for p in model.parameters() if p.is_floating_point()}
    ints = [(i, x.dtype) for i, x in enumerate(inputs)
            if isinstance(x, torch.Tensor) and not (x.is_floating_point() or x.is_complex())]
    dtype_clash = any(k in text for k in ("Input type", "expected scalar type", "must have the same dtype",
                                          "should be the same", "expected both", "not implemented for"))
    if ints and floats and dtype_clash:
        i, dt = ints[0]
        want = str(sorted(floats, key=str)[0]).removeprefix("torch.")
        return (f" Input {i} is {str(dt).removeprefix('torch.')} but the model computes in {want}: convert "
                f"it where the batches are made (e.g. x.float() / 255 for 8-bit images), or pass "
                f"inputs_fn=lambda batch: (batch[0].float() / 255,) to ck.compress.")
    return ""


def check_integer_inputs(model: nn.Module, inputs: Sequence[Any], argument: str = "example_inputs") -> None:
    """Integer inputs into a float model: run it once (eval mode, no grad) and, if torch rejects the dtypes,
    say which input and how to convert it. Free when every input is floating point."""
    if not any(isinstance(x, torch.Tensor) and not (x.is_floating_point() or x.is_complex()) for x in inputs):
        return
    if not any(p.is_floating_point() for p in model.parameters()):
        return
    try:
        with eval_mode(model), torch.no_grad():
            model(*inputs)
    except Exception as e:
        hint = run_error_hint(e, inputs, model)
        if hint:
            raise ValueError(f"{argument}: the model cannot run on them ({type(e).__name__}: "
                             f"{str(e).strip().splitlines()[0]}).{hint}") from e


def check_loss(model: nn.Module, loss_fn: Any, inputs_fn: Any, batch: Any, how: str) -> None:
    """Call ``loss_fn(model(*inputs_fn(batch)), batch)`` once on the first batch (eval mode, no grad) before
    any training, so a loss with the wrong signature fails now, naming the argument, and not minutes later
    inside a stage. The loss must be a tensor with one element."""
    with eval_mode(model), torch.no_grad():
        output = model(*inputs_fn(batch))
        try:
            loss = loss_fn(output, batch)
        except Exception as e:
            first_line = (str(e).strip().splitlines() or [""])[0]
            raise ValueError(f"loss_fn: calling {how} as loss_fn(output, batch) on the first batch failed "
                             f"({type(e).__name__}: {first_line}). "
                             "compress calls loss_fn(output, batch) with the model's output and the whole "
                             "batch: a loss of (prediction, target) needs a wrapper such as "
                             "lambda out, batch: F.l1_loss(out, batch[-1])") from e
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        got = (f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor)
               else type(loss).__name__)
        raise ValueError(f"loss_fn: expected loss_fn(output, batch) to return a scalar tensor, got {got} "
                         f"from {how}; reduce it (e.g. .mean())")
