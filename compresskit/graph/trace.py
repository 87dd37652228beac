"""``trace(model, example_inputs)``: torch.fx with concrete values, torch.export as the fallback.

Symbolic tracing cannot take a branch that depends on a shape (``if h % 32: pad``), which every VFI model
here has. The tracer below therefore carries the example inputs' real values alongside the symbolic ones:
every proxy knows its concrete value, so ``bool``, ``int``, ``len`` and iteration use it, and the graph
records the path the example inputs take. Sizes computed from shapes stay graph values, so a reshape to
``x.size(1)`` is told apart from a hard-coded ``view(b, 512, ...)``. When fx still fails (code that asks
``isinstance(x, torch.Tensor)``, data-dependent Python), ``torch.export`` (non-strict) traces the same
inputs to ATen ops; there every size is specialised, so reshapes through channels are frozen.

Code that is not torch is handled, not crashed on: a custom ``torch.autograd.Function`` is one opaque node
(its channels frozen unless ``register_rule(MyFunction, ...)`` describes it), and values that leave torch
for numpy are computed concretely, the tensors they read frozen (numpy sees every channel).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import operator
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from compresskit._modes import eval_mode
from compresskit.graph.build import GraphBuilder, to_meta
from compresskit.graph.channels import ChannelGraph
from compresskit.graph.rules import RuleContext, TensorInfo, has_module_rule, register_rule
from compresskit.plugins import ensure_plugins

_LEAF_MODULES: set[type] = set()
_LEAF_FUNCTIONS: dict[int, Callable] = {}


def register_leaf(obj: Any) -> Any:
    """Keep fx from tracing into ``obj`` (an ``nn.Module`` subclass or a Python function).

    The call appears as one node; give it a channel rule with :func:`compresskit.register_rule`,
    otherwise everything it touches is frozen. Functions are wrapped where they are referenced as a
    global name in the module that calls them. Usable as a decorator; returns ``obj``.
    """
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        _LEAF_MODULES.add(obj)
    elif callable(obj) and hasattr(obj, "__name__") and hasattr(obj, "__code__"):
        _LEAF_FUNCTIONS[id(obj)] = obj
    else:
        raise TypeError(f"register_leaf: expected an nn.Module subclass or a Python function, got {obj!r}")
    return obj


class FunctionCall:
    """The graph node target for ``MyFunction.apply(...)`` (a custom ``torch.autograd.Function``).

    Tracing never enters the Function (its forward may be any code, and autograd.Function's C entry
    point must see real tensors): the call is one node, computed on the concrete values. Its channel rule
    is the one registered for the Function class (``register_rule(MyFunction, ...)``); without one the
    channels it touches are frozen, with a reason naming the Function.
    """

    def __init__(self, function: type) -> None:
        self.autograd_function = function
        self.__name__ = f"{function.__qualname__}.apply"
        self.__qualname__ = self.__name__
        self.__module__ = function.__module__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.autograd_function.apply(*args, **kwargs)

    def opaque_rule(self, ctx: RuleContext) -> Any:
        """The rule without a registered one: every channel it touches is frozen."""
        name = self.autograd_function.__qualname__
        ctx.freeze_all_inputs(
            f"custom autograd.Function {name} is opaque to compresskit (unknown means frozen); "
            f"describe it with ck.register_rule({name}, ...)"
        )
        return ctx.out

    def __repr__(self) -> str:
        return f"{self.__module__}.{self.__name__}"


_FUNCTION_CALLS: dict[type, FunctionCall] = {}
_ORIGINAL_APPLY = inspect.getattr_static(torch.autograd.Function, "apply")


def _function_call(function: type) -> FunctionCall:
    if function not in _FUNCTION_CALLS:
        _FUNCTION_CALLS[function] = FunctionCall(function)
    return _FUNCTION_CALLS[function]


def _find_proxy(x: Any) -> _ConcreteProxy | None:
    if issubclass(type(x), _ConcreteProxy):
        return x
    if isinstance(x, tuple | list):
        items: Any = x
    elif isinstance(x, dict):
        items = x.values()
    else:
        return None
    for v in items:
        p = _find_proxy(v)
        if p is not None:
            return p
    return None


def _traced_apply(cls: type, *args: Any, **kwargs: Any) -> Any:
    """``Function.apply`` while :func:`trace` runs: a call on proxies becomes one opaque node."""
    proxy = _find_proxy((args, kwargs))
    if proxy is None:
        return _ORIGINAL_APPLY.__func__(cls, *args, **kwargs)
    return proxy.tracer.create_proxy("call_function", _function_call(cls), args, kwargs)


class _PatchFunctionApply:
    """Route ``torch.autograd.Function.apply`` through :func:`_traced_apply` (re-entrant)."""

    depth = 0

    def __enter__(self) -> None:
        if _PatchFunctionApply.depth == 0:
            torch.autograd.Function.apply = classmethod(_traced_apply)  # type: ignore[method-assign]
        _PatchFunctionApply.depth += 1

    def __exit__(self, *exc: Any) -> None:
        _PatchFunctionApply.depth -= 1
        if _PatchFunctionApply.depth == 0:
            torch.autograd.Function.apply = _ORIGINAL_APPLY  # type: ignore[method-assign]


def read_data(x: torch.Tensor, how: str) -> torch.Tensor:
    """The graph node target that marks a tensor read outside torch (``.numpy()``, ``np.asarray(x)``,
    ``.tolist()``): its value is ``x``; its rule freezes ``x``'s channels."""
    return x


