"""Issue 24, item 6: what used to fail after the training instead of before.

* a model returning a dict / tuple / list goes through the distillation losses leaf by leaf (the value is
  checked against the mean of per-leaf losses computed here by hand);
* a forward that takes a dict compresses (the report used to fail on ``dict.shape`` after every stage);
* code that runs only in train mode (an auxiliary head, an EMA buffer) is seen before training: the
  channels it reads are kept, or the model is refused up front, naming the module.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import compresskit as ck
from compresskit.config import CompressConfig
from compresskit.losses import L1Loss


def test_leafwise_is_the_mean_of_the_leaf_losses() -> None:
    from compresskit.distillation.leaves import leafwise

    g = torch.Generator().manual_seed(0)
    a, b, c, d = (torch.randn(2, 3, generator=g) for _ in range(4))
    pred = {"frame": a, "aux": (b, torch.tensor([1, 2]))}  # an integer leaf is not compared
    ref = {"frame": c, "aux": (d, torch.tensor([3, 4]))}
    want = ((a - c).abs().mean() + (b - d).abs().mean()) / 2
    torch.testing.assert_close(leafwise(L1Loss(), pred, ref), want)
    torch.testing.assert_close(leafwise(L1Loss(), a, c), (a - c).abs().mean())
    with pytest.raises(TypeError, match=r"output: the student gives keys \['aux', 'frame'\], the reference"):
        leafwise(L1Loss(), pred, {"frame": c})
    with pytest.raises(TypeError, match=r"output\['aux'\]: the student gives 2 items, the reference 1"):
        leafwise(L1Loss(), pred, {"frame": c, "aux": [d]})


class _Net(nn.Module):
    def __init__(self, out: str = "tensor") -> None:
        super().__init__()
        self.out = out
        self.a, self.m = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.b, self.flow = nn.Conv2d(8, 3, 3, padding=1), nn.Conv2d(8, 2, 3, padding=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.m(torch.relu(self.a(x))))

    def forward(self, x: torch.Tensor) -> object:
        h = self.features(x)
        if self.out == "dict":
            return {"frame": self.b(h), "flow": self.flow(h)}
        if self.out == "tuple":
            return self.b(h), [self.flow(h)]
        return self.b(h)


def _batches(dict_inputs: bool = False) -> list:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(3):
        x, t = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
        out.append(({"x": x}, t) if dict_inputs else (x, t))
    return out


def _first(out: object) -> torch.Tensor:
    if isinstance(out, dict):
        return out["frame"]
    return out[0] if isinstance(out, tuple) else out


def _loss(out: object, batch: tuple) -> torch.Tensor:
    return nn.functional.l1_loss(_first(out), batch[1])


def _cfg(**kw) -> CompressConfig:
    return CompressConfig(**{"target": "1.3x params", "sparsify": {"steps": 2}, "recover": {"steps": 2},
                             "measure_latency": False, "progress": False, **kw})


@pytest.mark.parametrize("out", ["dict", "tuple"])
def test_nested_outputs_go_through_recovery(out: str) -> None:
    torch.manual_seed(0)
    model = _Net(out)
    result = ck.compress(model, _batches(), _loss, (_batches()[0][0],), config=_cfg())
    got = result.model(_batches()[0][0])
    assert type(got) is type(model(_batches()[0][0]))
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in model.parameters())


class _DictIn(_Net):
    def forward(self, inputs: dict) -> torch.Tensor:  # type: ignore[override]
        return self.b(self.features(inputs["x"]))


def test_dict_inputs_compress() -> None:
    torch.manual_seed(0)
    batches = _batches(dict_inputs=True)
    result = ck.compress(_DictIn(), batches, _loss, (batches[0][0],), config=_cfg(),
                         inputs_fn=lambda b: (b[0],))
    assert result.report.example_input_shapes == [{"x": [2, 3, 8, 8]}]
    assert result.model(batches[0][0]).shape == (2, 3, 8, 8)


class _TrainOnly(_Net):
    """An auxiliary head on ``a``'s channels and an EMA of ``m``'s channels, in train mode only."""

    def __init__(self) -> None:
        super().__init__()
        self.aux, self.n = nn.Conv2d(8, 3, 1), nn.Conv2d(8, 8, 3, padding=1)
        self.register_buffer("ema", torch.zeros(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        h1 = torch.relu(self.a(x))
        h2 = torch.relu(self.m(h1))
        out = self.b(torch.relu(self.n(h2)))
        if self.training:
            with torch.no_grad():
                self.ema.mul_(0.9).add_(0.1 * h2.mean((0, 2, 3)))
            out = out + 0.1 * self.aux(h1)
        return out


def _group_of(g: ck.ChannelGraph, qualname: str) -> ck.ChannelGroup:
    return next(gr for gr in g.groups for m in gr.members if m.qualname == qualname and m.dim == 0)


def test_train_mode_code_is_covered_before_training() -> None:
    from compresskit.graph.modes import cover_train_mode

    torch.manual_seed(0)
    model, x = _TrainOnly(), torch.randn(2, 3, 8, 8)
    g = ck.trace(model, x)
    assert _group_of(g, "a.weight").prunable and _group_of(g, "m.weight").prunable  # eval mode alone
    notes = cover_train_mode(model, g, (x,))
    a, m = _group_of(g, "a.weight"), _group_of(g, "m.weight")
    assert not a.prunable and "aux.weight" in " ".join(a.reasons)
    assert not m.prunable and "ema" in " ".join(m.reasons)
    assert len(notes) == 2
    assert torch.equal(model.ema, torch.zeros(8))  # the train-mode trace ran on a copy
    assert _group_of(g, "n.weight").prunable  # what train-mode code does not touch stays prunable
    # end to end: training (train mode) runs on the shrunk model
    result = ck.compress(model, _batches(), _loss, (x,), config=_cfg(target="1.1x params"))
    assert any("train mode" in n for n in result.report.notes)


def test_untraceable_train_mode_code_is_refused_up_front(monkeypatch) -> None:
    import compresskit.graph.trace as tr

    real = tr.trace

    def no_train_trace(model, inputs, *, method="auto", mode="eval"):  # noqa: ANN001, ANN202
        if mode == "train":
            raise RuntimeError("cannot trace")
        return real(model, inputs, method=method, mode=mode)

    monkeypatch.setattr(tr, "trace", no_train_trace)
    calls = []
    cfg = _cfg()
    with pytest.raises(ValueError, match=r"'aux'.* only in train mode"):
        ck.compress(_TrainOnly(), _batches(),
                    lambda o, b: (torch.is_grad_enabled() and calls.append(1)) or _loss(o, b),
                    (_batches()[0][0],), config=cfg)
    assert calls == []  # refused before any training step (the start-up loss check runs without grad)


def test_train_mode_check_on_inputs_train_mode_cannot_run() -> None:
    from compresskit.graph.modes import cover_train_mode

    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(1, 4)  # batch norm in train mode needs two samples
    g = ck.trace(model, x)
    prunable = [gr.id for gr in g.prunable_groups]
    notes = cover_train_mode(model, g, (x,))
    assert len(notes) == 1 and "not checked" in notes[0]
    assert [gr.id for gr in g.prunable_groups] == prunable  # nothing frozen on a guess
