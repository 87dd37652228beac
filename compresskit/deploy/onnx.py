"""ONNX export that is checked: written only when ONNX Runtime reproduces the PyTorch model.

``export_onnx(model, example_inputs, "small.onnx")``:

1. ``torch.export`` the model in eval mode with every input dimension dynamic where the model allows it
   (``Dim.AUTO``: a dimension the model fixes, such as the channels of a conv, stays static). An example
   batch of 1 is exported as a batch of 2 so that the batch dimension can stay dynamic.
2. Custom ops (any operator outside ``aten``/``prims``) are replaced by their registered decomposition
   into standard torch ops (:func:`register_onnx_decomposition`; the VFI plugins register AdaCoF sampling,
   summation splatting and correlation as gathers, scatter-adds and shifted products). A custom op with
   none makes the export fail with :class:`OnnxExportError` naming the op and the fix.
3. ``torch.onnx.export`` (the dynamo exporter, onnxscript) writes the graph; the file is written
   atomically.
4. The file is run in ONNX Runtime (CPU) on the example inputs and on a **second size** (each dynamic
   batch dimension + 1, each other dynamic dimension doubled) and compared with the PyTorch model run on
   the same inputs. The export succeeds only if for every output

       max |ONNX − PyTorch| ≤ atol + rtol · max |PyTorch|        (defaults atol = 1e-4, rtol = 1e-3)

   otherwise :class:`OnnxExportError` says by how much it missed, and no file is left behind.

Needs the optional extra: ``pip install 'compresskit[onnx]'`` (onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from compresskit._modes import eval_mode
from compresskit.io import atomic_write_bytes

__all__ = ["export_onnx", "OnnxExportError", "OnnxExportResult", "onnx_available",
           "register_onnx_decomposition", "onnx_decompositions", "DEFAULT_RTOL", "DEFAULT_ATOL",
           "ONNX_EXTRA"]

DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-4
ONNX_EXTRA = "pip install 'compresskit[onnx]'"
_NEEDED = ("onnx", "onnxruntime", "onnxscript")
_STANDARD_NAMESPACES = {"aten", "prims", "_operator", "builtins", "math"}

_DECOMPOSITIONS: dict[Any, Callable[..., Any]] = {}


class OnnxExportError(RuntimeError):
    """The model could not be exported to ONNX, or ONNX Runtime did not reproduce it."""

    def __init__(self, message: str, final: bool = False) -> None:
        super().__init__(message)
        self.final = final  #: True when fewer dynamic sizes cannot help (an op without ONNX form)


def onnx_available() -> str | None:
    """None when the ``[onnx]`` extra is installed, else a sentence saying what is missing."""
    missing = [m for m in _NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        return f"ONNX export needs {', '.join(missing)}: {ONNX_EXTRA}"
    return None


def _overload(op: Any) -> Any:
    if isinstance(op, torch._ops.OpOverloadPacket):
        return op.default
    if isinstance(op, torch._ops.OpOverload):
        return op
    raise TypeError(f"register_onnx_decomposition: op must be a torch.ops operator (e.g. "
                    f"torch.ops.my_ns.my_op or torch.ops.my_ns.my_op.default), got {op!r}")


def register_onnx_decomposition(op: Any, fn: Callable[..., Any]) -> None:
    """Export ``op`` (a ``torch.library`` custom op) to ONNX as ``fn``: a function with the op's signature
    written in standard torch ops (gather, scatter_add, grid_sample, slicing, arithmetic) that ONNX can
    express. ``fn`` must compute what the op computes; :func:`export_onnx` checks the result."""
    if not callable(fn):
        raise TypeError(f"register_onnx_decomposition: fn must be callable, got {type(fn).__name__}")
    _DECOMPOSITIONS[_overload(op)] = fn


def onnx_decompositions() -> dict[str, Callable[..., Any]]:
    """``{op name: decomposition}`` of every registered custom op (plugins register theirs on load)."""
    return {str(op): fn for op, fn in _DECOMPOSITIONS.items()}


@dataclass
class OnnxExportResult:
    """What :func:`export_onnx` wrote and how it was checked."""

    path: Path
    input_names: list[str]
    output_names: list[str]
    #: per input, the shape as ONNX stores it: an int for a fixed dimension, a name for a dynamic one
    input_shapes: list[list[int | str]]
    #: each check: ``{"inputs": shapes, "max_abs_error": e, "bound": b, "ok": bool}`` or ``{"skipped": why}``
    checks: list[dict[str, Any]] = field(default_factory=list)
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    decomposed: list[str] = field(default_factory=list)  #: custom ops exported through a decomposition
    notes: list[str] = field(default_factory=list)

    @property
    def dynamic(self) -> bool:
        """True when some input dimension is dynamic in the file."""
        return any(isinstance(d, str) for s in self.input_shapes for d in s)

    def summary(self) -> str:
        shapes = ", ".join("×".join(str(d) for d in s) for s in self.input_shapes)
        done = [c for c in self.checks if "ok" in c]
        worst = max((c["max_abs_error"] for c in done), default=0.0)
        sizes = "; ".join("×".join(map(str, c["inputs"][0])) if c.get("inputs") else "?" for c in done)
        text = (f"wrote {self.path} (inputs {shapes}); ONNX Runtime matches PyTorch on {len(done)} size(s) "
                f"({sizes}): max |error| {worst:.2e} ≤ {self.atol:g} + {self.rtol:g}·max|output|")
        skipped = [c["skipped"] for c in self.checks if "skipped" in c]
        if skipped:
            text += "; " + "; ".join(skipped)
        if self.decomposed:
            text += f"; custom ops as standard ONNX ops: {', '.join(self.decomposed)}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "input_names": self.input_names, "output_names": self.output_names,
                "input_shapes": self.input_shapes, "checks": self.checks, "rtol": self.rtol,
                "atol": self.atol, "decomposed": self.decomposed, "notes": self.notes}


# ------------------------------------------------------------------------------------------------ export
def _as_tuple(example_inputs: Any) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        odd = [type(x).__name__ for x in example_inputs if not isinstance(x, torch.Tensor)]
        if odd:
            raise TypeError(f"example_inputs: ONNX export takes tensor inputs, but the model's inputs "
                            f"include {', '.join(sorted(set(odd)))}; export a wrapper whose forward takes "
                            "the tensors (e.g. forward(self, x): return self.model({'x': x}))")
        return tuple(example_inputs)
    raise TypeError("example_inputs: expected a tensor or a tuple of the model's positional inputs, "
                    f"got {type(example_inputs).__name__}")


def _tensors(out: Any) -> list[torch.Tensor]:
    """The tensors of a model output (tensor, tuple/list/dict of them), in ONNX's output order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _tensors(v)]
    return []


