"""The channel-dependency graph: union-find over channel elements → :class:`ChannelGroup`.

Vocabulary (see ``docs/graph.md``):

* **channel element** – one channel of one tensor *position* that a rule creates (``ctx.fresh(n)``): the
  output channels of a conv, the features of a Linear, a graph input's channels. Every tensor in the
  traced graph carries, along its channel dimension, an array of element ids (its *channel space*).
* **unit** – a union-find class of elements: channels that must be kept or dropped *together* (an
  element-wise add joins the channels of both operands; a chunk into two halves joins channel ``j`` of
  each half so both halves keep the same count; a whole GroupNorm group is one unit).
* **group** – the units that come from the same fresh block(s): "conv1's output channels and everything
  tied to them". ``keep={group.id: indices}`` picks units of a group by index ``0..size-1``.

A group's :class:`Member` s say which module tensors (weights, biases, running stats, parameters used
directly) have a dimension indexed by the group, position by position (``positions`` → ``units``), and in
which role: ``"out"`` (a layer *produces* these channels: rows of a conv/linear weight), ``"in"`` (a
layer *consumes* them by a weighted sum: columns of a conv/linear weight), ``"param"`` (per-channel
parameters and buffers that travel with the channels: biases, norms, PReLU slopes, class tokens).

Groups are computed once, at trace time; a group is frozen (not prunable) if any of its elements is
frozen, and :meth:`ChannelGraph.explain` says why.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    import networkx
    from rich.table import Table

ROLES = ("out", "in", "param")


class UnionFind:
    """Union-find over integer elements, resolved in bulk.

    Rules only *record* unions while the graph is walked (``union``/``union_arrays`` append edges);
    :meth:`labels` then computes every element's class at once with vectorised min-label propagation and
    pointer jumping (numpy), which is what makes building groups for large models cheap.
    """

    def __init__(self) -> None:
        self.n = 0
        self._a: list[np.ndarray] = []
        self._b: list[np.ndarray] = []
        self._labels: np.ndarray | None = None

    def __len__(self) -> int:
        return self.n

    def make(self, n: int) -> np.ndarray:
        """Create ``n`` fresh singleton elements and return their ids."""
        start = self.n
        self.n += n
        self._labels = None
        return np.arange(start, start + n, dtype=np.int64)

    def union(self, a: int, b: int) -> None:
        self.union_arrays(np.array([a], dtype=np.int64), np.array([b], dtype=np.int64))

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        """Union ``a[i]`` with ``b[i]`` for every ``i`` (arrays of equal length)."""
        if len(a) != len(b):
            raise ValueError(f"cannot join channel spaces of different sizes ({len(a)} vs {len(b)})")
        self._a.append(np.asarray(a, dtype=np.int64))
        self._b.append(np.asarray(b, dtype=np.int64))
        self._labels = None

    def labels(self) -> np.ndarray:
        """``labels[e]``: the smallest element of ``e``'s class (its root)."""
        if self._labels is not None:
            return self._labels
        lab = np.arange(self.n, dtype=np.int64)
        if self._a:
            a, b = np.concatenate(self._a), np.concatenate(self._b)
            while True:
                m = np.minimum(lab[a], lab[b])
                new = lab.copy()
                np.minimum.at(new, a, m)
                np.minimum.at(new, b, m)
                while True:  # pointer jumping: follow labels to their fixpoint
                    jumped = new[new]
                    if np.array_equal(jumped, new):
                        break
                    new = jumped
                if np.array_equal(new, lab):
                    break
                lab = new
        self._labels = lab
        return lab

    def find(self, x: int) -> int:
        return int(self.labels()[x])

    def roots(self, ids: np.ndarray) -> np.ndarray:
        return self.labels()[np.asarray(ids, dtype=np.int64)]


@dataclass(frozen=True)
class RawMember:
    """A module tensor dimension indexed by channel elements (what rules record, before grouping)."""

    module: str
    tensor: str
    dim: int
    ids: np.ndarray  # element id per position along ``dim`` (-1: position not tied to any group)
    role: str
    module_type: str = ""


