"""Saving and loading compressed models without running code from the file.

A file written by :func:`save_result` is a ``torch.save`` dict that ``torch.load(weights_only=True)`` reads:
tensors, numbers, strings, bytes. It holds the weights (a state_dict, with every tensor's shape and dtype)
and one of two descriptions of the architecture, neither of which is pickled Python:

* ``registered``: a rebuild recipe: the name of a model factory in the registry (``ck.register_model``), its
  factory kwargs, example input shapes and the kept width of every channel group. :func:`load_model`
  creates the full model, traces it and shrinks it the same way. A model built by ``ck.create_model`` gets
  one automatically; any other model can name one at save time (``result.save(path, model_name=...)``).
* ``program``: any other model, as a ``torch.export`` program (ATen operators and their arguments, JSON).
  Before it is deserialised every operator is checked to be a registered torch operator (or pure
  arithmetic on sizes) and every size expression to be bounded arithmetic on size symbols (see
  :mod:`compresskit.program_check` and :data:`LIMITS`), so a crafted file can name no Python function and
  cannot make the loader hang; its guards (Python source) are never run: compresskit checks their parsed
  form on each call. The loaded module needs neither the model's class nor its source and behaves as the
  model did in eval mode.

**Save verifies before it reports success**: the bytes about to be written are read back the way
``ck.load(path)`` reads them (weights-only, untrusted), the model is rebuilt from them and its outputs are
compared with the model's on the example inputs. A recipe that does not rebuild, or a program that does
not export, load or reproduce, moves on to the next description; when none works :class:`SaveError` names
every reason and the fixes, and nothing is written. ``allow_pickle=True`` writes a pickle-only file instead
(opened by ``ck.load(path, trusted=True)`` alone).

For a ``program`` file a pickled copy of the module (``pickled_module``, opaque bytes) is kept beside it.
It is unpickled only by ``load_model(path, trusted=True)``, which returns the original class (to fine-tune
it in train mode); unpickling runs code named by the file, so only for files you trust.
"""

from __future__ import annotations

import inspect
import io
import json
import math
import os
import types
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from compresskit._modes import eval_mode
from compresskit.checks import output_difference
from compresskit.io import atomic_write_bytes
from compresskit.program_check import LIMITS, UnsafeFileError, check_program, guard_hook, user_inputs

__all__ = ["save_result", "load_model", "UnsafeFileError", "SaveError", "FILE_FORMAT", "FILE_FORMATS",
           "LIMITS"]

FILE_FORMAT = "compresskit.compressed/2"
FILE_FORMATS = ("compresskit.compressed/1", FILE_FORMAT)

class SaveError(RuntimeError):
    """``CompressResult.save`` could not write a file that ``ck.load(path)`` rebuilds and that reproduces
    the model's outputs; the message lists why and the fixes. Nothing was written."""


# ----------------------------------------------------------------------------------------------- save
def save_result(result: Any, path: str | os.PathLike, *, model_name: str | None = None,
                model_kwargs: Mapping[str, Any] | None = None, allow_pickle: bool = False) -> Path:
    """Write ``result.model`` (a :class:`~compresskit.api.CompressResult`) atomically to ``path``, once the
    bytes are shown to load with ``ck.load(path)`` (untrusted) and reproduce the model's outputs.

    ``model_name``/``model_kwargs``: a rebuild recipe for a model not built by ``ck.create_model``: the
    registered factory that builds the *original* (uncompressed) architecture; the file then stores the
    recipe and the weights, and ``ck.load`` rebuilds the small model from the registry (no export, no
    pickle). ``allow_pickle``: when nothing else works, write the pickled module (``ck.load(path,
    trusted=True)`` only) instead of raising :class:`SaveError`.
    """
    if Path(path).is_dir():
        raise IsADirectoryError(f"save: {str(path)!r} is a folder; expected the path of a file to write "
                                f"(e.g. {str(Path(path) / 'compressed.pt')!r})")
    model: nn.Module = _on_cpu(result.model)  # the file is loaded on the CPU: export and check there
    state = model.state_dict()
    reasons: list[str] = []
    try:
        specs: list[tuple[Any, Any]] | None = _input_specs(result)
    except Exception as e:  # noqa: BLE001 - inputs recorded in a form that cannot be rebuilt
        specs = None
        reasons.append(f"the example inputs could not be rebuilt ({type(e).__name__}: {_first_line(e)})")
    base: dict[str, Any] = {
        "format": FILE_FORMAT,
        "state_dict": state,
        "shapes": {k: list(v.shape) for k, v in state.items()},
        "dtypes": {k: str(v.dtype).removeprefix("torch.") for k, v in state.items()},
        "registered": None,
        "report": result.report.to_dict(),
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "program": None,
        "pickled_module": None,
    }
    if specs is not None:
        recipe = _recipe(result, model_name, model_kwargs, specs, reasons)
        if recipe is not None:
            blob = _attempt({**base, "registered": recipe}, model, specs, "registered recipe "
                            f"{recipe['name']!r}", reasons)
            if blob is not None:
                return atomic_write_bytes(blob, path)
    pickled = _pickle_bytes(model)
    if specs is not None:
        for what, program, notes in _programs(model, specs, reasons):
            blob = _attempt({**base, "program": program, "pickled_module": pickled}, model, specs, what,
                            reasons, other_sizes=notes)
            if blob is not None:
                for note in notes:
                    warnings.warn(f"CompressResult.save: {note}", stacklevel=3)
                return atomic_write_bytes(blob, path)
    why = "; ".join(reasons) or "no description of the model could be made"
    if allow_pickle and pickled is not None:
        payload = {**base, "pickled_module": pickled}
        blob = _attempt(payload, model, specs, "pickled module", reasons, trusted=True)
        if blob is not None:
            warnings.warn(f"CompressResult.save: {str(path)!r} holds only a pickled module ({why}); "
                          "ck.load opens it with trusted=True alone", stacklevel=3)
            return atomic_write_bytes(blob, path)
        why = "; ".join(reasons)
    raise SaveError(
        f"save: nothing written to {str(path)!r}: no file that ck.load(path) rebuilds without unpickling "
        f"reproduces the model ({why}). Fixes: register a factory of the original architecture "
        "(@ck.register_model('my_net') def make(): return MyNet(...)) and build the model with "
        "ck.create_model('my_net') before ck.compress, or save with "
        "result.save(path, model_name='my_net', model_kwargs={...}); or make forward exportable "
        "(torch.export.export); or pass allow_pickle=True for a file only ck.load(path, trusted=True) opens")