def _read_data_rule(ctx: RuleContext) -> Any:
    ctx.freeze(ctx.arg(0), f"{ctx.arg(1)} reads the values outside torch (numpy sees every channel)")
    return ctx.untracked()


register_rule(read_data, _read_data_rule)

_DATA_READS = {"numpy", "tolist"}


class _NeedsRealValues(Exception):
    """Python read a tensor's data while convolutions were only shape-inferred: trace again for real."""


_SHAPE_QUERIES = {"size", "dim", "numel", "ndimension", "nelement", "is_contiguous", "get_device"}
_SHAPE_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "layout", "is_sparse"}


class _ConcreteProxy(fx.Proxy):
    """A proxy that also knows the value the example inputs give it."""

    @property
    def value(self) -> Any:
        v = self.tracer.value_of(self)  # type: ignore[attr-defined]
        return v

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # noqa: D105
        """``isinstance(proxy, torch.Tensor)`` is true when the value is a tensor, as user code expects
        (input checks); fx itself sees a proxy (the tracer turns this off while it builds nodes)."""
        tracer = object.__getattribute__(self, "tracer")
        if tracer.spoof_class:
            try:
                v = tracer.value_of(self)
            except Exception:
                v = None
            if isinstance(v, torch.Tensor):
                return type(v)
        return type(self)

    def _scalar(self, how: str) -> Any:
        v = self.value
        if isinstance(v, torch.Tensor) and self.tracer.shapes_only:  # type: ignore[attr-defined]
            raise _NeedsRealValues
        self.tracer.note_decision(self, how, v)  # type: ignore[attr-defined]
        return v

    def __setitem__(self, idx: Any, value: Any) -> None:
        """``x[idx] = v`` on a traced tensor: an ``operator.setitem`` node (computed in place)."""
        self.tracer.create_proxy("call_function", operator.setitem, (self, idx, value), {})

    def __getattr__(self, k: str) -> Any:
        if k.startswith("__") and k.endswith("__"):
            raise AttributeError(k)
        return _ConcreteAttribute(self, k)

    def __bool__(self) -> bool:
        return bool(self._scalar("if"))

    def __index__(self) -> int:
        return operator.index(self._scalar("index"))

    def __int__(self) -> int:
        return int(self._scalar("int()"))

    def __float__(self) -> float:
        return float(self._scalar("float()"))

    def __len__(self) -> int:
        return len(self.value)

    def __iter__(self) -> Any:
        return iter([self[i] for i in range(len(self.value))])

    def __contains__(self, item: Any) -> bool:
        return item in self.value

    @property
    def __array_priority__(self) -> float:
        """As high as a Tensor's when the value is one (``ndarray * x`` defers to ``x``), else below an
        ndarray's (``ndarray / h`` converts ``h`` through ``__array__``)."""
        return 1000.0 if isinstance(self.value, torch.Tensor) else -1000.0

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """numpy sees the concrete value; a tensor's read is recorded (its channels are frozen)."""
        v = self.value
        if isinstance(v, torch.Tensor):
            v = self.tracer.read_data(self, "np.asarray", lambda t: t.detach().cpu().numpy())  # type: ignore[attr-defined]
        return np.asarray(v, dtype=dtype)


class _ConcreteAttribute(_ConcreteProxy, fx.proxy.Attribute):
    pass