def _custom_ops(ep: Any) -> list[Any]:
    """The operators of an exported program outside the standard namespaces, in graph order."""
    found: dict[Any, None] = {}
    for node in ep.graph.nodes:
        target = node.target
        if node.op == "call_function" and isinstance(target, torch._ops.OpOverload) \
                and target.namespace not in _STANDARD_NAMESPACES:
            found[target] = None
    return list(found)


class _Decomposing(TorchFunctionMode):
    """Calls of a registered custom op run its decomposition instead, so ``torch.export`` records standard
    ops directly (cheaper than ``run_decompositions`` afterwards, which retraces the whole program)."""

    def __init__(self) -> None:
        super().__init__()
        self.table: dict[Any, tuple[str, Callable[..., Any]]] = {}
        for op, fn in _DECOMPOSITIONS.items():
            self.table[op] = self.table[op.overloadpacket] = (str(op.name()), fn)
        self.used: dict[str, None] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        entry = self.table.get(func)
        if entry is not None:
            self.used[entry[0]] = None
            return entry[1](*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


def _torch_export(model: nn.Module, inputs: tuple, level: str, mode: _Decomposing | None = None) -> Any:
    """``torch.export`` with every dimension (``"all"``), the batch (``"batch"``) or none dynamic."""
    from torch.export import Dim

    shapes = None
    if level != "static":
        shapes = tuple({d: Dim.AUTO for d in range(t.dim() if level == "all" else min(t.dim(), 1))}
                       if isinstance(t, torch.Tensor) else None for t in inputs)
    from compresskit.graph.trace import keep_model_state

    with warnings.catch_warnings(), mode or contextlib.nullcontext(), keep_model_state(model):
        warnings.simplefilter("ignore")  # (the model's shape-keyed caches must not keep fake tensors)
        return torch.export.export(model, inputs, dynamic_shapes=shapes, strict=False)


def _export_inputs(inputs: tuple) -> tuple:
    """The example inputs with a batch of 1 repeated to 2 (a size-1 dimension cannot stay dynamic)."""
    tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
    if tensors and all(t.dim() >= 2 and t.shape[0] == 1 for t in tensors):
        return tuple(torch.cat([t, t]) if isinstance(t, torch.Tensor) else t for t in inputs)
    return inputs


def _op_fix(op: Any) -> str:
    return (f"register a decomposition in standard torch ops with compresskit.deploy."
            f"register_onnx_decomposition(torch.ops.{op.namespace}.{op._opname}.default, fn), or load the "
            "plugin that defines the op so that it registers its own")


def _exporter_ops(message: str) -> list[str]:
    """Operator names an exporter error message mentions (``aten::foo``, ``aten.foo.default``)."""
    names = re.findall(r"\b([a-z_][\w]*(?:::|\.)[a-z_][\w]*(?:\.[\w]+)?)", message)
    return list(dict.fromkeys(n for n in names if n.split(":")[0].split(".")[0] in
                              {"aten", "prims", "torchvision"} or "::" in n))[:5]


_LEVELS = {"all": "batch and spatial sizes dynamic", "batch": "batch dynamic, other sizes fixed",
           "static": "every size fixed"}


def export_onnx(model: nn.Module, example_inputs: Any, path: str | os.PathLike, *, dynamic: bool = True,
                rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL, second_size: bool = True,
                opset: int | None = None) -> OnnxExportResult:
    """Export ``model`` to the ONNX file ``path`` and check it in ONNX Runtime (see the module docstring).

    ``dynamic``: keep batch and spatial sizes dynamic where the model allows; when the file then fails at
    the second size (the model bakes a size into Python ints, or accepts fewer sizes than the export
    could see) it is exported again with the batch alone dynamic, then with every size fixed, and the
    result says why (``notes``). ``dynamic=False``: the example sizes only. ``second_size``: also check
    at a second size. Raises :class:`OnnxExportError` (naming the op or the size that failed) and leaves
    no file on failure.
    """
    missing = onnx_available()
    if missing:
        raise ImportError(missing)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if rtol < 0 or atol < 0:
        raise ValueError(f"rtol, atol: expected tolerances >= 0, got rtol={rtol}, atol={atol}")
    from compresskit.plugins import load_plugins

    load_plugins()  # the plugins register the ONNX decompositions of their ops
    inputs = _as_tuple(example_inputs)
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"path: expected a file name ending in .onnx, got {str(path)!r}")
    notes: list[str] = []
    levels = ["all", "batch", "static"] if dynamic else ["static"]
    with eval_mode(model), torch.no_grad():
        for i, level in enumerate(levels):
            last = i == len(levels) - 1
            try:
                data, result = _export_level(model, inputs, level, rtol, atol, second_size, opset)
            except _SecondSizeFailed as e:
                if last:
                    raise OnnxExportError(str(e)) from e
                notes.append(f"{_LEVELS[level]}: {e}; exported again with {_LEVELS[levels[i + 1]]}")
                continue
            except OnnxExportError as e:
                if last or e.final:
                    raise
                notes.append(f"{_LEVELS[level]}: {e}; exported again with {_LEVELS[levels[i + 1]]}")
                continue
            break
    if level == "all":  # asked dynamic, but torch.export may still have fixed sizes the model computes with
        fixed = [f"input {k} dim {d} = {size}" for k, shape in enumerate(result.input_shapes)
                 for d, size in enumerate(shape) if d >= 2 and isinstance(size, int)]
        if fixed:
            notes.append("torch.export fixed " + ", ".join(fixed) + " (forward computes with these sizes as "
                         "constants, e.g. torch.tensor(x.shape) or a cache keyed by shape): the file accepts "
                         "only them")
    result.path, result.notes = path, notes + result.notes
    atomic_write_bytes(data, path)
    return result