def _on_cpu(model: nn.Module) -> nn.Module:
    """``model`` itself when its weights are on the CPU, else a CPU copy (the original stays where it is)."""
    if all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()]):
        return model
    import copy

    return copy.deepcopy(model).cpu()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def _attempt(payload: dict[str, Any], model: nn.Module, specs: list[tuple[Any, Any]] | None, what: str,
             reasons: list[str], *, trusted: bool = False, other_sizes: list[str] | None = None,
             ) -> bytes | None:
    """The file's bytes when they load back (as ``ck.load`` reads them) into a model whose outputs equal
    ``model``'s on the example inputs (and, given ``other_sizes`` (a list of notes), on inputs of twice
    their spatial size, unless the loaded model refuses those sizes with a clear error, which is noted);
    None with the reason appended. ``specs`` None (inputs that cannot be rebuilt): loading back is checked,
    outputs are not."""
    buf = io.BytesIO()
    try:
        torch.save(payload, buf)
    except Exception as e:
        reasons.append(f"the {what} could not be written ({type(e).__name__}: {_first_line(e)})")
        return None
    blob = buf.getvalue()
    try:
        data = _read_bytes(blob, trusted)
        loaded = _build(data, Path("<the file being saved>"), trusted)
    except Exception as e:
        reasons.append(f"the {what} does not load back ({type(e).__name__}: {_first_line(e)})")
        return None
    if specs is None:
        return blob
    problem = _compare(model, loaded, specs)
    if problem is None and other_sizes is not None:
        refused: list[str] = []
        problem = _compare(model, loaded, [(_doubled(s), d) for s, d in specs], refused=refused)
        if refused and not any("accepts only" in n for n in other_sizes):
            other_sizes.append(f"the {what} refuses inputs of other sizes that the model takes "
                               f"({refused[0]}); a rebuild recipe (save(path, model_name=...)) keeps every "
                               "size")
    if problem is not None:
        reasons.append(f"the {what} loads back but does not reproduce the model: {problem}")
        return None
    return blob


def _doubled(shape: Any) -> Any:
    """Spatial sizes (dims 2 and up of an ``(N, C, ...)`` input) doubled: another size to check on (each
    tensor's of a dict, list or tuple input)."""
    return _map_shapes(lambda s: [n * 2 if i >= 2 else n for i, n in enumerate(s)] if len(s) >= 3
                       else list(s), shape)


def _is_tensor_shape(shape: Any) -> bool:
    return isinstance(shape, list | tuple) and all(isinstance(n, int) and not isinstance(n, bool)
                                                   for n in shape)


def _map_shapes(fn: Any, shape: Any) -> Any:
    """``fn`` applied to each tensor shape of a recorded input shape (a dict/list of shapes for a dict,
    list or tuple input, as ``ck.compress`` records them); any other entry as it is."""
    if _is_tensor_shape(shape):
        return fn(list(shape))
    if isinstance(shape, Mapping):
        return {k: _map_shapes(fn, v) for k, v in shape.items()}
    if isinstance(shape, list | tuple):
        return [_map_shapes(fn, v) for v in shape]
    return shape