class _ConcreteTracer(fx.Tracer):
    """fx tracing that computes every node on the example inputs as it records it."""

    def __init__(self, placeholder_values: dict[str, Any], shapes_only: bool = False) -> None:
        super().__init__(autowrap_functions=tuple(_LEAF_FUNCTIONS.values()))
        self.placeholder_values = placeholder_values
        # shapes_only: conv/linear layers are not computed, only their output shapes (uninitialised
        # memory of the right shape); any Python read of tensor data aborts, and the trace is redone
        self.shapes_only = shapes_only
        self.spoof_class = True
        self.values: dict[fx.Node, Any] = {}
        self._computing = False
        self.decisions: dict[tuple[str, str], str] = {}  # data-dependent Python decisions, by place

    def note_decision(self, p: Any, how: str, value: Any) -> None:
        """Record ``if``/``int()``/... on a value computed from tensor *data* (not only from shapes): the
        graph holds the path these inputs took, other inputs may take another (reported, not checked)."""
        try:
            node = p.node
        except Exception:
            return
        reader = self._data_reader(node)
        if reader is None:
            return
        where = _user_frame()
        key = (where, how)
        if key not in self.decisions:
            shown = value if not isinstance(value, torch.Tensor) else value.detach().flatten()[:1].tolist()
            self.decisions[key] = (
                f"{where}: `{how}` on a value read from tensor data ({_node_label(reader)}) took {shown!r}"
            )

    def _data_reader(self, node: fx.Node) -> fx.Node | None:
        """The node whose output reads tensor values on the way to ``node`` (None: only shapes, dtypes
        and Python numbers are read)."""
        if isinstance(self.values.get(node), torch.Tensor):
            return node
        stack, seen = [node], set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n.op == "call_method" and n.target in _SHAPE_QUERIES:
                continue
            if n.op == "call_function" and n.target is getattr and n.args[1] in _SHAPE_ATTRS:
                continue
            for a in n.all_input_nodes:
                if isinstance(self.values.get(a), torch.Tensor):
                    return n
                stack.append(a)
        return None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        t = type(m)
        if any(c in _LEAF_MODULES for c in t.__mro__) or has_module_rule(m):
            return True
        if isinstance(m, nn.Sequential | nn.ModuleList | nn.ModuleDict):
            return False
        from_torch = t.__module__.startswith(("torch.nn", "torch.ao.nn"))
        return from_torch and next(iter(m.children()), None) is None

    def create_arg(self, a: Any) -> Any:
        if type(a) is _ConcreteProxy or type(a) is _ConcreteAttribute:  # the common case, fast
            return a.node
        if isinstance(a, np.generic):  # a numpy scalar computed in the forward is a constant
            return a.item()
        spoof, self.spoof_class = self.spoof_class, False
        try:
            return super().create_arg(a)
        finally:
            self.spoof_class = spoof

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ConcreteProxy(node, self)

    def call_module(self, m: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> Any:
        if self._computing:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        if self._computing:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def value_of(self, p: Any) -> Any:
        if issubclass(type(p), fx.proxy.Attribute):
            return getattr(self.value_of(p.root), p.attr)
        return self.node_value(p.node)

    def node_value(self, node: fx.Node) -> Any:
        if node not in self.values and node.op == "get_attr":
            self.values[node] = self._fetch(str(node.target))
        return self.values[node]

    def _fetch(self, qualname: str) -> Any:
        computing, self._computing = self._computing, True
        try:
            return _fetch_attr(self.root, qualname)
        finally:
            self._computing = computing

    def _concrete(self, a: Any) -> Any:
        if issubclass(type(a), fx.Proxy):  # type(), not isinstance: proxies answer __class__
            return self.value_of(a)
        if isinstance(a, fx.Node):
            return self.node_value(a)
        if isinstance(a, tuple) and not isinstance(a, torch.Size):
            items = [self._concrete(v) for v in a]
            return type(a)(*items) if hasattr(a, "_fields") else tuple(items)
        if isinstance(a, list):
            return [self._concrete(v) for v in a]
        if isinstance(a, dict):
            return {k: self._concrete(v) for k, v in a.items()}
        if isinstance(a, slice):
            return slice(self._concrete(a.start), self._concrete(a.stop), self._concrete(a.step))
        return a

    def read_data(self, p: fx.Proxy, how: str, read: Callable[[torch.Tensor], Any]) -> Any:
        """``read(value of p)`` computed now, recorded as a :func:`read_data` node that freezes ``p``."""
        t = self.value_of(p)
        if self.shapes_only:
            raise _NeedsRealValues
        spoof, self.spoof_class = self.spoof_class, False
        try:
            node = super().create_proxy("call_function", read_data, (p, how), {}).node
        finally:
            self.spoof_class = spoof
        self.values[node] = t
        computing, self._computing = self._computing, True
        try:
            return read(t)
        finally:
            self._computing = computing

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):  # noqa: ANN001
        if kind == "call_method" and target in _DATA_READS and not self._computing:
            p = args[0]
            if issubclass(type(p), fx.Proxy) and isinstance(self.value_of(p), torch.Tensor):
                rest, kw = self._concrete(tuple(args[1:])), self._concrete(dict(kwargs))
                return self.read_data(p, f".{target}()", lambda t: getattr(t, target)(*rest, **kw))
        value = self._compute(kind, target, args, kwargs)
        p = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        self.values[p.node] = value
        if type(value) is float and kind == "call_function":
            # a float never sizes a channel dim; handing back the number lets code such as
            # torch.tensor([2.0 / w, ...]) run (a proxy looks like a sequence to torch.tensor)
            return value
        return p

    def _compute(self, kind: str, target: Any, args: Any, kwargs: Any) -> Any:
        if kind == "placeholder":
            name = str(target).lstrip("*")
            if name not in self.placeholder_values:  # fx renames placeholders of concrete args
                name = re.sub(r"_\d+$", "", name)
            if name not in self.placeholder_values:
                raise TypeError(f"example_inputs: no value for forward argument {name!r}")
            return self.placeholder_values[name]
        if kind == "get_attr":
            return self._fetch(str(target))
        if kind == "output":
            return None
        a, k = self._concrete(tuple(args)), self._concrete(dict(kwargs))
        self._computing = True
        try:
            if kind == "call_function":
                out = target(*a, **k)
                if target is getattr and a[1] not in _SHAPE_ATTRS:
                    self._check_data_read(a, out)
                return out
            if kind == "call_method":
                out = getattr(a[0], target)(*a[1:], **k)
                if target not in _SHAPE_QUERIES:
                    self._check_data_read(a, out)
                return out
            if kind == "call_module":
                module = self.root.get_submodule(target)
                if self.shapes_only:
                    shape = _layer_output_shape(module, a, k)
                    if shape is not None:
                        return torch.empty(shape, dtype=a[0].dtype, device=a[0].device)
                return module(*a, **k)
        finally:
            self._computing = False
        raise ValueError(f"unknown node kind {kind}")

    def _check_data_read(self, args: Any, out: Any) -> None:
        """In shapes-only mode, a Python number or bool computed from a tensor is a data read."""
        scalar = isinstance(out, bool | int | float | list) and not isinstance(out, torch.Size)
        if self.shapes_only and scalar and any(isinstance(x, torch.Tensor) for x in args):
            raise _NeedsRealValues


