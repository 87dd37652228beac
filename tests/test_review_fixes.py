"""Three review findings: dict inputs survive saving (and a failed save never loses the run), a block
that runs only while training is not dropped by ``drop_unused=True``, and ``metrics=`` without a
``val_loader`` is evaluated on the held-out batches (or refused when there are none)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

import compresskit as ck


def _cfg(**kw):
    base = {"sparsify": {"steps": 0}, "recover": {"steps": 0}, "measure_latency": False, "progress": False}
    base.update(kw)
    return ck.CompressConfig(**base)


# ---------------------------------------------------------------------------------------- dict inputs
class DictNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, d):
        return self.b(torch.relu(self.a(d["x"])))


def _dict_batches(n: int = 4) -> list[tuple]:
    g = torch.Generator().manual_seed(0)
    return [({"x": torch.rand(2, 3, 8, 8, generator=g)}, torch.rand(2, 3, 8, 8, generator=g))
            for _ in range(n)]


def test_dict_inputs_compress_into_out_dir_saves_model_and_report(tmp_path):
    torch.manual_seed(0)
    net = DictNet()
    result = ck.compress(net, _dict_batches(), target="2x params", inputs_fn=lambda b: (b[0],),
                         config=_cfg(out_dir=str(tmp_path)))
    assert (tmp_path / "report.json").is_file() and (tmp_path / "compressed.pt").is_file()
    assert json.loads((tmp_path / "report.json").read_text())["example_input_shapes"] == [{"x": [2, 3, 8, 8]}]
    x = {"x": torch.rand(2, 3, 8, 8)}
    assert not any("pickled module" in n for n in result.report.notes)
    loaded = ck.load(tmp_path / "compressed.pt")  # an exported program: no unpickling
    torch.testing.assert_close(loaded.eval()(x), result.model.eval()(x))
    # the default example inputs are rebuilt as the dict the model takes
    (example,) = ck.api.example_inputs_of(result)
    assert set(example) == {"x"} and example["x"].shape == (2, 3, 8, 8)


def test_example_input_rebuilds_nested_structures():
    from compresskit.saving import _doubled, _example_input

    gen = torch.Generator().manual_seed(0)
    got = _example_input({"x": [2, 3], "ids": [[4], [5]]}, {"x": "float32", "ids": ["int64", "int32"]},
                         torch.float64, gen)
    assert got["x"].dtype == torch.float64 and got["x"].shape == (2, 3)
    assert [t.dtype for t in got["ids"]] == [torch.int64, torch.int32] and got["ids"][1].shape == (5,)
    assert _doubled({"x": [1, 3, 4, 5], "m": [[2, 7]]}) == {"x": [1, 3, 8, 10], "m": [[2, 7]]}
    with pytest.raises(ValueError, match="not a torch dtype name"):
        _example_input({"x": [2]}, {"y": "float32"}, torch.float32, gen)


def test_registered_model_with_dict_inputs_saves_and_loads(tmp_path):
    from compresskit.models import MODELS

    with MODELS.snapshot():
        ck.register_model("dict_net_test", task="test")(DictNet)
        torch.manual_seed(0)
        net = ck.create_model("dict_net_test")
        result = ck.compress(net, _dict_batches(), target="2x params", inputs_fn=lambda b: (b[0],),
                             config=_cfg())
        loaded = ck.load(result.save(tmp_path / "small.pt"))
        x = {"x": torch.rand(1, 3, 8, 8)}
        torch.testing.assert_close(loaded.eval()(x), result.model.eval()(x))


def _plain_run(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)) for _ in range(4)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ck.compress(net, data, target="2x params", config=_cfg(out_dir=str(tmp_path)))
    return json.loads((tmp_path / "report.json").read_text())["notes"], [str(w.message) for w in caught]


def test_unexpected_save_error_keeps_the_run(tmp_path, monkeypatch):
    """A bug while saving (not a SaveError) falls back to the pickle and a note; report.json is written."""
    import compresskit.saving as saving

    original = saving.save_result

    def broken(result, path, *, allow_pickle=False, **kw):
        if not allow_pickle:
            raise KeyError("boom")
        return original(result, path, allow_pickle=True, **kw)

    monkeypatch.setattr(saving, "save_result", broken)
    notes, said = _plain_run(tmp_path)
    assert any("pickled module" in n and "saving failed unexpectedly (KeyError: 'boom')" in n for n in notes)
    assert any("saving failed unexpectedly" in m for m in said)
    assert isinstance(ck.load(tmp_path / "compressed.pt", trusted=True), nn.Module)


def test_save_that_fails_even_as_a_pickle_still_writes_the_report(tmp_path, monkeypatch):
    import compresskit.saving as saving

    def broken(*a, **k):
        raise KeyError("boom")

    monkeypatch.setattr(saving, "save_result", broken)
    notes, said = _plain_run(tmp_path)
    assert any("compressed.pt was not written" in n and "result.model" in n for n in notes)
    assert not (tmp_path / "compressed.pt").exists()


def test_inputs_that_cannot_be_rebuilt_fall_back_to_the_pickle(tmp_path, monkeypatch):
    import compresskit.saving as saving

    def broken(*a, **k):
        raise ValueError("odd inputs")

    monkeypatch.setattr(saving, "_input_specs", broken)
    notes, _ = _plain_run(tmp_path)
    assert any("the example inputs could not be rebuilt (ValueError: odd inputs)" in n for n in notes)
    assert isinstance(ck.load(tmp_path / "compressed.pt", trusted=True), nn.Module)


# ------------------------------------------------------------------------------ training-only blocks
class TrainOnlyAux(nn.Module):
    """``aux`` runs only while training; ``spare`` never runs; BN statistics show whether train mode ran."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.aux = nn.Conv2d(3, 3, 3, padding=1)
        self.spare = nn.Conv2d(8, 8, 1)
        self.b = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        y = self.b(torch.relu(self.bn(self.a(x))))
        if self.training:
            y = y + 0.1 * self.aux(y)
        return y