class _SecondSizeFailed(Exception):
    """The file works at the example size but not at the second: export with fewer dynamic sizes."""


def _export_level(model: nn.Module, inputs: tuple, level: str, rtol: float, atol: float, second: bool,
                  opset: int | None) -> tuple[bytes, OnnxExportResult]:
    mode = _Decomposing()
    ep = _export_program(model, inputs, level, mode)
    ops = _custom_ops(ep)  # called without the Python-level op object: decompose in the program
    table = {op: _DECOMPOSITIONS[op] for op in ops if op in _DECOMPOSITIONS}
    if table:
        ep = ep.run_decompositions(table)
    data = _proto_bytes(_to_onnx(ep, [op for op in ops if op not in table], opset))
    result = _check(model, inputs, data, rtol, atol, second and level != "static")
    result.decomposed = list(dict.fromkeys([*mode.used, *(str(op.name()) for op in table)]))
    return data, result


def _export_program(model: nn.Module, inputs: tuple, level: str, mode: _Decomposing | None = None) -> Any:
    trial = _export_inputs(inputs) if level != "static" else inputs
    try:
        try:
            return _torch_export(model, trial, level, mode)
        except Exception:
            if trial is inputs:
                raise
            return _torch_export(model, inputs, level, mode)  # the model fixes the batch it was given
    except Exception as e:
        raise OnnxExportError(f"ONNX export: torch.export could not capture the model "
                              f"({type(e).__name__}: {_first_line(e)}); data-dependent Python control "
                              "flow, numpy or .item() in forward must become torch ops") from e