def _layer_output_shape(m: nn.Module, args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    """Output shape of a conv or linear layer from the standard formulas (None: compute it for real)."""
    if kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor):
        return None
    x = args[0]
    if isinstance(m, nn.Linear):
        return (*x.shape[:-1], m.out_features) if x.shape[-1] == m.in_features else None
    if isinstance(m, nn.modules.conv._ConvNd) and not isinstance(m.padding, str):
        nd = len(m.kernel_size)
        if x.dim() not in (nd + 1, nd + 2) or x.shape[-nd - 1] != m.in_channels:
            return None
        out = []
        for i in range(nd):
            size, k, s, p, d = x.shape[-nd + i], m.kernel_size[i], m.stride[i], m.padding[i], m.dilation[i]
            if m.transposed:
                out.append((size - 1) * s - 2 * p + d * (k - 1) + m.output_padding[i] + 1)
            else:
                out.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
        if min(out) <= 0:
            return None
        return (*x.shape[: -nd - 1], m.out_channels, *out)
    return None


def _fetch_attr(root: nn.Module, qualname: str) -> Any:
    obj: Any = root
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _node_label(node: fx.Node) -> str:
    if node.op == "call_method":
        return f".{node.target}()"
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return f"{node.op} {node.target}"


_OWN_FILES = ("/torch/", "/compresskit/graph/", "/compresskit/_modes.py")