def test_unused_parameters_count_train_mode_reads_without_moving_the_model():
    from compresskit.surgery.unused import unused_parameters

    torch.manual_seed(0)
    net = TrainOnlyAux().train()
    stats = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(2, 3, 8, 8)
    state = torch.random.get_rng_state()
    unused = unused_parameters(net, (x,))
    assert unused == {"spare.weight": 64, "spare.bias": 8}  # aux is read in train mode: kept
    assert all(torch.equal(v, stats[k]) for k, v in net.state_dict().items())  # BN stats unmoved
    assert torch.equal(torch.random.get_rng_state(), state) and net.training


def test_drop_unused_keeps_a_training_only_block():
    torch.manual_seed(0)
    net = TrainOnlyAux()
    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)) for _ in range(4)]
    cfg = ck.CompressConfig(sparsify={"steps": 2, "calibrate_every": 1}, recover={"steps": 1},
                            measure_latency=False, progress=False)
    result = ck.compress(net, data, target="1.2x params", config=cfg, drop_unused=True)
    names = {n for n, _ in result.model.named_parameters()}
    assert any(n.startswith("aux.") for n in names) and not any(n.startswith("spare.") for n in names)
    assert any("spare" in n and "removed (drop_unused=True)" in n for n in result.report.notes)
    result.model.train()(data[0][0])  # the training path still runs


# ------------------------------------------------------------------------- metrics without val_loader
def _mse(out, batch):
    return float(((out - batch[-1]) ** 2).mean())


def _net_and_batches(n: int):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    g = torch.Generator().manual_seed(0)
    return net, [(torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)) for _ in range(n)]


def test_metrics_without_val_loader_are_evaluated_on_the_held_out_batches():
    net, data = _net_and_batches(10)
    with torch.no_grad():  # holdout 0.1 of 10 batches: k = 1, index ⌊0.5·10/1⌋ = 5, by hand
        want = _mse(net.eval()(data[5][0]), data[5])
    cfg = ck.CompressConfig(measure_latency=False, progress=False)
    result = ck.compress(net, data, metrics={"mse": _mse}, budget="20 steps", target="2x params", config=cfg)
    before, after = result.report.before.metrics, result.report.after.metrics
    assert before["mse"] == pytest.approx(want, rel=1e-5)
    with torch.no_grad():
        assert after["mse"] == pytest.approx(_mse(result.model.eval()(data[5][0]), data[5]), rel=1e-5)
    assert any(n.startswith("metrics on 1 held-out batches") for n in result.report.notes)


def test_metrics_with_nothing_to_evaluate_on_are_refused_before_any_work():
    net, data = _net_and_batches(4)
    calls = []

    def loss(out, batch):
        calls.append(1)
        return ((out - batch[-1]) ** 2).mean()

    cfg = ck.CompressConfig(sparsify={"steps": 2}, recover={"steps": 1}, measure_latency=False,
                            progress=False)
    with pytest.raises(ValueError, match=r"metrics: \['mse'\] need batches.*no val_loader.*val_loader="):
        ck.compress(net, data, loss, metrics={"mse": _mse}, target="2x params", config=cfg)
    assert calls == []


def test_export_of_a_dict_input_model_says_what_to_do(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    result = ck.compress(DictNet(), _dict_batches(), target="2x params", inputs_fn=lambda b: (b[0],),
                         config=_cfg())
    with pytest.raises(TypeError, match="example_inputs: ONNX export takes tensor inputs.*dict.*wrapper"):
        result.export(tmp_path / "m.onnx")  # default inputs: rebuilt as the dict the model takes
    assert not (tmp_path / "m.onnx").exists()