@dataclass(frozen=True)
class CountCheck:
    """A size the forward computes must follow the pruning: ``kept(lhs) + kept(neg) == kept(pos) + const``
    for every keep-set, where ``kept(ids)`` counts the channels of ``ids`` that survive.

    Rules record one per split piece or slice boundary along the channels: ``lhs`` are the channels the
    piece (or the prefix before a boundary) holds in the traced model, ``pos``/``neg``/``const`` describe
    the size expression (``a.shape[1] - b.shape[1] + 3``). Checked once all unions are known: it holds when
    the free (non-frozen) units of both sides are the same multiset and the frozen channels balance the
    constant; otherwise every group it touches is frozen with ``reason``.
    """

    lhs: np.ndarray
    pos: np.ndarray
    neg: np.ndarray
    const: int
    reason: str


@dataclass(frozen=True)
class Member:
    """One module tensor dimension that a group indexes.

    ``tensor`` is a parameter or buffer of ``module`` (qualified name, ``""`` for the root). Position
    ``positions[k]`` along ``dim`` holds unit ``units[k]`` of the group, so keeping units ``K`` keeps the
    positions whose unit is in ``K``. ``role`` is ``"out"`` (the module produces these channels),
    ``"in"`` (the module consumes them through a weighted sum) or ``"param"`` (a per-channel tensor).
    """

    module: str
    tensor: str
    dim: int
    role: str
    positions: torch.Tensor
    units: torch.Tensor
    length: int  # size of ``dim`` in the traced model
    module_type: str = ""

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.tensor}" if self.module else self.tensor


@dataclass
class ChannelGroup:
    """Channels that are kept or dropped together.

    ``size`` is the number of units (``keep`` indices run over ``0..size-1``); ``channels_per_unit``
    the number of channels of the group's widest tensor each unit stands for (1 for plain channels, the
    conv-group count for a grouped conv kept balanced, the group size of a GroupNorm group).
    ``producers``: modules whose *output* channels these are (rows of their weight, role ``"out"``);
    ``consumers``: modules that read them through a weighted sum (role ``"in"``). ``reasons`` explain a
    frozen group.
    """

    id: int
    size: int
    prunable: bool
    members: list[Member] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    channels_per_unit: int = 1

    @property
    def producers(self) -> list[str]:
        return _unique(m.module for m in self.members if m.role == "out")

    @property
    def consumers(self) -> list[str]:
        return _unique(m.module for m in self.members if m.role == "in")

    @property
    def modules(self) -> list[str]:
        return _unique(m.module for m in self.members)

    def num_params(self, model: torch.nn.Module | None = None) -> int:
        """Parameter scalars in the slices of ``model`` this group indexes (buffers excluded); 0 without
        a model. Dropping ``k`` of ``size`` units removes about ``k / size`` of it."""
        total = 0
        for m in self.members:
            if model is None:
                continue
            t = _get_tensor(model, m.module, m.tensor)
            if isinstance(t, torch.nn.Parameter):
                total += t.numel() // max(1, m.length) * len(m.positions)
        return total

    def __repr__(self) -> str:
        state = "prunable" if self.prunable else "frozen"
        return (
            f"ChannelGroup(id={self.id}, size={self.size}, {state}, producers={self.producers}, "
            f"consumers={self.consumers})"
        )


@dataclass
class Layer:
    """A module (or functional op with weights) in execution order, and the groups it touches."""

    name: str
    type: str
    in_groups: list[int] = field(default_factory=list)
    out_groups: list[int] = field(default_factory=list)
    param_groups: list[int] = field(default_factory=list)


class _ConstantsRoot(torch.nn.Module):
    """``model``'s attributes plus the traced constants, as the root a GraphModule copies from."""

    def __init__(self, model: torch.nn.Module, constants: dict[str, torch.Tensor]) -> None:
        super().__init__()
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_constants", constants)

    def __getattr__(self, name: str) -> Any:
        constants = object.__getattribute__(self, "_constants")
        if name in constants:
            return constants[name]
        return getattr(object.__getattribute__(self, "_model"), name)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _get_tensor(model: torch.nn.Module, module: str, tensor: str) -> torch.Tensor:
    mod = model.get_submodule(module) if module else model
    return getattr(mod, tensor)


