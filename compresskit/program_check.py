"""Checking a serialised ``torch.export`` program before anything in it is deserialised or evaluated.

A program file is JSON: operators with their arguments, size expressions (sympy source such as
``TruncToInt(Mul(Float('0.25', precision=53), ToFloat(Symbol('s0', integer=True))))``), range constraints
and guards (Python source over the inputs' sizes). :func:`check_program` accepts it only when

* every operator is a registered torch operator (``torch.ops.ns.op.overload``) or size arithmetic;
* every size expression and range key is arithmetic on size symbols whose every sub-expression stays
  bounded (:data:`LIMITS`): checked on its syntax tree, so ``10**10**12`` is refused before sympy would
  compute it;
* every guard is size arithmetic on the inputs' sizes: it is never compiled or run by Python; its checked
  syntax tree is evaluated by :func:`guard_hook` on each call of the loaded module;
* it holds no script objects.

Anything else is an :class:`UnsafeFileError` naming what was refused.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["check_program", "guard_hook", "user_inputs", "UnsafeFileError", "LIMITS"]

#: What a file may ask of ``ck.load``, checked before anything is evaluated or allocated.
#: ``expr_chars``/``expr_nodes``/``expr_depth``: one size expression's length, syntax-tree nodes and
#: nesting; ``expr_bits``: log2 of the largest magnitude any sub-expression can reach (sizes count as
#: 2**63); ``total_nodes``: all size expressions of a file together; ``symbol_digits``: digits of a size
#: symbol's index; ``float_precision``: bits of a ``Float``; ``spec_bytes``: what a rebuild recipe may
#: allocate (its example inputs, plus the full model's weights where the factory can build on the meta
#: device). ``COMPRESSKIT_LOAD_MAX_BYTES`` overrides ``spec_bytes``.
LIMITS: dict[str, int] = {
    "expr_chars": 20_000, "expr_nodes": 2_000, "expr_depth": 64, "expr_bits": 4096, "total_nodes": 500_000,
    "symbol_digits": 6, "float_precision": 256, "spec_bytes": 2 << 30,
}


class UnsafeFileError(ValueError):
    """The file needs the full unpickler (it names Python objects) or asks for more than :data:`LIMITS`
    allow: refused."""


_OPERATOR_OK = {
    "getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs", "eq", "ne",
    "lt", "le", "gt", "ge", "and_", "or_", "xor", "not_", "invert", "lshift", "rshift",
}
_MATH_OK = {"ceil", "floor", "trunc", "sqrt", "exp", "log", "log2", "sin", "cos", "tan", "tanh", "pow"}
_SYMBOL = re.compile(r"^[a-z_]{1,8}[0-9]+$")

# The functions a size expression may call, by how they bound their value (log2 of the magnitude, "bits"):
# the product of their arguments, a power (constant small integer exponent), or at most the largest argument
# doubled (sums, divisions, rounding, min/max, comparisons, conversions, bounded unary functions).
_PRODUCT = {"Mul"}
_POWER = {"Pow", "PowByNatural", "FloatPow"}
_LEAF = {"Symbol", "Integer", "Float", "Rational"}
_BOUNDED = {
    "Add", "Mod", "PythonMod", "Max", "Min", "Abs", "FloorDiv", "CleanDiv", "CeilDiv", "IntTrueDiv",
    "FloatTrueDiv", "TruncToInt", "TruncToFloat", "ToFloat", "FloorToInt", "CeilToInt", "RoundToInt",
    "RoundDecimal", "ModularIndexing", "Where", "Identity", "floor", "ceiling", "sign",
    "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or", "BitwiseFn_bitwise_xor", "RShift",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan",
    "Equality", "Unequality", "And", "Or", "Not", "IsNonOverlappingAndDenseIndicator",
    "OpaqueUnaryFn_sqrt", "OpaqueUnaryFn_log", "OpaqueUnaryFn_log2", "OpaqueUnaryFn_sin", "OpaqueUnaryFn_cos",
    "OpaqueUnaryFn_tan", "OpaqueUnaryFn_tanh", "OpaqueUnaryFn_atan", "OpaqueUnaryFn_asin",
    "OpaqueUnaryFn_acos", "OpaqueUnaryFn_asinh",
}
_CONSTANT_NAMES = {"True", "False", "None", "oo", "zoo", "nan", "true", "false"}
_ASSUMPTIONS = {"positive", "integer", "nonnegative", "negative", "real", "finite", "infinite", "zero",
                "nonzero", "odd", "even", "prime", "commutative", "nonpositive"}
_BINOPS = {ast.Add: "sum", ast.Sub: "sum", ast.Mult: "product", ast.Pow: "power", ast.Div: "bounded",
           ast.FloorDiv: "bounded", ast.Mod: "bounded", ast.BitAnd: "bounded", ast.BitOr: "bounded",
           ast.BitXor: "bounded"}
_SIZE_BITS = 63


def _is_symbol(name: str) -> bool:
    """A size symbol's name (``s12``, ``u3``) with an index of at most ``symbol_digits`` digits."""
    return bool(_SYMBOL.match(name)) and len(name) - len(name.rstrip("0123456789")) <= LIMITS["symbol_digits"]


