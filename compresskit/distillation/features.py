"""Feature distillation: intermediate outputs addressed by module path, captured with forward hooks, and
learned 1×1 adapters that map student widths onto teacher widths (Romero et al. 2015, "FitNets"; the
future work of ST-MFNet Mini)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def get_submodule(model: nn.Module, path: str, who: str) -> nn.Module:
    """``model.get_submodule(path)`` with an error that lists nearby valid paths."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        hint = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
        raise ValueError(f"{who} has no module at path {path!r}; valid paths: {hint}") from None


class FeatureHooks:
    """Forward hooks that keep the latest output of each named module: ``hooks.features[path]``."""

    def __init__(self, model: nn.Module, paths: Iterable[str], who: str):
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        for path in dict.fromkeys(paths):
            module = get_submodule(model, path, who)
            self._handles.append(module.register_forward_hook(self._keep(path, who)))

    def _keep(self, path: str, who: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"feature distillation: {who} module {path!r} returned "
                                f"{type(output).__name__}, expected a tensor")
            self.features[path] = output
        return hook

    def pop(self) -> dict[str, torch.Tensor]:
        out, self.features = self.features, {}
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def make_adapter(student_feature: torch.Tensor, teacher_feature: torch.Tensor, where: str) -> nn.Module:
    """A 1×1 convolution (or a linear map for (B, C) features) from the student's channel count to the
    teacher's; the identity when they already agree. Channels are dimension 1, or the last dimension when
    only that one differs (the (B, L, C) tokens of a linear layer): then a linear map over it."""
    s, t = student_feature, teacher_feature
    if s.dim() != t.dim() or s.dim() < 2:
        raise ValueError(f"feature distillation {where}: student feature {tuple(s.shape)} and teacher "
                         f"feature {tuple(t.shape)} must both be (B, C, ...) tensors of the same rank")
    if s.shape[2:] != t.shape[2:]:
        if s.dim() >= 3 and s.shape[:-1] == t.shape[:-1]:  # channels last: a transformer's (B, L, C) tokens
            return nn.Linear(s.shape[-1], t.shape[-1])
        raise ValueError(f"feature distillation {where}: spatial sizes differ, student {tuple(s.shape)} vs "
                         f"teacher {tuple(t.shape)}; pick layers at the same resolution")
    c_in, c_out = s.shape[1], t.shape[1]
    if c_in == c_out:
        return nn.Identity()
    conv = {2: None, 3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}.get(s.dim())
    if s.dim() == 2:
        return nn.Linear(c_in, c_out)
    if conv is None:
        raise ValueError(f"feature distillation {where}: features of rank {s.dim()} are not supported")
    return conv(c_in, c_out, kernel_size=1)


class StudentWithAdapters(nn.Module):
    """What the training loop trains when distilling: the student plus its feature adapters.

    ``forward`` returns the student's output; the adapted student features of the last call are in
    ``self.adapted[path]`` (computed inside forward, so DDP sees the adapters as part of the model).
    """

    def __init__(self, student: nn.Module, adapters: dict[str, nn.Module]):
        super().__init__()
        self.student = student
        self.paths = list(adapters)
        self.adapters = nn.ModuleList(adapters.values())
        self._hooks = FeatureHooks(student, self.paths, "student") if self.paths else None
        self.adapted: dict[str, torch.Tensor] = {}

    def forward(self, *inputs: Any) -> Any:
        output = self.student(*inputs)
        if self._hooks is not None:
            raw = self._hooks.pop()
            self.adapted = {p: a(raw[p]) for p, a in zip(self.paths, self.adapters)}
        return output


#: layer types whose outputs ``features="auto"`` may pair
FEATURE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                  nn.Linear)


def auto_feature_pairs(student: nn.Module, teacher: nn.Module) -> list[str]:
    """Module paths to distil with ``features="auto"``: the last layer of each block, in both models.

    ``compresskit.shrink`` keeps the teacher's module names, so layers are matched by name. Candidates are
    conv / transposed-conv / linear modules present under the same path and type in both models. A layer's
    *block* is its nearest ancestor holding at least two candidates (a ``Sequential(conv, act)`` wrapper
    is not a block, the stage around it is); the last candidate of each block in registration order is
    paired (its output is the block's output feature). Paths come in the teacher's module order.
    """
    s_mods = dict(student.named_modules())
    cands = [n for n, m in teacher.named_modules()
             if n and isinstance(m, FEATURE_LAYERS) and type(s_mods.get(n)) is type(m)]
    if not cands:
        return []

    def ancestors(path: str) -> list[str]:
        parts = path.split(".")
        return [".".join(parts[:i]) for i in range(len(parts) - 1, -1, -1)]  # nearest first; "" = root

    def inside(path: str, block: str) -> bool:
        return block == "" or path.startswith(block + ".")

    last: dict[str, str] = {}
    for path in cands:
        block = next(a for a in ancestors(path) if sum(inside(c, a) for c in cands) >= 2 or a == "")
        last[block] = path  # candidates are in registration order: the last one wins
    chosen = set(last.values())
    return [p for p in cands if p in chosen]


@torch.no_grad()
def fit_adapter_(adapter: nn.Module, student_feature: torch.Tensor, teacher_feature: torch.Tensor,
                 ridge: float = 1e-3) -> nn.Module:
    """Initialise a 1×1 conv / linear adapter by ridge least squares on one batch of features:
    ``[W b] = argmin ‖W·s + b − t‖² + ridge·‖s‖²_mean·‖W‖²`` over every position, so the feature term
    starts at the best the current student can do and pulls it only toward what it cannot yet express
    (a random adapter would first push noise into the student)."""
    if isinstance(adapter, nn.Identity):
        return adapter
    dim = -1 if isinstance(adapter, nn.Linear) and student_feature.dim() > 2 else 1  # channels-last tokens
    s = student_feature.detach().double().movedim(dim, -1).reshape(-1, student_feature.shape[dim])
    t = teacher_feature.detach().double().movedim(dim, -1).reshape(-1, teacher_feature.shape[dim])
    x = torch.cat([s, torch.ones(len(s), 1, dtype=s.dtype, device=s.device)], 1)
    gram = x.T @ x
    reg = ridge * float(gram.diagonal()[:-1].mean().clamp_min(1e-12))
    eye = torch.eye(gram.shape[0], dtype=s.dtype, device=s.device)
    eye[-1, -1] = 0.0  # the bias is not shrunk
    sol = torch.linalg.solve(gram + reg * eye, x.T @ t)  # (C_s + 1, C_t)
    weight, bias = sol[:-1].T, sol[-1]
    adapter.weight.copy_(weight.reshape(adapter.weight.shape).to(adapter.weight))
    if adapter.bias is not None:
        adapter.bias.copy_(bias.to(adapter.bias))
    return adapter
