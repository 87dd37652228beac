"""Saving and loading compressed models without running code from the file.

A file written by :func:`save_result` is a ``torch.save`` dict that ``torch.load(weights_only=True)`` reads:
tensors, numbers, strings, bytes. It holds the weights (a state_dict) and one of two descriptions of the
architecture, neither of which is pickled Python:

* ``registered``: a model built by ``ck.create_model``: its name, factory kwargs, example input shapes and
  the kept width of every channel group. :func:`load_model` creates the full model, traces it and shrinks
  it the same way.
* ``program``: any other model, as a ``torch.export`` program (ATen operators and their arguments, JSON).
  Before it is deserialised every operator is checked to be a registered torch operator (or pure
  arithmetic on sizes) and every size expression to be arithmetic on size symbols, so a crafted file can
  name no Python function; its guards (Python source) are dropped. The loaded module needs neither the
  model's class nor its source and behaves as the model did in eval mode.

For a ``program`` file a pickled copy of the module (``pickled_module``, opaque bytes) is kept beside it
(a registered model needs none: its class is in the registry). It is unpickled only
by ``load_model(path, trusted=True)``, which returns the original class (to fine-tune it in train mode);
unpickling runs code named by the file, so only for files you trust. A model that cannot be exported is
saved with the pickle alone (with a warning) and needs ``trusted=True`` to load.
"""

from __future__ import annotations

import io
import json
import os
import re
import tokenize
import types
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compresskit._modes import eval_mode
from compresskit.checks import output_difference
from compresskit.io import atomic_torch_save

__all__ = ["save_result", "load_model", "UnsafeFileError", "FILE_FORMAT", "FILE_FORMATS"]

FILE_FORMAT = "compresskit.compressed/2"
FILE_FORMATS = ("compresskit.compressed/1", FILE_FORMAT)


class UnsafeFileError(ValueError):
    """The file needs the full unpickler (it names Python objects): refused unless ``trusted=True``."""


# ----------------------------------------------------------------------------------------------- save
def save_result(result: Any, path: str | os.PathLike) -> Path:
    """Write ``result.model`` (a :class:`~compresskit.api.CompressResult`) atomically to ``path``."""
    model: nn.Module = result.model
    state = model.state_dict()
    payload: dict[str, Any] = {
        "format": FILE_FORMAT,
        "state_dict": state,
        "shapes": {k: list(v.shape) for k, v in state.items()},
        "registered": _plain_spec(result.rebuild),
        "report": result.report.to_dict(),
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "program": None,
        "pickled_module": None,
    }
    if payload["registered"] is None:
        payload["pickled_module"] = _pickle_bytes(model)
        try:
            payload["program"] = _export(model, _input_specs(result))
        except Exception as e:  # data-dependent Python, numpy, ops export cannot see
            warnings.warn(
                f"CompressResult.save: the model could not be exported with torch.export "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); the file holds only a "
                "pickled module, which ck.load opens with trusted=True alone",
                stacklevel=3,
            )
    return atomic_torch_save(payload, path)