class _ExprBudget:
    """Nodes left for the size expressions of one file (:data:`LIMITS` ``total_nodes``)."""

    def __init__(self) -> None:
        self.nodes = LIMITS["total_nodes"]


def _check_expr(expr: str, budget: _ExprBudget | None = None, *, what: str = "size expression") -> None:
    """A size expression (``Mul(Integer(3), Symbol('s0', integer=True))``, or its plain form ``6 - s0``)
    is arithmetic on size symbols whose every sub-expression stays below 2**``expr_bits`` (sizes taken at
    2**63), within the length, node and depth limits: checked on its syntax tree before sympy evaluates
    any of it (so ``10**10**12`` is refused at once, not computed)."""
    refuse = _refuser(expr, what)
    if not isinstance(expr, str) or len(expr) > LIMITS["expr_chars"]:
        refuse(f"is longer than {LIMITS['expr_chars']} characters" if isinstance(expr, str)
               else "is not a string")
    try:
        tree = ast.parse(expr, mode="eval")
    except Exception:  # SyntaxError, too deeply nested for the parser, MemoryError
        refuse("does not parse")
    nodes = sum(1 for _ in ast.walk(tree))
    if nodes > LIMITS["expr_nodes"]:
        refuse(f"has {nodes} nodes, more than the limit of {LIMITS['expr_nodes']}")
    if budget is not None:
        budget.nodes -= nodes
        if budget.nodes < 0:
            refuse(f"takes the file's size expressions past {LIMITS['total_nodes']} nodes in all")
    bits = _bits(tree.body, 0, refuse)
    if bits > LIMITS["expr_bits"]:
        refuse(f"can reach 2**{bits:.0f}, more than the limit of 2**{LIMITS['expr_bits']}")


def _refuser(expr: Any, what: str) -> Any:
    shown = expr if not isinstance(expr, str) or len(expr) <= 200 else expr[:200] + "..."

    def refuse(why: str) -> None:
        raise UnsafeFileError(f"load: {what} {shown!r} {why}; it is not arithmetic on sizes within the "
                              "limits, refusing the file")

    return refuse


def _bits(node: ast.AST, depth: int, refuse: Any) -> float:
    """An upper bound on log2 |value| of ``node``; refuses anything that is not size arithmetic."""
    if depth > LIMITS["expr_depth"]:
        refuse(f"is nested deeper than {LIMITS['expr_depth']} levels")
    d = depth + 1
    if isinstance(node, ast.Constant):
        return _constant_bits(node.value, refuse)
    if isinstance(node, ast.Name):
        if node.id in _CONSTANT_NAMES:
            return 1.0
        if _is_symbol(node.id):
            return _SIZE_BITS
        refuse(f"names {node.id!r}")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd | ast.Not | ast.Invert):
        return _bits(node.operand, d, refuse)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        kind = _BINOPS[type(node.op)]
        if kind == "power":
            return _bits(node.left, d, refuse) * _exponent(node.right, refuse)
        a, b = _bits(node.left, d, refuse), _bits(node.right, d, refuse)
        return a + b if kind == "product" else max(a, b) + 1
    if isinstance(node, ast.Compare):
        for x in [node.left, *node.comparators]:
            _bits(x, d, refuse)
        return 1.0
    if isinstance(node, ast.BoolOp):
        for x in node.values:
            _bits(x, d, refuse)
        return 1.0
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        name = node.func.id
        for kw in node.keywords:
            _keyword(kw, name, refuse)
        if name in _LEAF:
            return _leaf_bits(name, node.args, refuse)
        if node.keywords and name not in _LEAF:
            refuse(f"passes keywords to {name}")
        args = [_bits(x, d, refuse) for x in node.args]
        if name in _PRODUCT:
            return sum(args)
        if name in _POWER:
            if len(node.args) != 2:
                refuse(f"calls {name} with {len(node.args)} arguments")
            return args[0] * _exponent(node.args[1], refuse)
        if name in _BOUNDED:
            return (max(args) if args else 0.0) + math.log2(max(len(args), 1)) + 1
        refuse(f"calls {name}")
    refuse(f"holds {type(node).__name__}")
    raise AssertionError  # refuse raises