def _first_line(e: BaseException) -> str:
    lines = [x for x in str(e).strip().splitlines() if x.strip()]
    return lines[0][:300] if lines else ""


def _to_onnx(ep: Any, undecomposed: Sequence[Any], opset: int | None) -> Any:
    kw: dict[str, Any] = {"dynamo": True, "verbose": False}
    if opset is not None:
        kw["opset_version"] = opset
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            return torch.onnx.export(ep, **kw)
    except Exception as e:
        if undecomposed:
            names = ", ".join(str(op.name()) for op in undecomposed)
            raise OnnxExportError(f"ONNX export: custom op {names} has no ONNX form; "
                                  f"{_op_fix(undecomposed[0])}", final=True) from e
        named = _exporter_ops(str(e))
        which = f"op {', '.join(named)}" if named else "an op"
        raise OnnxExportError(f"ONNX export: {which} could not be converted ({type(e).__name__}: "
                              f"{_first_line(e)}); rewrite it in ops ONNX supports or register a "
                              "decomposition with compresskit.deploy.register_onnx_decomposition") from e


def _proto_bytes(onnx_program: Any) -> bytes:
    proto = onnx_program.model_proto
    return proto.SerializeToString()


# ------------------------------------------------------------------------------------------------- check
def session(data: bytes | str | os.PathLike, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session of a model file (or its bytes); ``threads``: intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    src = data if isinstance(data, bytes) else str(data)
    return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])