def _user_frame() -> str:
    """``file:line (function)`` of the innermost frame outside torch and this package."""
    f = sys._getframe(1)
    while f is not None:
        name = f.f_code.co_filename.replace("\\", "/")
        if not any(own in name for own in _OWN_FILES):
            return f"{name.rsplit('/', 1)[-1]}:{f.f_lineno} ({f.f_code.co_name})"
        f = f.f_back
    return "<unknown>"


def tensor_from(data: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The graph node target for ``torch.tensor(<sizes>)`` / ``torch.as_tensor(<sizes>)`` while tracing:
    a tensor built from values the forward computes (``torch.tensor(x.shape[-2:])``)."""
    how = kwargs.pop("_how", "tensor")
    return (_TORCH_AS_TENSOR if how == "as_tensor" else _TORCH_TENSOR)(data, *args, **kwargs)


def _tensor_from_rule(ctx: RuleContext) -> Any:
    """No channels of its own; a channel count it holds as a value is frozen (shrinking would change it)."""
    from compresskit.graph.rules.sizes import size_source

    builder = ctx.builder
    stack = [n for n in ctx.node.all_input_nodes]
    seen: set[fx.Node] = set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        src = size_source(n, builder)
        if src is not None:
            t = builder.resolve(src[0])
            dims = src[1] if isinstance(src[1], list) else [src[1]]
            if isinstance(t, TensorInfo) and t.tracked and t.cdim in [d % max(1, t.ndim) for d in dims]:
                ctx.freeze(t, "torch.tensor(...) holds this channel count as a value")
            continue
        if not isinstance(builder.meta.get(n), TensorInfo):
            stack.extend(n.all_input_nodes)
    return ctx.untracked() if isinstance(ctx.out, TensorInfo) else None


register_rule(tensor_from, _tensor_from_rule)

_TORCH_TENSOR = torch.tensor
_TORCH_AS_TENSOR = torch.as_tensor
_VARIABLE = torch.autograd.Variable


class _PatchConstructors:
    """While fx traces: ``torch.tensor`` / ``torch.as_tensor`` of traced sizes become a
    :func:`tensor_from` node (fx cannot read a proxy as a sequence), and ``torch.autograd.Variable(x)`` of
    a traced tensor becomes ``x.detach()`` (what it computes; its C constructor would read the proxy as
    a tensor and crash the process)."""

    def __enter__(self) -> None:
        def make(how: str) -> Callable:
            original = _TORCH_AS_TENSOR if how == "as_tensor" else _TORCH_TENSOR

            def patched(data: Any, *args: Any, **kwargs: Any) -> Any:
                proxy = _find_proxy((data, args, kwargs))
                if proxy is None:
                    return original(data, *args, **kwargs)
                kw = dict(kwargs, _how=how) if how != "tensor" else kwargs
                return proxy.tracer.create_proxy("call_function", tensor_from, (data, *args), kw)

            return patched

        def variable_new(cls: type, *args: Any, **kwargs: Any) -> Any:
            data = args[0] if args else kwargs.get("data")
            if issubclass(type(data), _ConcreteProxy):
                return data.detach()
            return torch._C._LegacyVariableBase.__new__(cls, *args, **kwargs)

        torch.tensor = make("tensor")  # type: ignore[assignment]
        torch.as_tensor = make("as_tensor")  # type: ignore[assignment]
        _VARIABLE.__new__ = variable_new  # type: ignore[assignment]

    def __exit__(self, *exc: Any) -> None:
        torch.tensor = _TORCH_TENSOR  # type: ignore[assignment]
        torch.as_tensor = _TORCH_AS_TENSOR  # type: ignore[assignment]
        if "__new__" in vars(_VARIABLE):
            del _VARIABLE.__new__


_SKIP_STATE = {"_parameters", "_buffers", "_modules", "training"}


def keep_model_state(model: nn.Module) -> _KeepState:
    """A context manager that gives back, on exit, the model's attributes and the dict/list/set globals of
    its own packages as they were on entry: wrap anything that runs forward on proxies or fake tensors
    (fx tracing, ``torch.export``) so shape-keyed caches do not keep them."""
    return _KeepState(model)


class _KeepState:
    """Give back the model's attributes and the dict/list/set globals of the model's own packages as
    they were: code that caches by shape (``self.grid[(h, w)] = ...``, a module-level
    ``backwarp_grid = {}``) would otherwise keep the tracer's proxies after tracing."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.saved: list[tuple[dict, dict, dict]] = []
        for m in self.model.modules():
            self._save(m.__dict__, skip=_SKIP_STATE)
        tops = {type(m).__module__.split(".")[0] for m in self.model.modules()}
        tops = {t for t in tops if t not in ("torch", "compresskit")}
        for name, mod in list(sys.modules.items()):
            if mod is not None and name.split(".")[0] in tops:
                self._save(vars(mod), skip=set(), only_containers=True)

    def _save(self, space: dict, skip: set, only_containers: bool = False) -> None:
        values = {k: v for k, v in space.items() if k not in skip and not k.startswith("__")}
        if only_containers:
            values = {k: v for k, v in values.items() if isinstance(v, dict | list | set)}
        contents = {k: _shallow(v) for k, v in values.items() if isinstance(v, dict | list | set)}
        self.saved.append((space, values, contents))

    def __exit__(self, *exc: Any) -> None:
        for space, values, contents in self.saved:
            for k, v in values.items():
                if space.get(k, _MISSING) is not v:
                    space[k] = v
                if k in contents and not _same_items(_shallow(v), contents[k]):
                    _refill(v, contents[k])


_MISSING = object()


def _shallow(v: Any) -> Any:
    if isinstance(v, dict):
        return list(v.items())
    if isinstance(v, list):
        return list(v)
    return list(v)  # a set, as a list: no hashing or == of its items on the way back


def _same_items(a: list, b: list) -> bool:
    """Identity, item by item (``==`` would call a tensor's or a proxy's ``__eq__``)."""
    if len(a) != len(b):
        return False
    flat = [(x, y) for x, y in zip(a, b)]
    return all((x[0] is y[0] and x[1] is y[1]) if isinstance(x, tuple) and isinstance(y, tuple) and
               len(x) == len(y) == 2 else x is y for x, y in flat)


def _refill(v: Any, saved: Any) -> None:
    v.clear()
    if isinstance(v, dict):
        v.update(saved)
    elif isinstance(v, list):
        v.extend(saved)
    else:
        v.update(saved)


def _check_inputs(model: Any, example_inputs: Any) -> tuple:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, tuple | list) or len(example_inputs) == 0:
        raise TypeError(
            "example_inputs: expected a tensor or a non-empty tuple of the model's forward arguments, "
            f"got {type(example_inputs).__name__}"
        )
    return tuple(example_inputs)