def _constant_bits(value: Any, refuse: Any) -> float:
    if isinstance(value, bool) or value is None:
        return 1.0
    if isinstance(value, int):
        return float(value.bit_length())
    if isinstance(value, float):
        if not math.isfinite(value):
            refuse("holds a non-finite number")
        return math.log2(abs(value)) + 1 if value else 0.0
    refuse(f"holds the literal {value!r}")
    raise AssertionError


def _exponent(node: ast.AST, refuse: Any) -> float:
    """A power's exponent: a small integer constant (``2``, ``-1``, ``Integer(3)``)."""
    inner = node
    if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name) and inner.func.id == "Integer" \
            and len(inner.args) == 1 and not inner.keywords:
        inner = inner.args[0]
    sign = 1
    if isinstance(inner, ast.UnaryOp) and isinstance(inner.op, ast.USub):
        inner, sign = inner.operand, -1
    if isinstance(inner, ast.Constant) and type(inner.value) is int and inner.value <= 64:
        return float(max(abs(sign * inner.value), 1))
    refuse("raises to a power that is not a small integer constant (at most 64)")
    raise AssertionError


def _leaf_bits(name: str, args: list[ast.AST], refuse: Any) -> float:
    values = []
    for a in args:
        sign = 1
        if isinstance(a, ast.UnaryOp) and isinstance(a.op, ast.USub):
            a, sign = a.operand, -1
        if not isinstance(a, ast.Constant):
            refuse(f"passes a computed argument to {name}")
        values.append(a.value if sign == 1 or isinstance(a.value, str) else -a.value)
    if name == "Symbol":
        ok = len(values) == 1 and isinstance(values[0], str) and _is_symbol(values[0])
        if not ok:
            refuse(f"names the symbol {values[:1]!r}, which is not a size symbol")
        return _SIZE_BITS
    if name == "Float":
        if len(values) != 1 or not isinstance(values[0], str | int | float) or isinstance(values[0], bool) \
                or len(str(values[0])) > 64:
            refuse("holds a Float that is not a short number")
        try:
            number = float(values[0])
        except ValueError:
            refuse(f"holds Float({values[0]!r})")
        return _constant_bits(number, refuse)
    if not values or len(values) > 2 or not all(type(v) is int for v in values):
        refuse(f"holds {name} of {values!r}")
    return max(float(abs(v).bit_length()) for v in values)


def _keyword(kw: ast.keyword, fn: str, refuse: Any) -> None:
    value = kw.value.value if isinstance(kw.value, ast.Constant) else None
    if kw.arg in _ASSUMPTIONS and fn == "Symbol" and isinstance(value, bool):
        return
    if kw.arg == "precision" and fn == "Float" and isinstance(value, int) and not isinstance(value, bool) \
            and 1 <= value <= LIMITS["float_precision"]:
        return
    refuse(f"passes {kw.arg}={ast.unparse(kw.value)[:40]} to {fn}")


def _operator(path: str) -> Any:
    """``torch.<path>`` (``ops.aten.conv2d.default``) by attribute lookups, None where one is missing."""
    obj: Any = torch
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


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
        obj = _operator(rest)
        if obj is None:  # a custom op of an installed plugin (the AdaCoF sampling op): discover plugins
            from compresskit.plugins import ensure_plugins

            ensure_plugins()
            obj = _operator(rest)
        if obj is None:
            raise UnsafeFileError(f"load: the program calls {target}, which is not registered here; "
                                  "install or import the plugin that defines it first")
        ops = torch._ops
        if isinstance(obj, ops.OpOverload | ops.OpOverloadPacket | ops.HigherOrderOperator):
            return
    raise UnsafeFileError(f"load: the program calls {target!r}, which is not a torch operator; refusing "
                          "the file")