def run_session(sess: Any, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``sess`` on torch inputs (by position), outputs as CPU tensors."""
    names = [i.name for i in sess.get_inputs()]
    feed = {n: t.detach().cpu().numpy() for n, t in zip(names, inputs)}
    return [torch.from_numpy(o) for o in sess.run(None, feed)]


def _shape_of(arg: Any) -> list[int | str]:
    out: list[int | str] = []
    for d in arg.shape:
        text = str(d)
        out.append(int(text) if text.isdigit() else text)
    return out


def _varied(t: torch.Tensor, d: int) -> bool:
    """Dimensions the second size changes: the batch, and the spatial ones of an (N, C, *spatial) image
    (channels stay: a model that accepts other channel counts rarely means it)."""
    return d == 0 or t.dim() < 4 or d >= 2


def _second_inputs(inputs: tuple, shapes: list[list[int | str]]) -> tuple | None:
    """Inputs at another size: each dynamic batch dimension + 1, each dynamic spatial one doubled (which
    keeps any divisibility the model needs); a dimension given as an expression of others follows them."""
    import sympy

    new: dict[str, int] = {}
    for t, shape in zip(inputs, shapes):
        for d, s in enumerate(shape):
            if isinstance(s, str) and s.isidentifier() and s not in new:
                v = int(t.shape[d])
                new[s] = (v + 1 if d == 0 else 2 * v) if _varied(t, d) else v
    if all(int(t.shape[d]) == new.get(s) for t, shape in zip(inputs, shapes)
           for d, s in enumerate(shape) if isinstance(s, str) and s in new):
        return None
    out = []
    gen = torch.Generator().manual_seed(1)
    for t, shape in zip(inputs, shapes):
        size = []
        for s in shape:
            if isinstance(s, int):
                size.append(s)
            elif s in new:
                size.append(new[s])
            else:
                try:
                    size.append(int(sympy.sympify(s).subs(new)))
                except (TypeError, ValueError, sympy.SympifyError):
                    return None
        if t.is_floating_point():
            out.append(torch.rand(size, generator=gen, dtype=t.dtype).to(t.device))
        else:
            out.append(torch.zeros(size, dtype=t.dtype, device=t.device))
    return tuple(out)


def _compare(want: Any, got: list[torch.Tensor], rtol: float, atol: float) -> tuple[float, float, bool]:
    ref = _tensors(want)
    if len(ref) != len(got):
        raise OnnxExportError(f"ONNX export: the file has {len(got)} outputs, the model {len(ref)}")
    worst, bound_of_worst, ok = 0.0, atol, True
    for r, g in zip(ref, got):
        r = r.detach().cpu()
        if tuple(r.shape) != tuple(g.shape):
            raise OnnxExportError(f"ONNX export: ONNX Runtime output shape {tuple(g.shape)} differs from "
                                  f"PyTorch's {tuple(r.shape)}")
        if not r.is_floating_point():
            err = float((r != g.to(r.dtype)).sum())
            bound = 0.0
        else:
            diff = (r.double() - g.double()).abs()
            err = float(diff.max()) if diff.numel() else 0.0
            bound = atol + rtol * (float(r.abs().max()) if r.numel() else 0.0)
        if not err <= bound:
            ok = False
        if err >= worst:
            worst, bound_of_worst = err, bound
    return worst, bound_of_worst, ok


def _check(model: nn.Module, inputs: tuple, data: bytes, rtol: float, atol: float,
           second: bool) -> OnnxExportResult:
    sess = session(data)
    shapes = [_shape_of(a) for a in sess.get_inputs()]
    result = OnnxExportResult(Path(), [a.name for a in sess.get_inputs()],
                              [o.name for o in sess.get_outputs()], shapes, rtol=rtol, atol=atol)
    if len(shapes) != len(inputs):
        raise OnnxExportError(f"ONNX export: the file takes {len(shapes)} inputs, the model {len(inputs)} "
                              "(non-tensor or unused inputs are not supported)")
    trials = [("example", inputs)]
    if second:
        other = _second_inputs(inputs, shapes)
        if other is None:
            result.checks.append({"skipped": "no second size: the model fixes every batch and spatial size"})
        else:
            trials.append(("second", other))
    for label, xs in trials:
        try:
            want = model(*xs)
        except Exception as e:
            if label == "example":
                raise
            raise _SecondSizeFailed(f"the PyTorch model does not run at {[list(t.shape) for t in xs]} "
                                    f"({type(e).__name__}), though the exported graph left those sizes "
                                    "open") from e
        try:
            got = run_session(sess, xs)
        except Exception as e:
            if label == "second":
                raise _SecondSizeFailed(f"ONNX Runtime failed at {[list(t.shape) for t in xs]} "
                                        f"({_first_line(e)[:160]})") from e
            shapes_text = [list(t.shape) for t in xs]
            raise OnnxExportError(f"ONNX export: ONNX Runtime failed on the {label} inputs {shapes_text} "
                                  f"({type(e).__name__}: {_first_line(e)})") from e
        err, bound, ok = _compare(want, got, rtol, atol)
        result.checks.append({"inputs": [list(t.shape) for t in xs], "max_abs_error": err, "bound": bound,
                              "ok": ok})
        if not ok and label == "second":
            raise _SecondSizeFailed(f"ONNX Runtime differs from PyTorch at {[list(t.shape) for t in xs]} "
                                    f"(max |error| {err:.3g} > {bound:.3g})")
        if not ok:
            raise OnnxExportError(f"ONNX export: ONNX Runtime differs from PyTorch on the {label} inputs "
                                  f"{[list(t.shape) for t in xs]}: max |error| {err:.3g} > {bound:.3g} "
                                  f"(atol {atol:g} + rtol {rtol:g}·max|output|); nothing was written. "
                                  "Pass looser rtol/atol if this is rounding, else check the op's ONNX "
                                  "decomposition", final=True)  # fewer dynamic sizes do not change values
    return result