class ChannelGraph:
    """The traced model's channel groups, layers in execution order, and why frozen groups are frozen.

    Built by :func:`compresskit.trace`; never constructed by hand. Attributes:

    * ``groups`` – ``list[ChannelGroup]``, ``groups[i].id == i``, in order of first appearance (input to
      output).
    * ``layers`` – ``list[Layer]`` in execution order (topological, input to output), each with the
      groups it consumes (``in_groups``), produces (``out_groups``) and carries per-channel tensors of
      (``param_groups``). Width planning walks ``reversed(graph.layers)``.
    * ``method`` – ``"fx"`` (symbolic tracing with concrete values) or ``"export"`` (torch.export).
    * ``fx_graph`` – the traced ``torch.fx.Graph`` (for inspection; :meth:`graph_module` runs it).
    * ``tied`` – names of tensors several modules share (``[["emb.weight", "head.weight"]]``): each is
      indexed once, under its first name, so the shared tensor keeps one set of channels.
    * ``data_branches`` – where the forward took a Python decision (``if``, ``int()``) on tensor *values*
      while tracing (fx only): the graph holds the path these inputs took; other inputs may take another.
    * ``fx_constants`` – tensors the fx graph reads by ``get_attr`` that are not the model's own
      (``torch.tensor(...)`` calls in forward; fx stows them, ``ck.trace`` keeps them here instead).
    """

    def __init__(
        self,
        groups: list[ChannelGroup],
        layers: list[Layer],
        method: str,
        fx_graph: Any = None,
        model_type: str = "",
        num_elements: int = 0,
    ) -> None:
        self.groups = groups
        self.layers = layers
        self.method = method
        self.fx_graph = fx_graph
        self.fx_constants: dict[str, torch.Tensor] = {}
        self.tied: list[list[str]] = []  # tensors several modules share, by name (kept shared)
        self.data_branches: list[str] = []  # Python decisions on tensor values the trace followed
        self.model_type = model_type
        self.num_elements = num_elements

    def graph_module(self, model: torch.nn.Module) -> Any:
        """The traced fx graph as a runnable ``torch.fx.GraphModule`` over ``model``'s modules and
        parameters (the model that was traced, or a copy of it); only for ``method == "fx"``."""
        from torch import fx

        if self.method != "fx" or self.fx_graph is None:
            raise ValueError(f"graph_module: only an fx trace can be re-run, this graph is {self.method!r}")
        root = _ConstantsRoot(model, self.fx_constants)
        gm = fx.GraphModule(root, copy.deepcopy(self.fx_graph), class_name=type(model).__name__)
        return gm

    # -- queries -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, group_id: int) -> ChannelGroup:
        return self.group(group_id)

    def group(self, group_id: int) -> ChannelGroup:
        if not isinstance(group_id, int | np.integer) or not 0 <= int(group_id) < len(self.groups):
            raise KeyError(f"group_id: expected an int in [0, {len(self.groups)}), got {group_id!r}")
        return self.groups[int(group_id)]

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def groups_of(self, module: str) -> list[ChannelGroup]:
        """Groups with a member in ``module`` (qualified name)."""
        return [g for g in self.groups if module in g.modules]

    def group_order(self) -> list[int]:
        """Group ids in topological order of their producing layer (input → output)."""
        seen: dict[int, None] = {}
        for layer in self.layers:
            for gid in (*layer.in_groups, *layer.param_groups, *layer.out_groups):
                seen.setdefault(gid, None)
        for g in self.groups:
            seen.setdefault(g.id, None)
        return list(seen)

    def explain(self, group_id: int) -> str:
        """A human-readable account of one group: size, members with roles, and why it is frozen."""
        g = self.group(group_id)
        lines = [
            f"group {g.id}: {g.size} unit(s) x {g.channels_per_unit} channel(s), "
            + ("prunable" if g.prunable else "FROZEN"),
        ]
        if g.producers:
            lines.append(f"  produced by: {', '.join(g.producers)}")
        if g.consumers:
            lines.append(f"  consumed by: {', '.join(g.consumers)}")
        for m in g.members:
            lines.append(
                f"  {m.role:5s} {m.qualname} dim {m.dim}: {len(m.positions)} of {m.length} positions"
                + (f" ({m.module_type})" if m.module_type else "")
            )
        if not g.prunable:
            lines.append("  frozen because:")
            lines.extend(f"    - {r}" for r in g.reasons)
        return "\n".join(lines)

    def to_networkx(self) -> networkx.DiGraph:
        """A DiGraph with one node per layer (``kind="layer"``) and per group (``kind="group"``, named
        ``"group:<id>"``); edges layer → group (produces or carries) and group → layer (consumes)."""
        import networkx as nx

        g = nx.DiGraph()
        for grp in self.groups:
            g.add_node(
                f"group:{grp.id}",
                kind="group",
                id=grp.id,
                size=grp.size,
                prunable=grp.prunable,
                reasons=list(grp.reasons),
            )
        for layer in self.layers:
            g.add_node(layer.name, kind="layer", type=layer.type)
            for gid in layer.out_groups:
                g.add_edge(layer.name, f"group:{gid}", role="out")
            for gid in layer.param_groups:
                g.add_edge(layer.name, f"group:{gid}", role="param")
            for gid in layer.in_groups:
                g.add_edge(f"group:{gid}", layer.name, role="in")
        return g

    def summary(self, model: torch.nn.Module | None = None) -> Table:
        """A rich table: one row per group (id, size, state, producers, consumers, reason)."""
        from rich.table import Table

        t = Table(title=f"channel groups of {self.model_type or 'model'} (traced by {self.method})")
        for col in ("id", "size", "state", "producers", "consumers", "why frozen"):
            t.add_column(col, overflow="fold")
        for g in self.groups:
            t.add_row(
                str(g.id),
                f"{g.size}" + (f"x{g.channels_per_unit}" if g.channels_per_unit > 1 else ""),
                "prunable" if g.prunable else "frozen",
                _short(g.producers),
                _short(g.consumers),
                g.reasons[0] if g.reasons else "",
            )
        return t

    def print_summary(self) -> None:
        from rich.console import Console

        Console().print(self.summary())

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description of every group (for reports)."""
        return {
            "method": self.method,
            "model_type": self.model_type,
            "groups": [
                {
                    "id": g.id,
                    "size": g.size,
                    "prunable": g.prunable,
                    "channels_per_unit": g.channels_per_unit,
                    "producers": g.producers,
                    "consumers": g.consumers,
                    "reasons": g.reasons,
                    "members": [
                        {"tensor": m.qualname, "dim": m.dim, "role": m.role, "positions": len(m.positions)}
                        for m in g.members
                    ],
                }
                for g in self.groups
            ],
        }

    def __repr__(self) -> str:
        n_p = sum(g.prunable for g in self.groups)
        n_l = len(self.layers)
        return f"ChannelGraph({len(self.groups)} groups, {n_p} prunable, {n_l} layers, {self.method})"


def _short(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" (+{len(names) - n})" if len(names) > n else "")


def build_groups(
    uf: UnionFind,
    blocks: list[np.ndarray],
    raw_members: list[RawMember],
    frozen: list[tuple[np.ndarray, str]],
    layer_order: list[tuple[str, str]],
    checks: Sequence[CountCheck] = (),
) -> tuple[list[ChannelGroup], list[Layer]]:
    """Turn the rules' records (element unions, fresh blocks, members, freezes) into groups and layers.

    A unit is a union-find class of elements; two units are in the same group when they hold elements of
    the same fresh block. Units inside a group are ordered by their smallest element (for a conv output,
    channel order), groups by their first unit. Called once per trace; vectorised over elements.
    """
    labels = uf.labels()  # element -> unit (smallest element of the class)
    n = len(labels)
    # group-level union-find over units: every unit of a block joins the block's first unit
    gu = UnionFind()
    gu.make(n)
    for block in blocks:
        if len(block) > 1:
            units = labels[block]
            gu.union_arrays(np.full(len(units) - 1, units[0]), units[1:])
    glabels = gu.labels()
    units = np.unique(labels)  # sorted: ordered by smallest element
    unit_group_root = glabels[units]
    group_roots, first = np.unique(unit_group_root, return_index=True)
    order = np.argsort(first, kind="stable")  # groups by their first unit
    group_index = np.empty(n, dtype=np.int64)
    group_index[group_roots[order]] = np.arange(len(group_roots))
    unit_gid = group_index[unit_group_root]
    sizes = np.bincount(unit_gid, minlength=len(group_roots))
    # rank of each unit inside its group (units are sorted by smallest element already)
    sort = np.argsort(unit_gid, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.empty(len(units), dtype=np.int64)
    rank[sort] = np.arange(len(units)) - np.repeat(starts, sizes)
    gid_of = np.full(n, -1, dtype=np.int64)
    k_of = np.full(n, -1, dtype=np.int64)
    gid_of[units], k_of[units] = unit_gid, rank

    reasons: dict[int, list[str]] = defaultdict(list)
    for ids, reason in frozen:
        if len(ids) == 0:
            continue
        for gi in np.unique(gid_of[labels[ids]]).tolist():
            if reason not in reasons[gi]:
                reasons[gi].append(reason)
    if checks:
        _apply_count_checks(checks, labels, gid_of, len(group_roots), reasons)

    members: dict[int, list[Member]] = defaultdict(list)
    widest: dict[int, int] = defaultdict(int)
    layer_groups: dict[str, dict[str, list[int]]] = defaultdict(lambda: {"in": [], "out": [], "param": []})
    for rm in raw_members:
        pos_all = np.nonzero(rm.ids >= 0)[0]
        u = labels[rm.ids[pos_all]]
        g_all, k_all = gid_of[u], k_of[u]
        for gi in np.unique(g_all).tolist():
            sel = g_all == gi
            pos = pos_all[sel]
            members[gi].append(
                Member(
                    module=rm.module,
                    tensor=rm.tensor,
                    dim=rm.dim,
                    role=rm.role,
                    positions=torch.from_numpy(pos.astype(np.int64)),
                    units=torch.from_numpy(k_all[sel].astype(np.int64)),
                    length=len(rm.ids),
                    module_type=rm.module_type,
                )
            )
            widest[gi] = max(widest[gi], len(pos))
            lg = layer_groups[rm.module][rm.role]
            if gi not in lg:
                lg.append(gi)

    groups: list[ChannelGroup] = []
    for gi, size in enumerate(sizes.tolist()):
        mem = _dedupe_members(members.get(gi, []))
        rs = list(reasons.get(gi, []))
        if not mem and not rs:
            rs.append("no parameter or buffer is indexed by these channels (nothing to shrink)")
        groups.append(
            ChannelGroup(
                id=gi,
                size=size,
                prunable=not rs,
                members=mem,
                reasons=rs,
                channels_per_unit=max(1, widest.get(gi, size) // max(1, size)),
            )
        )
    layers = []
    seen: set[str] = set()
    for name, type_name in layer_order:
        if name in seen or name not in layer_groups:
            continue
        seen.add(name)
        lg = layer_groups[name]
        layers.append(Layer(name, type_name, list(lg["in"]), list(lg["out"]), list(lg["param"])))
    return groups, layers


def _dedupe_members(members: list[Member]) -> list[Member]:
    """The same tensor dimension recorded twice (a module called twice) is one member."""
    out: dict[tuple, Member] = {}
    for m in members:
        key = (m.module, m.tensor, m.dim, m.role, tuple(m.positions.tolist()))
        if key in out:
            if not torch.equal(out[key].units, m.units):
                raise RuntimeError(f"inconsistent channel map for {m.qualname} dim {m.dim}")
            continue
        out[key] = m
    return list(out.values())


def _apply_count_checks(
    checks: Sequence[CountCheck],
    labels: np.ndarray,
    gid_of: np.ndarray,
    n_groups: int,
    reasons: dict[int, list[str]],
) -> None:
    """Freeze the groups of every :class:`CountCheck` that does not hold (in place, into ``reasons``).

    Freezing only makes checks easier to satisfy (frozen channels are constants), so failing checks are
    frozen one at a time and the rest re-examined until none fails: no group is frozen that a check
    failing only because of another failed check would have dragged in.
    """
    frozen = np.zeros(n_groups, dtype=bool)
    for gi in reasons:
        frozen[gi] = True
    pending = list(checks)
    changed = True
    while changed and pending:
        changed = False
        still = []
        for c in pending:
            left_u = labels[np.concatenate([c.lhs, c.neg])]
            right_u = labels[c.pos]
            lf, rf = frozen[gid_of[left_u]], frozen[gid_of[right_u]]
            holds = int(lf.sum()) == int(rf.sum()) + c.const and np.array_equal(
                np.sort(left_u[~lf]), np.sort(right_u[~rf])
            )
            if holds:
                continue
            touched = np.unique(gid_of[labels[np.concatenate([c.lhs, c.pos, c.neg])]])
            if len(touched) == 0 or frozen[touched].all():
                still.append(c)  # cannot fail once everything is frozen (traced sizes agree); keep looking
                continue
            for gi in touched.tolist():
                frozen[gi] = True
                if c.reason not in reasons[gi]:
                    reasons[gi].append(c.reason)
            changed = True
        pending = still