def check_program(doc: Any) -> list[tuple[str, ast.AST]]:
    """Walk the serialised program: operators, bounded size expressions and ranges, no Python objects;
    returns its guards as checked syntax trees (the Python source itself is removed from ``doc``)."""
    budget = _ExprBudget()
    guards = _parse_guards(doc.get("guards_code") or [], user_inputs(doc), budget)
    doc["guards_code"] = []  # Python source torch would compile into a guard function: never run it
    ranges = doc.get("range_constraints") or {}
    if not isinstance(ranges, Mapping):
        raise UnsafeFileError("load: the program's range constraints are not a mapping; refusing the file")
    limit = 1 << _SIZE_BITS
    for key, bounds in ranges.items():
        _check_expr(key, budget, what="range constraint on")
        for v in (bounds or {}).values() if isinstance(bounds, Mapping) else [bounds]:
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not -limit <= v <= limit):
                raise UnsafeFileError(f"load: range constraint on {key!r} has the bound {v!r}, not an "
                                      "integer within ±2**63; refusing the file")

    def walk(o: Any) -> None:
        if isinstance(o, dict):
            for k, v in o.items():
                if k == "target" and isinstance(v, str):
                    _check_target(v)
                elif k == "expr_str" and isinstance(v, str):
                    _check_expr(v, budget)
                elif k in ("as_custom_obj", "custom_obj_values") and v:
                    raise UnsafeFileError("load: the program holds script objects; refusing the file")
                else:
                    walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(doc)
    return guards


def user_inputs(doc: Mapping[str, Any]) -> list[str]:
    """Names of the program's tensor inputs, in order (``L['name']`` in its guards)."""
    out = []
    for s in doc["graph_module"]["signature"]["input_specs"]:
        arg = s.get("user_input", {}).get("arg", {})
        if "as_tensor" in arg:
            out.append(arg["as_tensor"]["name"])
    return out


# ------------------------------------------------------------------------------------------------ guards
# torch.export's guards are Python source over the inputs' sizes (``L['img0'].size()[2] // 8 * 8 >= 2``).
# They are never compiled or run: each is parsed into a syntax tree, checked against this short list of
# size arithmetic, and evaluated by :func:`_guard_value` on the sizes of the inputs of each call.
_GUARD_CALLS = {"max": max, "min": min, "abs": abs, "int": int, "float": float,
                "math.trunc": math.trunc, "math.floor": math.floor, "math.ceil": math.ceil,
                "math.sqrt": math.sqrt, "torch.sym_float": float, "torch.sym_int": int, "torch.sym_max": max,
                "torch.sym_min": min, "torch.sym_not": lambda x: not x, "torch.sym_sqrt": math.sqrt}
_GUARD_BINOPS: dict[type, Any] = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
                                  ast.Mult: lambda a, b: a * b, ast.FloorDiv: lambda a, b: a // b,
                                  ast.Mod: lambda a, b: a % b, ast.Div: lambda a, b: a / b}
_GUARD_CMP: dict[type, Any] = {ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b,
                               ast.Lt: lambda a, b: a < b, ast.LtE: lambda a, b: a <= b,
                               ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b}


def _parse_guards(codes: Any, names: list[str], budget: _ExprBudget) -> list[tuple[str, ast.AST]]:
    """Each guard's syntax tree, checked to be size arithmetic on the inputs ``names``."""
    if not isinstance(codes, list) or not all(isinstance(c, str) for c in codes):
        raise UnsafeFileError("load: the program's guards are not a list of strings; refusing the file")
    out = []
    for code in codes:
        refuse = _refuser(code, "guard")
        if len(code) > LIMITS["expr_chars"]:
            refuse(f"is longer than {LIMITS['expr_chars']} characters")
        try:
            tree = ast.parse(code, mode="eval").body
        except Exception:
            refuse("does not parse")
        n = sum(1 for _ in ast.walk(tree))
        budget.nodes -= n
        if n > LIMITS["expr_nodes"] or budget.nodes < 0:
            refuse(f"has more than {LIMITS['expr_nodes']} nodes or takes the file past "
                   f"{LIMITS['total_nodes']} in all")
        _guard_value(tree, None, names, refuse, 0)  # validates without sizes
        out.append((code, tree))
    return out


