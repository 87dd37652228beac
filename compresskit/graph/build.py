"""Walk a traced fx graph once, applying each node's channel rule, and collect groups.

The builder owns the records rules write: the union-find over channel elements, the fresh blocks, the
module tensors indexed by elements (members) and the frozen elements with their reasons.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from compresskit.graph.channels import ChannelGraph, CountCheck, RawMember, UnionFind, build_groups
from compresskit.graph.rules import ParamRef, RuleContext, TensorInfo, flatten_infos, lookup_rule


def to_meta(value: Any) -> Any:
    """Replace tensors in a (nested) value by shape-only :class:`TensorInfo`."""
    if isinstance(value, torch.Tensor):
        return TensorInfo(tuple(int(s) for s in value.shape))
    if isinstance(value, tuple) and not isinstance(value, torch.Size):
        items = [to_meta(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, list):
        return [to_meta(v) for v in value]
    if isinstance(value, dict):
        return {k: to_meta(v) for k, v in value.items()}
    return value


class GraphBuilder:
    """Apply rules node by node (in graph order, which is execution order) and build the groups."""

    def __init__(
        self,
        root: nn.Module,
        graph: fx.Graph,
        meta: dict[fx.Node, Any],
        method: str,
        placeholder_params: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.graph = graph
        self.meta = meta
        self.method = method
        self.placeholder_params = placeholder_params or {}
        self.uf = UnionFind()
        self.blocks: list[np.ndarray] = []
        self.frozen: list[tuple[np.ndarray, str]] = []
        self.memo: dict[tuple[str, str, int], tuple[np.ndarray, str, str]] = {}
        self.extra_roles: dict[tuple[str, str, int], dict[str, str]] = {}  # tied tensors: other roles
        self.layer_order: list[tuple[str, str]] = []
        self.infos: dict[fx.Node, Any] = {}
        self.checks: list[CountCheck] = []  # sizes computed in the forward that must follow the pruning
        self.size_exprs: dict[fx.Node, Any] = {}  # memo of rules.size_expr
        self._modules = dict(root.named_modules())
        self.aliases, self.tied = tied_tensors(root)

    def canonical(self, module: str, tensor: str) -> tuple[str, str]:
        """The first name of a tensor that several modules share (tied weights), else the name itself."""
        return self.aliases.get((module, tensor), (module, tensor))

    # -- services for rules --------------------------------------------------------------------------
    def resolve(self, a: Any) -> Any:
        if isinstance(a, fx.Node):
            return self.infos[a]
        if isinstance(a, tuple) and not isinstance(a, torch.Size):
            return tuple(self.resolve(v) for v in a)
        if isinstance(a, list):
            return [self.resolve(v) for v in a]
        if isinstance(a, dict):
            return {k: self.resolve(v) for k, v in a.items()}
        if isinstance(a, slice):
            return slice(self.resolve(a.start), self.resolve(a.stop), self.resolve(a.step))
        return a

    def fresh(self, n: int) -> np.ndarray:
        ids = self.uf.make(int(n))
        self.blocks.append(ids)
        return ids

    def freeze(self, ids: np.ndarray, reason: str) -> None:
        self.frozen.append((np.asarray(ids, dtype=np.int64), reason))

    def require_count(
        self, lhs: np.ndarray, pos: np.ndarray, neg: np.ndarray, const: int, reason: str
    ) -> None:
        """After shrinking, ``kept(lhs) + kept(neg)`` must equal ``kept(pos) + const`` (checked at the
        end, in :func:`~compresskit.graph.channels.build_groups`)."""
        as_ids = [np.asarray(a, dtype=np.int64) for a in (lhs, pos, neg)]
        self.checks.append(CountCheck(*as_ids, int(const), reason))

    def get_module(self, name: str) -> nn.Module | None:
        return self._modules.get(name)

    def module_type(self, name: str) -> str:
        m = self._modules.get(name)
        return type(m).__name__ if m is not None else ""

    def param_shape(self, module: str, tensor: str) -> tuple[int, ...]:
        mod = self._modules.get(module)
        t = getattr(mod, tensor, None) if mod is not None else None
        if not isinstance(t, torch.Tensor):
            raise KeyError(f"{module}.{tensor} is not a parameter or buffer of the model")
        return tuple(t.shape)

    def weight_ids(self, module: str, tensor: str, dim: int, role: str, type_name: str) -> np.ndarray:
        module, tensor = self.canonical(module, tensor)
        key = (module, tensor, dim)
        if key in self.memo:
            return self.memo[key][0]
        ids = self.fresh(self.param_shape(module, tensor)[dim])
        self.memo[key] = (ids, role, type_name)
        self.layer_order.append((module, type_name))
        return ids

    def member(self, module: str, tensor: str, dim: int, ids: np.ndarray, role: str, type_name: str) -> None:
        module, tensor = self.canonical(module, tensor)
        size = self.param_shape(module, tensor)[dim]
        if len(ids) != size:
            raise ValueError(f"{module}.{tensor} dim {dim} has {size} positions, rule gave {len(ids)} ids")
        key = (module, tensor, dim)
        if key in self.memo:  # module called again, or a tied tensor: same positions, same units
            self.uf.union_arrays(self.memo[key][0], ids)
            if role != self.memo[key][1]:  # a tied tensor used in another role (embedding row / head column)
                self.extra_roles.setdefault(key, {}).setdefault(role, type_name)
            return
        self.memo[key] = (np.array(ids, dtype=np.int64), role, type_name)
        self.layer_order.append((module, type_name))

    def describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            what = f"{type(self._modules.get(node.target)).__name__} '{node.target}'"
        elif node.op == "call_method":
            what = f"method .{node.target}()"
        elif node.op == "call_function":
            what = _target_name(node.target)
        else:
            what = node.op
        return f"{what} (node {node.name})"

    # -- the walk ------------------------------------------------------------------------------------
    def run(self) -> ChannelGraph:
        for node in self.graph.nodes:
            self.infos[node] = self._visit(node)
        raw = [RawMember(m, t, d, ids, role, tn) for (m, t, d), (ids, role, tn) in self.memo.items()]
        raw += [
            RawMember(m, t, d, self.memo[(m, t, d)][0], role, tn)
            for (m, t, d), roles in self.extra_roles.items()
            for role, tn in roles.items()
        ]
        groups, layers = build_groups(self.uf, self.blocks, raw, self.frozen, self.layer_order, self.checks)
        graph = ChannelGraph(groups, layers, self.method, self.graph, type(self.root).__name__, len(self.uf))
        graph.tied = self.tied
        return graph

    def _visit(self, node: fx.Node) -> Any:
        meta = self.meta.get(node)
        if node.op == "placeholder":
            if node.name in self.placeholder_params:
                module, _, tensor = self.placeholder_params[node.name].rpartition(".")
                return TensorInfo(meta.shape, param=ParamRef(module, tensor, tuple(range(len(meta.shape)))))
            return self._graph_input(meta, node)
        if node.op == "get_attr":
            module, _, tensor = str(node.target).rpartition(".")
            mod = self._modules.get(module)
            if (
                isinstance(meta, TensorInfo)
                and mod is not None
                and (
                    tensor in dict(mod.named_parameters(recurse=False))
                    or tensor in dict(mod.named_buffers(recurse=False))
                )
            ):
                return TensorInfo(meta.shape, param=ParamRef(module, tensor, tuple(range(len(meta.shape)))))
            return meta
        if node.op == "output":
            for t in flatten_infos(self.resolve(node.args)):
                if t.tracked:
                    self.freeze(t.ids, "graph output")
            return None
        in_place = node.op == "call_function" and node.target is operator.setitem  # returns None
        if not flatten_infos(meta) and not (in_place and flatten_infos(self.resolve(node.args))):
            return meta  # shapes, dtypes, python numbers: not a channel op
        module = self._modules.get(node.target) if node.op == "call_module" else None
        rule = lookup_rule(node.op, node.target, module)
        ctx = RuleContext(self, node, module, str(node.target) if module is not None else "")
        out = None
        if rule is not None:
            try:
                out = rule(ctx)
            except Exception as e:  # a rule that cannot handle this call: the op is unknown here
                ctx.freeze_all_inputs(f"channel rule failed ({type(e).__name__}: {e})")
                return meta
        if in_place and rule is not None:
            return None  # the rule recorded what the write joins or freezes; the node's value is None
        if out is None:
            ctx.freeze_all_inputs("no channel rule for this op (unknown means frozen)")
            return meta
        return out

    def _graph_input(self, meta: Any, node: fx.Node) -> Any:
        if isinstance(meta, TensorInfo):
            if len(meta.shape) == 0:
                return meta
            cdim = 1 if len(meta.shape) >= 4 else len(meta.shape) - 1  # images/videos: NC...; tokens: last
            ids = self.fresh(meta.shape[cdim])
            self.freeze(ids, f"graph input '{node.name}'")
            return TensorInfo(meta.shape, cdim, ids)
        if isinstance(meta, list | tuple | dict):
            items = meta.values() if isinstance(meta, dict) else meta
            conv = [self._graph_input(v, node) for v in items]
            if isinstance(meta, dict):
                return dict(zip(meta.keys(), conv))
            return type(meta)(conv)
        return meta


def tied_tensors(root: nn.Module) -> tuple[dict[tuple[str, str], tuple[str, str]], list[list[str]]]:
    """Parameters and buffers held by several modules (tied weights: two convs sharing one weight, an
    embedding tied to its output head): ``{(module, tensor): (first module, tensor)}`` for every later
    name, and the tied names grouped (``[["emb.weight", "head.weight"], ...]``). The graph indexes such a
    tensor once, under its first name, so every use of it keeps the same channels (one tensor in the
    result; :func:`compresskit.shrink` cuts it once and gives every holder the cut tensor)."""
    seen: dict[int, tuple[str, str]] = {}
    aliases: dict[tuple[str, str], tuple[str, str]] = {}
    tied: dict[tuple[str, str], list[str]] = {}
    for mod_name, mod in root.named_modules(remove_duplicate=False):
        for store in (mod._parameters, mod._buffers):
            for t_name, t in store.items():
                if t is None:
                    continue
                key = (mod_name, t_name)
                first = seen.setdefault(id(t), key)
                if first != key and key not in aliases:
                    aliases[key] = first
                    names = tied.setdefault(first, [_qualname(*first)])
                    if _qualname(*key) not in names:
                        names.append(_qualname(*key))
    return aliases, list(tied.values())


def _qualname(module: str, tensor: str) -> str:
    return f"{module}.{tensor}" if module else tensor


def _target_name(target: Any) -> str:
    if isinstance(target, str):
        return target
    mod = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", None) or str(target)
    if mod.startswith("torch.nn.functional"):
        return f"F.{name}"
    if mod in ("_operator", "operator"):
        return f"operator.{name}"
    if hasattr(target, "_schema") or type(target).__name__.startswith("OpOverload"):
        return str(target)
    return f"{mod + '.' if mod and mod != 'builtins' else ''}{name}"