def _plain_spec(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """The registered-model spec if ``torch.load(weights_only=True)`` reads it back unchanged, else None
    (with a warning: the model is then saved as an exported program, like an unregistered one)."""
    if spec is None:
        return None
    buf = io.BytesIO()
    try:
        torch.save(spec, buf)
        buf.seek(0)
        ok = torch.load(buf, weights_only=True) == spec
    except Exception:  # a Path, a class, a function among the factory kwargs
        ok = False
    if not ok:
        warnings.warn(f"CompressResult.save: the factory kwargs of registered model {spec.get('name')!r} "
                      f"are not plain values (numbers, strings, lists, dicts): {spec.get('kwargs')!r}; "
                      "saving the model as an exported program instead of a registered-model spec",
                      stacklevel=4)
        return None
    return spec


def _input_specs(result: Any) -> list[tuple[list[int], str]]:
    """``[(shape, dtype name)]`` of the example inputs: the rebuild spec's, else the shapes of the report
    with the dtypes ``ck.compress`` recorded (``"float32"`` for a result that has none)."""
    if result.rebuild is not None and result.rebuild.get("inputs"):
        return [(list(shape), str(dtype)) for shape, dtype in result.rebuild["inputs"]]
    shapes = result.report.example_input_shapes
    dtypes = list(getattr(result, "input_dtypes", None) or [])
    dtypes += ["float32"] * (len(shapes) - len(dtypes))
    return [(list(s), d) for s, d in zip(shapes, dtypes)]


def _example_input(shape: list[int], dtype_name: str, float_dtype: torch.dtype, gen: torch.Generator,
                   ) -> torch.Tensor:
    """Uniform [0, 1) floats (in the model's float dtype) or zeros (token ids, masks, counts)."""
    dtype = _dtype(dtype_name, "the example inputs")
    if dtype.is_floating_point:
        return torch.rand(shape, generator=gen, dtype=float_dtype)
    if dtype.is_complex:
        return torch.rand(shape, generator=gen, dtype=dtype)
    return torch.zeros(shape, dtype=dtype)  # index 0 is valid for any Embedding / gather


def _dtype(name: Any, where: str) -> torch.dtype:
    """``torch.<name>`` when it is a dtype; ValueError naming ``where`` otherwise."""
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{where}: input dtype {name!r} is not a torch dtype name (expected e.g. 'float32', "
                         "'int64')")
    return dtype


def _pickle_bytes(model: nn.Module) -> bytes | None:
    buf = io.BytesIO()
    try:
        torch.save(model, buf)
    except Exception as e:  # a class defined in a function, a lambda attribute
        warnings.warn(f"CompressResult.save: the module cannot be pickled ({type(e).__name__}: {e})",
                      stacklevel=4)
        return None
    return buf.getvalue()


def _export(model: nn.Module, specs: list[tuple[list[int], str]]) -> dict[str, Any]:
    """The model as a torch.export program (JSON bytes and its lifted constants), checked on inputs of the
    example inputs' shapes and dtypes."""
    from torch._export.serde.serialize import serialize
    from torch.export import Dim

    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    gen = torch.Generator(device="cpu").manual_seed(0)
    shapes = [s for s, _ in specs]
    inputs = tuple(_example_input(s, d, dtype, gen).to(device) for s, d in specs)
    with eval_mode(model):
        dynamic = tuple({d: Dim.AUTO for d in range(len(s))} for s in shapes)
        ep = torch.export.export(model, inputs, dynamic_shapes=dynamic, strict=False)
        with torch.no_grad():
            want, got = model(*inputs), ep.module()(*inputs)
    if output_difference(want, got, "output", rtol=1e-5, atol=1e-6) is not None:
        raise RuntimeError("the exported program does not reproduce the model's outputs")
    art = serialize(ep, serialize_state_dict=False, serialize_constants=False, serialize_example_inputs=False)
    constants = {k: v for k, v in ep.constants.items()}
    if not all(isinstance(v, torch.Tensor) for v in constants.values()):
        raise TypeError("the program holds script objects")
    if set(ep.state_dict) != set(model.state_dict()):
        raise RuntimeError("the program's weights are not the model's state_dict")
    return {"json": art.exported_program, "constants": constants, "input_shapes": [list(s) for s in shapes],
            "input_dtypes": [str(d) for _, d in specs]}


# ----------------------------------------------------------------------------------------------- load
def load_model(path: str | os.PathLike, *, trusted: bool = False) -> nn.Module:
    """Rebuild the model saved by :func:`save_result` (in eval mode).

    Without ``trusted`` nothing in the file is unpickled beyond tensors and plain values; a file that
    needs more (an old-format file, a model that could not be exported, a crafted file) raises
    :class:`UnsafeFileError` naming the Python objects it would import.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"load: {str(path)!r} is a directory; expected a file written by "
                                "CompressResult.save (e.g. out_dir/compressed.pt)")
    if not path.is_file():
        raise FileNotFoundError(f"load: {str(path)!r} does not exist")
    data = _read(path, trusted)
    if not isinstance(data, Mapping) or data.get("format") not in FILE_FORMATS:
        raise ValueError(f"load: {str(path)!r} is not a file written by CompressResult.save "
                         f"(expected format {FILE_FORMAT!r})")
    if data.get("registered") is not None:
        model = rebuild_registered(data["registered"], data["shapes"], path=path)
    elif trusted and isinstance(data.get("module"), nn.Module):  # format 1
        model = data["module"]
    elif trusted and data.get("pickled_module") is not None and (model := _unpickle(data, path)) is not None:
        pass
    elif data.get("program") is not None:
        return _load_program(data["program"], data["state_dict"], path)
    elif data.get("pickled_module") is not None:
        raise UnsafeFileError(f"load: {str(path)!r} holds only a pickled module ({data.get('class')}); "
                              f"{_TRUST}")
    else:
        raise ValueError(f"load: {str(path)!r} holds neither a registered model spec nor a program")
    from compresskit.registry import load_state_dict_strict

    load_state_dict_strict(model, data["state_dict"])
    return model.eval()


def _unpickle(data: Mapping[str, Any], path: Path) -> nn.Module | None:
    """The original module (``trusted=True``), or None with a warning when its class cannot be imported
    here and the file has a program to fall back on."""
    try:
        return torch.load(io.BytesIO(data["pickled_module"]), map_location="cpu", weights_only=False)
    except Exception as e:
        if data.get("program") is None:
            raise ValueError(f"load: the pickled {data.get('class')} in {str(path)!r} cannot be rebuilt here "
                             f"({type(e).__name__}: {e}); is its class importable?") from e
        warnings.warn(f"load(trusted=True): {data.get('class')} cannot be imported here ({e}); returning the "
                      "model rebuilt from its exported program instead", stacklevel=3)
        return None


_TRUST = ("unpickling it runs code named by the file. If you trust where the file came from, pass "
          "ck.load(path, trusted=True)")


def _read(path: Path, trusted: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        try:  # lists the globals a full unpickle would import, without importing them
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:
            names = []
        if not names:
            raise ValueError(f"load: {str(path)!r} could not be read as a torch file: {e}") from e
    if trusted:
        return torch.load(path, map_location="cpu", weights_only=False)
    raise UnsafeFileError(f"load: {str(path)!r} contains pickled Python objects ({', '.join(names)}); "
                          f"{_TRUST}. Nothing from it was run.")


def _load_program(program: Mapping[str, Any], state_dict: Mapping[str, Any], path: Path) -> nn.Module:
    from torch._export.serde.schema import ExportedProgram
    from torch._export.serde.serialize import ExportedProgramDeserializer, _bytes_to_dataclass

    try:
        doc = json.loads(bytes(program["json"]).decode("utf-8"))
        _check_program(doc)  # before anything is deserialised
        spec = _bytes_to_dataclass(ExportedProgram, json.dumps(doc).encode("utf-8"))
        specs = doc["graph_module"]["signature"]["input_specs"]
        params = {s["parameter"]["parameter_name"] for s in specs if "parameter" in s}
        weights = {k: nn.Parameter(v, requires_grad=v.is_floating_point()) if k in params else v
                   for k, v in state_dict.items()}
        ep = ExportedProgramDeserializer().deserialize(spec, weights, dict(program["constants"]), None)
        module = ep.module()
    except UnsafeFileError:
        raise
    except Exception as e:
        raise ValueError(f"load: the program in {str(path)!r} could not be rebuilt "
                         f"({type(e).__name__}: {e}); it may need the plugin that defines its operators, "
                         "or another torch version") from e
    module.train = types.MethodType(_fixed_mode_train, module)  # type: ignore[method-assign]
    module.eval = types.MethodType(lambda self: self.train(False), module)  # type: ignore[method-assign]
    return module.eval()


def _fixed_mode_train(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train``/``eval`` of a loaded program: flags only; the program keeps the eval behaviour it was
    exported with (BatchNorm statistics, no dropout)."""
    if mode:
        warnings.warn("a model loaded from an exported program keeps its eval-mode behaviour in train(); "
                      "load it with trusted=True to get the original class", stacklevel=2)
    for m in self.modules():
        m.training = mode
    return self


# -------------------------------------------------------------------------------- program validation
_OPERATOR_OK = {
    "getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs", "eq", "ne",
    "lt", "le", "gt", "ge", "and_", "or_", "xor", "not_", "invert", "lshift", "rshift",
}
_MATH_OK = {"ceil", "floor", "trunc", "sqrt", "exp", "log", "log2", "sin", "cos", "tan", "tanh", "pow"}
_SYMBOL = re.compile(r"^[a-z]+\d+$")


def _expr_names() -> set[str]:
    import sympy
    import torch.utils._sympy.functions as symfn

    names = {n for n, v in vars(symfn).items() if isinstance(v, type)}
    names |= {n for n in ("Symbol", "Integer", "Rational", "Float", "Mul", "Add", "Pow", "Mod", "Max", "Min",
                          "Abs", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan",
                          "LessThan", "GreaterThan", "Equality", "Unequality", "And", "Or", "Not",
                          "floor", "ceiling", "oo", "zoo", "nan", "true", "false")
              if hasattr(sympy, n)}
    return names | {"True", "False", "None", "positive", "integer", "nonnegative", "negative", "real",
                    "finite", "infinite", "zero", "nonzero", "odd", "even", "prime", "commutative"}


def _check_expr(expr: str, allowed: set[str]) -> None:
    """A size expression (``Mul(Integer(3), Symbol('s0', integer=True))``) names only sympy arithmetic:
    no attribute access, no subscripts, string literals only as symbol names."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(expr).readline))
    except (tokenize.TokenError, SyntaxError) as e:
        raise UnsafeFileError(f"load: size expression {expr!r} does not parse") from e
    for t in tokens:
        ok = (
            t.type in (tokenize.NUMBER, tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER)
            or (t.type == tokenize.NAME and t.string in allowed)
            or (t.type == tokenize.STRING and _SYMBOL.match(t.string[1:-1]) and t.string[0] in "'\"")
            or (t.type == tokenize.OP and t.string in {"(", ")", ",", "=", "+", "-", "*", "/", "**"})
        )
        if not ok:
            raise UnsafeFileError(f"load: size expression {expr!r} holds {t.string!r}, which is not "
                                  "arithmetic on sizes; refusing the file")


def _check_target(target: str) -> None:
    """An operator is a registered torch operator (``torch.ops.ns.op.overload``) or size arithmetic."""
    head, _, rest = target.partition(".")
    if head == "_operator" and rest in _OPERATOR_OK:
        return
    if head == "math" and rest in _MATH_OK:
        return
    if head == "torch" and re.fullmatch(r"_?sym_\w+", rest) and callable(getattr(torch, rest, None)):
        return
    if head == "torch" and rest.startswith("ops."):
        obj: Any = torch
        for part in rest.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                raise UnsafeFileError(f"load: the program calls {target}, which is not registered here; "
                                      "import the plugin that defines it first")
        ops = torch._ops
        if isinstance(obj, ops.OpOverload | ops.OpOverloadPacket | ops.HigherOrderOperator):
            return
    raise UnsafeFileError(f"load: the program calls {target!r}, which is not a torch operator; refusing "
                          "the file")


def _check_program(doc: Any) -> None:
    """Walk the serialised program: operators, size expressions, no Python objects or guard code."""
    allowed = _expr_names()
    if doc.get("guards_code"):
        doc["guards_code"] = []  # Python source compiled into a guard function: never run it
    for key in (doc.get("range_constraints") or {}):
        if not _SYMBOL.match(key):
            raise UnsafeFileError(f"load: range constraint on {key!r} is not a size symbol; refusing it")

    def walk(o: Any) -> None:
        if isinstance(o, dict):
            for k, v in o.items():
                if k == "target" and isinstance(v, str):
                    _check_target(v)
                elif k == "expr_str" and isinstance(v, str):
                    _check_expr(v, allowed)
                elif k in ("as_custom_obj", "custom_obj_values") and v:
                    raise UnsafeFileError("load: the program holds script objects; refusing the file")
                else:
                    walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(doc)


# ------------------------------------------------------------------------------------------ registered
def rebuild_registered(spec: Mapping[str, Any], shapes: Mapping[str, list[int]], *,
                       path: str | os.PathLike | None = None) -> nn.Module:
    """``ck.create_model(name, **kwargs)``, traced on zero inputs and shrunk to the stored widths."""
    from compresskit.graph.trace import trace
    from compresskit.registry import create_model
    from compresskit.shrink.surgery import shrink

    where = f"load: {str(path)!r}" if path is not None else "load"
    dtypes = [_dtype(dtype, where) for _, dtype in spec["inputs"]]  # before any model code runs
    full = create_model(spec["name"], **spec["kwargs"])
    inputs = tuple(torch.zeros(shape, dtype=dt) for (shape, _), dt in zip(spec["inputs"], dtypes))
    graph = trace(full, inputs)
    sizes = {str(g.id): g for g in graph.groups}
    keep = {}
    for gid, width in spec["widths"].items():
        if gid not in sizes:
            raise ValueError(f"load: model {spec['name']!r} traced without channel group {gid}; the file was "
                             "written by a different version of the model or of compresskit")
        if width < sizes[gid].size:
            keep[sizes[gid].id] = torch.arange(width)
    model = shrink(full, graph, keep=keep) if keep else full
    if spec.get("dropped"):  # compress(drop_unused=True) removed parameters forward never reads
        from compresskit.shrink.unused import drop_unused

        drop_unused(model, list(spec["dropped"]))
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    if got != {k: list(v) for k, v in shapes.items()}:
        diff = sorted(k for k in set(got) | set(shapes) if got.get(k) != list(shapes.get(k, [])))
        raise ValueError(f"load: rebuilding {spec['name']!r} gave different shapes for {diff[:5]}; the file "
                         "was written by a different version of the model or of compresskit")
    return model