def _guard_value(node: ast.AST, sizes: dict[str, tuple[int, ...]] | None, names: list[str], refuse: Any,
                 depth: int) -> Any:
    """Evaluate a checked guard on ``sizes`` (name -> shape); ``sizes=None`` only checks the tree."""
    if depth > LIMITS["expr_depth"]:
        refuse(f"is nested deeper than {LIMITS['expr_depth']} levels")
    d = depth + 1

    def ev(x: ast.AST) -> Any:
        return _guard_value(x, sizes, names, refuse, d)

    if isinstance(node, ast.Constant) and isinstance(node.value, int | float | bool):
        return node.value
    if isinstance(node, ast.BoolOp):
        values = [ev(v) for v in node.values]
        if sizes is None:
            return True
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub | ast.UAdd):
        v = ev(node.operand)
        return v if sizes is None else (not v if isinstance(node.op, ast.Not) else
                                        -v if isinstance(node.op, ast.USub) else v)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        base = ev(node.left)
        _exponent(node.right, refuse)  # a small integer constant
        return 1 if sizes is None else base ** ev(node.right)
    if isinstance(node, ast.BinOp) and type(node.op) in _GUARD_BINOPS:
        a, b = ev(node.left), ev(node.right)
        if sizes is None:
            return 1
        try:
            return _GUARD_BINOPS[type(node.op)](a, b)
        except ZeroDivisionError:
            return 0
    if isinstance(node, ast.Compare) and all(type(op) in _GUARD_CMP for op in node.ops):
        values = [ev(node.left), *(ev(c) for c in node.comparators)]
        if sizes is None:
            return True
        return all(_GUARD_CMP[type(op)](a, b) for op, a, b in zip(node.ops, values, values[1:]))
    if isinstance(node, ast.Call) and not node.keywords:
        fn = ast.unparse(node.func)
        if fn in _GUARD_CALLS:
            args = [ev(a) for a in node.args]
            return 1 if sizes is None else _GUARD_CALLS[fn](*args)
        if fn.endswith((".size", ".dim")) or fn.endswith(".stride") or fn.endswith(".storage_offset"):
            pass
        else:
            refuse(f"calls {fn}")
    # L['img0'].size()[2], L['img0'].size(2), L['img0'].dim()
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Call):
        shape = _guard_shape(node.value, sizes, names, refuse)
        index = node.slice
        if not (isinstance(index, ast.Constant) and isinstance(index.value, int)) or index.value > 16:
            refuse("indexes a size with something other than a small constant")
        return 1 if sizes is None else shape[index.value]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "dim":
        shape = _guard_shape(ast.Call(func=ast.Attribute(value=node.func.value, attr="size"), args=[],
                                      keywords=[]), sizes, names, refuse)
        return 1 if sizes is None else len(shape)
    refuse(f"holds {ast.unparse(node)[:60]!r}")
    raise AssertionError


def _guard_shape(call: ast.Call, sizes: dict[str, tuple[int, ...]] | None, names: list[str],
                 refuse: Any) -> tuple[int, ...]:
    """``L['name'].size()``: the shape of the input ``name``."""
    f = call.func
    ok = (isinstance(f, ast.Attribute) and f.attr == "size" and not call.args and not call.keywords
          and isinstance(f.value, ast.Subscript) and isinstance(f.value.value, ast.Name)
          and f.value.value.id == "L" and isinstance(f.value.slice, ast.Constant)
          and f.value.slice.value in names)
    if not ok:
        refuse("reads something other than an input's size")
    return () if sizes is None else sizes[f.value.slice.value]  # type: ignore[union-attr]


def guard_hook(guards: list[tuple[str, ast.AST]], names: list[str], exported_on: list[list[int]]) -> Any:
    """A forward pre-hook that raises a clear error when the inputs' sizes break a guard of the program."""
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if len(args) != len(names) or not all(isinstance(a, torch.Tensor) for a in args):
            return  # the program's own input check names what is wrong
        sizes = {n: tuple(a.shape) for n, a in zip(names, args)}
        for code, tree in guards:
            try:
                ok = bool(_guard_value(tree, sizes, names, _refuser(code, "guard"), 0))
            except (IndexError, ValueError, OverflowError, TypeError):
                ok = False
            if not ok:
                got = ", ".join(f"{n} {tuple(s)}" for n, s in sizes.items())
                raise ValueError(f"forward: inputs of sizes {got} are outside what the saved program was "
                                 f"exported for (on {exported_on}): it needs {code}. The model's code fixes "
                                 "or ties these sizes in a way torch.export could only record as a "
                                 "condition; use sizes that meet it, or load the original class with "
                                 "ck.load(path, trusted=True)")

    return hook