def _run_check(model: nn.Module, inputs: tuple) -> None:
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as e:
        shapes = [tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__ for x in inputs]
        raise ValueError(
            f"example_inputs: the model cannot run on inputs of shapes {shapes}: {type(e).__name__}: {e}"
        ) from e


_DECISIONS = "data-dependent decisions"  # key of the list of them in the meta dict of an fx trace
_Traced = tuple[fx.Graph, dict[fx.Node, Any], dict[str, torch.Tensor]]  # graph, values, stowed constants


def _trace_fx(model: nn.Module, inputs: tuple) -> _Traced:
    try:
        return _trace_fx_once(model, inputs, shapes_only=True)
    except Exception:  # data read from a skipped layer, or an op that rejects uninitialised values
        return _trace_fx_once(model, inputs, shapes_only=False)


def _trace_fx_once(model: nn.Module, inputs: tuple, shapes_only: bool) -> _Traced:
    sig = inspect.signature(model.forward)
    bound = sig.bind(*inputs)
    bound.apply_defaults()
    values = {}
    for pname, v in bound.arguments.items():
        param = sig.parameters[pname]
        if param.kind == inspect.Parameter.VAR_POSITIONAL:
            raise TypeError("forward(*args) cannot be traced by fx")
        values[pname] = _clone(v)
    # arguments that hold no tensor (None, flags, scales) are baked in: ``if extra is not None`` must see
    # the real None, not a proxy
    concrete = {k: v for k, v in values.items() if not _has_tensor(v)}
    tracer = _ConcreteTracer(values, shapes_only)
    before = set(vars(model))
    constants: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad(), _PatchFunctionApply(), _PatchConstructors(), _KeepState(model):
            graph = tracer.trace(model, concrete_args=concrete or None)
        meta = {
            n: to_meta(tracer.values.get(n)) if n.op != "get_attr" else to_meta(tracer.node_value(n))
            for n in graph.nodes
        }
        meta[_DECISIONS] = list(tracer.decisions.values())
    finally:
        for k in set(vars(model)) - before:  # fx stows constants (torch.tensor(...)) on the root: the
            if k.startswith("_tensor_constant"):  # graph keeps them, the user's model does not
                constants[k] = getattr(model, k)
                delattr(model, k)
    return graph, meta, constants