def _numel(shape: Any) -> int:
    """Entries of all the tensors of a recorded input shape."""
    total = [0]
    _map_shapes(lambda s: total.__setitem__(0, total[0] + math.prod(s)), shape)
    return total[0]


def _to_device(x: Any, device: torch.device) -> Any:
    """``x`` (a tensor, or a dict/list of them) on ``device``."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, Mapping):
        return {k: _to_device(v, device) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(_to_device(v, device) for v in x)
    return x


def _compare(model: nn.Module, loaded: nn.Module, specs: list[tuple[list[int], str]], *,
             refused: list[str] | None = None) -> str | None:
    """How ``loaded`` differs from ``model`` on random inputs of ``specs``; None when it does not. Given
    ``refused``: inputs of other sizes, which the model may not take (then nothing is compared) or the
    loaded model may refuse by name (a size its program fixed: its message is appended to ``refused``)."""
    other = refused is not None
    dtype, device = _float_dtype_device(model)
    gen = torch.Generator(device="cpu").manual_seed(1)
    if other and sum(_numel(s) for s, _ in specs) > 1 << 22:
        return None  # too large to run twice more at save time
    inputs = tuple(_example_input(s, d, dtype, gen) for s, d in specs)
    with eval_mode(model), torch.no_grad():
        try:
            want = model(*(_to_device(x, device) for x in inputs))
        except Exception as e:
            return None if other else f"the model fails ({type(e).__name__}: {_first_line(e)})"
        try:
            got = loaded(*inputs)
        except Exception as e:
            if refused is not None and _names_the_size(e):
                refused.append(_first_line(e))
                return None
            shapes = ", ".join(str(tuple(x.shape)) for x in tree_flatten(inputs)[0]
                               if isinstance(x, torch.Tensor))
            return (f"on inputs {shapes} it fails where the model does not ({type(e).__name__}: "
                    f"{_first_line(e)})")
    want = _to_cpu(want)
    tol = (1e-4, 1e-5) if device.type == "cpu" else (1e-3, 1e-4)
    problem = output_difference(want, got, "output", *tol)
    if problem is not None and other:
        problem += f" on inputs of other sizes {[tuple(s) for s, _ in specs]}"
    return problem


def _names_the_size(e: BaseException) -> bool:
    """A loaded program refusing a size with a message that says so (its own input check or a guard)."""
    text = str(e)
    return text.startswith("forward: inputs of sizes") or "Expected input at" in text


def _to_cpu(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.cpu()
    if isinstance(x, Mapping):
        return {k: _to_cpu(v) for k, v in x.items()}
    if isinstance(x, tuple | list):
        return type(x)(_to_cpu(v) for v in x) if not hasattr(x, "_fields") else type(x)(*map(_to_cpu, x))
    return x


def _recipe(result: Any, model_name: str | None, model_kwargs: Mapping[str, Any] | None,
            specs: list[tuple[list[int], str]], reasons: list[str]) -> dict[str, Any] | None:
    """The rebuild recipe: the one ``ck.compress`` recorded for a registered model, or the one named at save
    time (``model_name``), if ``torch.load(weights_only=True)`` reads it back unchanged."""
    if model_name is not None:
        from compresskit.models import MODELS

        if not isinstance(model_name, str) or model_name not in MODELS:
            raise ValueError(f"model_name: {model_name!r} is not a registered model; register the factory "
                             "of the original architecture with @ck.register_model(name) first")
        if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
            raise TypeError(f"model_kwargs: expected a mapping of factory keyword arguments, got "
                            f"{type(model_kwargs).__name__}")
        plan = getattr(result, "plan", None)
        widths = {str(g): int(w) for g, w in (getattr(plan, "widths", None) or {}).items()}
        spec: dict[str, Any] | None = {"name": model_name, "kwargs": dict(model_kwargs or {}),
                                       "inputs": [(list(s), d) for s, d in specs], "widths": widths}
    else:
        spec = result.rebuild
    if spec is None:
        return None
    spec = {**spec, "module": _factory_module(spec["name"])}
    buf = io.BytesIO()
    try:
        torch.save(spec, buf)
        buf.seek(0)
        ok = torch.load(buf, weights_only=True) == spec
    except Exception:  # a Path, a class, a function among the factory kwargs
        ok = False
    if not ok:
        reasons.append(f"the factory kwargs of registered model {spec.get('name')!r} are not plain values "
                       f"(numbers, strings, lists, dicts): {spec.get('kwargs')!r}")
        warnings.warn(f"CompressResult.save: the factory kwargs of registered model {spec.get('name')!r} "
                      f"are not plain values (numbers, strings, lists, dicts): {spec.get('kwargs')!r}; "
                      "saving the model as an exported program instead of a registered-model spec",
                      stacklevel=4)
        return None
    return spec


def _factory_module(name: str) -> str | None:
    from compresskit.models import MODELS

    try:
        return getattr(MODELS.get(name).factory, "__module__", None)
    except KeyError:
        return None


def _input_specs(result: Any) -> list[tuple[Any, Any]]:
    """``[(shape, dtype name)]`` of the example inputs: the rebuild spec's, else the shapes of the report
    with the dtypes ``ck.compress`` recorded (``"float32"`` for a result that has none). For a dict, list
    or tuple input the shape and dtype are the same structure of per-tensor entries."""
    if result.rebuild is not None and result.rebuild.get("inputs"):
        return [(_plain(shape), _plain(dtype)) for shape, dtype in result.rebuild["inputs"]]
    shapes = result.report.example_input_shapes
    dtypes = list(getattr(result, "input_dtypes", None) or [])
    dtypes += [_map_shapes(lambda s: "float32", s) for s in shapes[len(dtypes):]]
    return [(_plain(s), _plain(d)) for s, d in zip(shapes, dtypes)]


def _plain(x: Any) -> Any:
    """A recorded shape or dtype with tuples as lists and dtype names as ``str``."""
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x if isinstance(x, int) else str(x)


def _example_input(shape: Any, dtype_name: Any, float_dtype: torch.dtype, gen: torch.Generator,
                   ) -> Any:
    """Uniform [0, 1) floats (in the model's float dtype) or zeros (token ids, masks, counts); a dict or
    list of them for an input recorded as one (``shape`` and ``dtype_name`` the same structure)."""
    def make(s: list[int], dtype: torch.dtype) -> torch.Tensor:
        if dtype.is_floating_point:
            return torch.rand(s, generator=gen, dtype=float_dtype)
        if dtype.is_complex:
            return torch.rand(s, generator=gen, dtype=dtype)
        return torch.zeros(s, dtype=dtype)  # index 0 is valid for any Embedding / gather

    return _build_input(shape, dtype_name, make, "the example inputs")


def _build_input(shape: Any, dtype_name: Any, make: Any, where: str, depth: int = 0) -> Any:
    """``make(shape, dtype)`` for a recorded tensor input; the same structure of them for a recorded dict,
    list or tuple input (the dtype's structure leads; the shape must match it). ValueError naming
    ``where`` for anything else (e.g. a non-tensor input, which cannot be rebuilt)."""
    if depth > 8:
        raise ValueError(f"{where}: example input nested more than 8 levels deep")
    if isinstance(dtype_name, str):
        dtype = _dtype(dtype_name, where)
        return make(_shape(shape, where), dtype)
    if isinstance(dtype_name, Mapping) and isinstance(shape, Mapping) and set(shape) == set(dtype_name):
        return {k: _build_input(shape[k], dtype_name[k], make, where, depth + 1) for k in dtype_name}
    if isinstance(dtype_name, list | tuple) and isinstance(shape, list | tuple) \
            and len(shape) == len(dtype_name):
        return [_build_input(s, d, make, where, depth + 1) for s, d in zip(shape, dtype_name)]
    raise ValueError(f"{where}: input dtype {dtype_name!r} (shape {shape!r}) is not a torch dtype name "
                     "(expected e.g. 'float32', 'int64') nor a dict or list of them matching the shape")


def _dtype(name: Any, where: str) -> torch.dtype:
    """``torch.<name>`` when it is a dtype; ValueError naming ``where`` otherwise."""
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{where}: input dtype {name!r} is not a torch dtype name (expected e.g. 'float32', "
                         "'int64')")
    return dtype


def _float_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    return (param.dtype, param.device) if param is not None else (torch.float32, torch.device("cpu"))


def _pickle_bytes(model: nn.Module) -> bytes | None:
    buf = io.BytesIO()
    try:
        torch.save(model, buf)
    except Exception as e:  # a class defined in a function, a lambda attribute
        warnings.warn(f"CompressResult.save: the module cannot be pickled ({type(e).__name__}: {e})",
                      stacklevel=4)
        return None
    return buf.getvalue()


def _programs(model: nn.Module, specs: list[tuple[list[int], str]], reasons: list[str]) -> Any:
    """``(what, program, notes)`` for each way to export ``model``, most general first: every size dynamic
    (a batch of 1 exported as 2: torch.export fixes sizes 0 and 1), then the example's sizes as they are,
    then every size fixed (a program whose size conditions cannot be checked safely)."""
    shapes = [s for s, _ in specs]
    batch2 = [_map_shapes(lambda t: [2, *t[1:]] if t and t[0] == 1 else t, s) for s in shapes]
    tries = ([("exported program", batch2, True)] if batch2 != shapes else []) + [
        ("exported program", shapes, True), ("exported program with fixed sizes", shapes, False)]
    failed = []
    for what, attempt, dynamic in tries:
        try:
            program, notes = _export(model, specs, attempt, dynamic)
        except Exception as e:  # data-dependent Python, numpy, ops export cannot see
            failed.append(f"{type(e).__name__}: {_first_line(e)}")
            continue
        yield what, program, notes
    if failed:
        reasons.append(f"torch.export failed ({failed[-1]})")


def _export(model: nn.Module, specs: list[tuple[list[int], str]], shapes: list[list[int]], dynamic: bool,
            ) -> tuple[dict[str, Any], list[str]]:
    """The model as a torch.export program (JSON bytes and its lifted constants), checked on inputs of
    ``shapes`` and the example inputs' dtypes, and what the program cannot do that the model can (sizes it
    fixes, keyword arguments it drops)."""
    from torch._export.serde.serialize import serialize

    dtype, device = _float_dtype_device(model)
    gen = torch.Generator(device="cpu").manual_seed(0)
    inputs = tuple(_to_device(_example_input(s, d, dtype, gen), device) for s, (_, d) in zip(shapes, specs))
    ep = _export_once(model, inputs, dynamic)
    art = serialize(ep, serialize_state_dict=False, serialize_constants=False, serialize_example_inputs=False)
    constants = {k: v for k, v in ep.constants.items()}
    if not all(isinstance(v, torch.Tensor) for v in constants.values()):
        raise TypeError("the program holds script objects")
    if set(ep.state_dict) != set(model.state_dict()):
        raise RuntimeError("the program's weights are not the model's state_dict")
    fixed = _fixed_dims(ep, inputs)
    notes = []
    if fixed:
        notes.append(f"the exported program accepts only {', '.join(fixed)} (the model's code fixes these "
                     "sizes for torch.export, e.g. nn.LSTM's sequence length or a Linear after a flatten); "
                     "other sizes are refused by the loaded model. A rebuild recipe "
                     "(save(path, model_name=...)) keeps every size")
    kwargs = _dropped_kwargs(model, len(inputs))
    if kwargs:
        notes.append(f"forward's keyword arguments {', '.join(kwargs)} are fixed at their defaults in the "
                     "exported program (it takes the positional inputs only); ck.load(path, trusted=True) or "
                     "a rebuild recipe (save(path, model_name=...)) keeps them")
    return {"json": art.exported_program, "constants": constants, "input_shapes": shapes,
            "input_dtypes": [str(d) for _, d in specs], "fixed_sizes": fixed, "fixed_kwargs": kwargs}, notes


def _export_once(model: nn.Module, inputs: tuple[torch.Tensor, ...], dynamic: bool = True) -> Any:
    from torch.export import Dim

    from compresskit.graph.trace import keep_model_state

    with eval_mode(model), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The tensor attributes .* were assigned during export")
        dims = tuple(_dims(x, Dim.AUTO if dynamic else Dim.STATIC) for x in inputs)
        with keep_model_state(model):  # a shape-keyed cache must not keep export's fake tensors
            ep = torch.export.export(model, inputs, dynamic_shapes=dims, strict=False)
        with torch.no_grad():
            want, got = model(*inputs), ep.module()(*inputs)
    problem = output_difference(want, got, "output", rtol=1e-5, atol=1e-6)
    if problem is not None:
        raise RuntimeError(f"the exported program does not reproduce the model's outputs ({problem})")
    return ep


def _dims(x: Any, kind: Any) -> Any:
    """``dynamic_shapes`` entry of one input: ``{dim: kind}`` per tensor, in the input's structure."""
    if isinstance(x, torch.Tensor):
        return {d: kind for d in range(x.dim())}
    if isinstance(x, Mapping):
        return {k: _dims(v, kind) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(_dims(v, kind) for v in x)
    return None


def _fixed_dims(ep: Any, inputs: tuple[torch.Tensor, ...]) -> list[str]:
    """``"input 0 dim 1 = 5"`` for each input size the program fixed, except sizes of 1 and sizes a weight
    has (channels, features: fixed by the weights, not by the code)."""
    from torch.fx.experimental.symbolic_shapes import is_concrete_int

    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    user = [s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    vals = {n.name: n.meta.get("val") for n in placeholders}
    weight_dims = {int(n) for t in ep.state_dict.values() for n in t.shape}  # channels, features
    out = []
    for i, name in enumerate(user):
        val = vals.get(name)
        if not isinstance(val, torch.Tensor) or i >= len(tree_flatten(inputs)[0]):
            continue
        for d, size in enumerate(val.shape):
            if is_concrete_int(size) and int(size) > 1 and int(size) not in weight_dims:
                out.append(f"input {i} dim {d} = {int(size)}")
    return out


def _dropped_kwargs(model: nn.Module, n_inputs: int) -> list[str]:
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return []
    rest = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)][n_inputs:]
    return [f"{p.name}={p.default!r}" for p in rest if p.default is not p.empty]


# ----------------------------------------------------------------------------------------------- load
def load_model(path: str | os.PathLike, *, trusted: bool = False) -> nn.Module:
    """Rebuild the model saved by :func:`save_result` (in eval mode).

    Without ``trusted`` nothing in the file is unpickled beyond tensors and plain values; a file that
    needs more (an old-format file, a model that could not be exported, a crafted file) raises
    :class:`UnsafeFileError` naming the Python objects it would import. Every weight's shape and dtype is
    checked against what the architecture expects before the model is returned.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"load: {str(path)!r} is a directory; expected a file written by "
                                "CompressResult.save (e.g. out_dir/compressed.pt)")
    if not path.is_file():
        raise FileNotFoundError(f"load: {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"load: {str(path)!r} is empty (0 bytes): the save that wrote it was cut short or "
                         "the disk was full; save the model again")
    return _build(_read(path, trusted), path, trusted)


def _build(data: Any, path: Path, trusted: bool) -> nn.Module:
    if not isinstance(data, Mapping) or data.get("format") not in FILE_FORMATS:
        hint = ""
        if isinstance(data, Mapping) and data and all(isinstance(v, torch.Tensor) for v in data.values()):
            hint = ("; it looks like a plain state_dict: load it into the model it came from with "
                    "model.load_state_dict(torch.load(path)), or ck.create_model(name, checkpoint=path)")
        raise ValueError(f"load: {str(path)!r} is not a file written by CompressResult.save "
                         f"(expected format {FILE_FORMAT!r}){hint}")
    state = data.get("state_dict")
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"load: {str(path)!r} has no state_dict of tensors; the file is damaged")
    _check_recorded(data, state, path)
    if data.get("registered") is not None:
        model = rebuild_registered(data["registered"], data["shapes"], path=path)
    elif trusted and isinstance(data.get("module"), nn.Module):  # format 1
        model = data["module"]
    elif trusted and data.get("pickled_module") is not None and (model := _unpickle(data, path)) is not None:
        pass
    elif data.get("program") is not None:
        return _load_program(data["program"], state, path)
    elif data.get("pickled_module") is not None:
        raise UnsafeFileError(f"load: {str(path)!r} holds only a pickled module ({data.get('class')}); "
                              f"{_TRUST}")
    else:
        raise ValueError(f"load: {str(path)!r} holds neither a registered model spec nor a program")
    _check_weights(model.state_dict(), state, path)
    from compresskit.models import load_state_dict_strict

    load_state_dict_strict(model, state)
    return model.eval()


def _check_recorded(data: Mapping[str, Any], state: Mapping[str, torch.Tensor], path: Path) -> None:
    """The tensors must have the shapes and dtypes the file records for them (a damaged or edited file)."""
    shapes, dtypes = data.get("shapes") or {}, data.get("dtypes") or {}
    bad = [f"{k}: {tuple(v.shape)} {str(v.dtype).removeprefix('torch.')}, recorded "
           f"{tuple(shapes.get(k, v.shape))} {dtypes.get(k, str(v.dtype).removeprefix('torch.'))}"
           for k, v in state.items()
           if list(v.shape) != list(shapes.get(k, v.shape))
           or str(v.dtype).removeprefix("torch.") != dtypes.get(k, str(v.dtype).removeprefix("torch."))]
    if bad:
        raise ValueError(f"load: {str(path)!r}: tensors differ from the shapes/dtypes the file records "
                         f"({'; '.join(bad[:5])}); the file is damaged or was edited")


def _check_weights(expected: Mapping[str, Any], state: Mapping[str, torch.Tensor], path: Path, *,
                   complete: bool = True) -> None:
    """Every tensor of the file has the shape and dtype the rebuilt architecture expects (``expected``:
    name -> tensor, or -> (shape, dtype)); a ValueError listing the differences otherwise. ``complete``:
    ``expected`` names every tensor (else tensors it does not name are not reported)."""
    def spec(v: Any) -> tuple[tuple[int, ...], torch.dtype]:
        return (tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else (tuple(v[0]), v[1])

    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected)) if complete else []
    wrong = []
    for k in sorted(set(expected) & set(state)):
        shape, dtype = spec(expected[k])
        t = state[k]
        if tuple(t.shape) != shape or t.dtype != dtype:
            wrong.append(f"{k}: file {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}, model expects "
                         f"{shape} {str(dtype).removeprefix('torch.')}")
    if missing or extra or wrong:
        parts = [f"missing {missing[:5]}"] if missing else []
        parts += [f"unexpected {extra[:5]}"] if extra else []
        parts += wrong[:5]
        raise ValueError(f"load: the weights in {str(path)!r} do not fit the model it describes ("
                         + "; ".join(parts) + "); the file is damaged, was edited, or was written by "
                         "another version of the model or of compresskit")


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
            raise ValueError(f"load: {str(path)!r} could not be read as a torch file ({_first_line(e)}); "
                             "it is truncated, damaged or not written by CompressResult.save") from e
    if trusted:
        return torch.load(path, map_location="cpu", weights_only=False)
    raise UnsafeFileError(f"load: {str(path)!r} contains pickled Python objects ({', '.join(names)}); "
                          f"{_TRUST}. Nothing from it was run.")


def _read_bytes(blob: bytes, trusted: bool) -> Any:
    """:func:`_read` of bytes in memory (the file :func:`save_result` is about to write)."""
    try:
        return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception:
        if not trusted:
            raise
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)


def _load_program(program: Mapping[str, Any], state_dict: Mapping[str, Any], path: Path) -> nn.Module:
    from torch._export.serde.schema import ExportedProgram
    from torch._export.serde.serialize import ExportedProgramDeserializer, _bytes_to_dataclass

    try:
        doc = json.loads(bytes(program["json"]).decode("utf-8"))
        guards = check_program(doc)  # before anything is deserialised
        _check_weights(_program_weights(doc), {**state_dict, **dict(program["constants"])}, path,
                       complete=False)
        spec = _bytes_to_dataclass(ExportedProgram, json.dumps(doc).encode("utf-8"))
        specs = doc["graph_module"]["signature"]["input_specs"]
        params = {s["parameter"]["parameter_name"] for s in specs if "parameter" in s}
        weights = {k: nn.Parameter(v, requires_grad=v.is_floating_point()) if k in params else v
                   for k, v in state_dict.items()}
        ep = ExportedProgramDeserializer().deserialize(spec, weights, dict(program["constants"]), None)
        module = ep.module()
    except UnsafeFileError:
        raise
    except ValueError as e:
        if str(e).startswith("load:"):
            raise
        raise _rebuild_error(e, path) from e
    except Exception as e:
        raise _rebuild_error(e, path) from e
    module.train = types.MethodType(_fixed_mode_train, module)  # type: ignore[method-assign]
    module.eval = types.MethodType(lambda self: self.train(False), module)  # type: ignore[method-assign]
    if guards:  # (prepended: before the program's own input check)
        module.register_forward_pre_hook(guard_hook(guards, user_inputs(doc), list(program.get(
            "input_shapes") or [])), with_kwargs=True, prepend=True)
    fixed = [str(k) for k in (program.get("fixed_kwargs") or [])]
    module.register_forward_pre_hook(_positional_only(fixed), with_kwargs=True, prepend=True)
    return module.eval()


def _rebuild_error(e: BaseException, path: Path) -> ValueError:
    return ValueError(f"load: the program in {str(path)!r} could not be rebuilt ({type(e).__name__}: "
                      f"{_first_line(e)}); it may need the plugin that defines its operators, or another "
                      "torch version")


def _positional_only(fixed: list[str]) -> Any:
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if kwargs:
            held = f" (fixed at {', '.join(fixed)})" if fixed else ""
            raise TypeError(f"forward: got keyword arguments {sorted(kwargs)}, but a model loaded from an "
                            f"exported program takes its positional inputs only{held}; pass them "
                            "positionally, or load the original class with ck.load(path, trusted=True)")

    return hook


def _program_weights(doc: Mapping[str, Any]) -> dict[str, tuple[list[int], torch.dtype]]:
    """``{state_dict or constant name: (shape, dtype)}`` the program's signature expects."""
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE

    gm = doc["graph_module"]
    values = gm["graph"]["tensor_values"]
    out = {}
    for s in gm["signature"]["input_specs"]:
        for kind, key in (("parameter", "parameter_name"), ("buffer", "buffer_name"),
                          ("tensor_constant", "tensor_constant_name")):
            if kind in s:
                meta = values.get(s[kind]["arg"]["name"])
                if meta is None:
                    continue
                sizes = meta.get("sizes", [])
                if not all("as_int" in x for x in sizes):
                    continue  # a symbolic weight size: compared by the program itself
                dtype = _SERIALIZE_TO_TORCH_DTYPE.get(_enum(meta.get("dtype")))
                if dtype is None:
                    continue
                out[s[kind][key]] = ([int(x["as_int"]) for x in sizes], dtype)
    return out


def _enum(v: Any) -> Any:
    from torch._export.serde.schema import ScalarType

    try:
        return ScalarType(v)
    except ValueError:
        return None


def _fixed_mode_train(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train``/``eval`` of a loaded program: flags only; the program keeps the eval behaviour it was
    exported with (BatchNorm statistics, no dropout)."""
    if mode:
        warnings.warn("a model loaded from an exported program keeps its eval-mode behaviour in train(); "
                      "load it with trusted=True to get the original class", stacklevel=2)
    for m in self.modules():
        m.training = mode
    return self


# ------------------------------------------------------------------------------------------ registered
def rebuild_registered(spec: Mapping[str, Any], shapes: Mapping[str, list[int]], *,
                       path: str | os.PathLike | None = None) -> nn.Module:
    """``ck.create_model(name, **kwargs)``, traced on zero inputs and shrunk to the stored widths.

    What the spec asks for is bounded first (:data:`LIMITS` ``spec_bytes``): the example inputs it traces
    on, and the full model's weights where the factory can build on the meta device."""
    from compresskit.graph.trace import trace
    from compresskit.models import MODELS, create_model
    from compresskit.surgery.surgery import shrink

    where = f"load: {str(path)!r}" if path is not None else "load"
    if not isinstance(spec, Mapping) or not {"name", "kwargs", "inputs", "widths"} <= set(spec):
        raise ValueError(f"{where}: the registered-model spec is incomplete (expected name, kwargs, inputs, "
                         "widths); the file is damaged")
    name, kwargs = spec["name"], spec["kwargs"]
    if not isinstance(name, str) or not isinstance(kwargs, Mapping) \
            or not all(isinstance(k, str) for k in kwargs):
        raise ValueError(f"{where}: the registered-model spec names {name!r} with kwargs {kwargs!r}; "
                         "expected a model name and a mapping of keyword arguments")
    leaves: list[tuple[list[int], torch.dtype]] = []  # checked before any model code runs
    for shape, dtype in spec["inputs"]:
        _build_input(shape, dtype, lambda s, dt: leaves.append((s, dt)), where)
    input_shapes = [s for s, _ in spec["inputs"]]
    limit = _spec_limit()
    need = sum(math.prod(s) * dt.itemsize for s, dt in leaves)
    if need > limit:
        raise UnsafeFileError(f"{where}: the spec's example inputs {input_shapes} need "
                              f"{need / 2**20:.0f} MiB, more than the limit of {limit / 2**20:.0f} MiB; "
                              "refusing the file (raise COMPRESSKIT_LOAD_MAX_BYTES if you trust it)")
    if name not in MODELS:
        module = spec.get("module")
        hint = (f" (its factory was in {module!r}: import it, or the plugin that registers it, first)"
                if isinstance(module, str) else "")
        raise ValueError(f"{where}: the file is rebuilt by registered model {name!r}, which is not "
                         f"registered in this process{hint}; registered: "
                         f"{', '.join(MODELS.names()) or 'none'}")
    weights = _meta_weight_bytes(name, kwargs)
    if weights is not None and need + weights > limit:
        raise UnsafeFileError(f"{where}: registered model {name!r} with kwargs {dict(kwargs)!r} has "
                              f"{weights / 2**20:.0f} MiB of weights; with its example inputs that is more "
                              f"than the limit of {limit / 2**20:.0f} MiB; refusing the file (raise "
                              "COMPRESSKIT_LOAD_MAX_BYTES if you trust it)")
    full = create_model(name, **kwargs)
    inputs = tuple(_build_input(shape, dtype, lambda s, dt: torch.zeros(s, dtype=dt), where)
                   for shape, dtype in spec["inputs"])
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
        from compresskit.surgery.unused import drop_unused

        drop_unused(model, list(spec["dropped"]))
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    if got != {k: list(v) for k, v in shapes.items()}:
        diff = sorted(k for k in set(got) | set(shapes) if got.get(k) != list(shapes.get(k, [])))
        raise ValueError(f"load: rebuilding {spec['name']!r} gave different shapes for {diff[:5]}; the file "
                         "was written by a different version of the model or of compresskit")
    return model


def _shape(shape: Any, where: str) -> list[int]:
    if not isinstance(shape, list | tuple) or len(shape) > 16 or not all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 1 << 40 for n in shape):
        raise ValueError(f"{where}: example input shape {shape!r} is not a list of at most 16 sizes")
    return list(shape)


def _spec_limit() -> int:
    text = os.environ.get("COMPRESSKIT_LOAD_MAX_BYTES")
    if text is None:
        return LIMITS["spec_bytes"]
    try:
        return int(float(text))
    except ValueError:
        raise ValueError(f"COMPRESSKIT_LOAD_MAX_BYTES: expected a number of bytes, got {text!r}") from None


def _meta_weight_bytes(name: str, kwargs: Mapping[str, Any]) -> int | None:
    """Bytes of the weights ``create_model(name, **kwargs)`` would allocate, counted on the meta device
    (nothing allocated); None when the factory cannot build there (it reads a file, calls .cuda())."""
    from compresskit.models import create_model

    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = create_model(name, **kwargs)
        return sum(t.numel() * t.element_size() for t in model.state_dict().values())
    except Exception:
        return None