def _has_tensor(v: Any) -> bool:
    if isinstance(v, torch.Tensor):
        return True
    if isinstance(v, tuple | list):
        return any(_has_tensor(x) for x in v)
    if isinstance(v, dict):
        return any(_has_tensor(x) for x in v.values())
    return False


def _clone(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach().clone()
    if isinstance(v, tuple | list):
        return type(v)(_clone(x) for x in v)
    return v


def _trace_export(model: nn.Module, inputs: tuple) -> tuple[fx.Graph, dict[fx.Node, Any], dict[str, str]]:
    with _KeepState(model):  # export runs forward on fake tensors: none may stay in the model's caches
        ep = torch.export.export(model, tuple(_clone(x) for x in inputs), strict=False)
    sig = ep.graph_signature
    params = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    graph = ep.graph_module.graph
    meta = {}
    for n in graph.nodes:
        val = n.meta.get("val")
        if n.op == "placeholder" and n.name in params:
            val = _fetch_attr(model, params[n.name])
        meta[n] = to_meta(val)
    return graph, meta, params


def trace(model: nn.Module, example_inputs: Any, *, method: str = "auto", mode: str = "eval") -> ChannelGraph:
    """Trace ``model`` on ``example_inputs`` (a tensor or a tuple of forward arguments) into a
    :class:`~compresskit.graph.channels.ChannelGraph` of channel groups.

    ``method``: ``"auto"`` (fx with concrete values, then torch.export if that fails), ``"fx"`` or
    ``"export"``. ``mode``: ``"eval"`` (default; the model's modes are restored) or ``"train"`` (the
    path training takes: auxiliary heads, EMA updates; a deep copy is traced, so batch-norm statistics of
    ``model`` do not move). The model is not modified.
    """
    inputs = _check_inputs(model, example_inputs)
    if method not in ("auto", "fx", "export"):
        raise ValueError(f"method: expected 'auto', 'fx' or 'export', got {method!r}")
    if mode not in ("eval", "train"):
        raise ValueError(f"mode: expected 'eval' or 'train', got {mode!r}")
    ensure_plugins()  # the plugins' channel rules and leaves, registered before tracing starts
    if mode == "train":
        model = copy.deepcopy(model).train()
    with eval_mode(model) if mode == "eval" else contextlib.nullcontext():  # each module's mode comes back
        errors: list[str] = []
        if method in ("auto", "fx"):
            try:
                graph, meta, constants = _trace_fx(model, inputs)
            except Exception as e:
                _run_check(model, inputs)  # bad inputs get the clear error, not a tracing one
                if method == "fx":
                    raise
                errors.append(f"fx: {type(e).__name__}: {e}")
            else:
                decisions = meta.pop(_DECISIONS, [])
                channel_graph = GraphBuilder(model, graph, meta, "fx").run()
                channel_graph.fx_constants = constants
                channel_graph.data_branches = decisions
                return channel_graph
        else:
            _run_check(model, inputs)
        try:
            graph, meta, params = _trace_export(model, inputs)
        except Exception as e:
            errors.append(f"export: {type(e).__name__}: {e}")
            raise RuntimeError("could not trace the model:\n  " + "\n  ".join(errors)) from e
        return GraphBuilder(model, graph, meta, "export", params).run()


def leaf_functions() -> Sequence[Callable]:
    """Functions registered with :func:`register_leaf`."""
    return list(_LEAF_FUNCTIONS.values())


def data_branch_notes(graph: ChannelGraph) -> list[str]:
    """Report notes for :attr:`ChannelGraph.data_branches`: the trace followed Python decisions on tensor
    values; batches that decide otherwise run code the graph never saw (see docs/graph.md)."""
    found = list(getattr(graph, "data_branches", []))
    notes = [
        f"data-dependent branch in the trace: {d}; the channel graph holds only this path, inputs that "
        "decide otherwise run code it never saw (compress compares the trace with eager execution on one "
        "more batch only)"
        for d in found[:5]
    ]
    if len(found) > 5:
        notes.append(f"... and {len(found) - 5} more data-dependent decisions (graph.data_branches)")
    return notes
