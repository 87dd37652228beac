"""What ``result.save`` checks before it reports success, and what ``ck.load`` checks before it evaluates or
allocates anything: bounded size expressions, bounded recipes, weights of the right shape and dtype, sizes
and keyword arguments a program fixes, file modes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import compresskit as ck
from compresskit import models as model_registry
from compresskit.api import CompressResult
from compresskit.program_check import check_program
from compresskit.report import CompressReport, ModelStats
from compresskit.saving import LIMITS, SaveError, UnsafeFileError

_NO_STEPS = dict(sparsify={"steps": 0}, recover={"steps": 0}, measure_latency=False, progress=False)


def _conv_file(tmp_path: Path) -> tuple[Path, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 1)).eval()
    data = [(torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8))]
    result = ck.compress(model, data, config=_NO_STEPS)
    path = result.save(tmp_path / "small.pt")
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        return path, x, result.model(x)


def _program_doc(path: Path) -> dict:
    return json.loads(torch.load(path, weights_only=True)["program"]["json"])


# ------------------------------------------------------------------------------------------------ item 5
@pytest.mark.parametrize("expr", [
    "10**10**12",                                                     # evaluated, this never ends
    "Pow(Integer(10), Pow(Integer(10), Integer(12)))",
    "Pow(Pow(Pow(Integer(2), Integer(64)), Integer(64)), Integer(64))",  # 2**262144
    "Mul(" + ", ".join(["Integer(9223372036854775807)"] * 80) + ")",  # 2**5040
    "Float('1.5', precision=1000000000)",                            # a billion-bit float
    "Symbol('u99999999999', integer=True)",                           # the unbacked-symbol counter loop
    "Add(" * 80 + "Symbol('s0')" + ", Integer(1))" * 80,              # deeper than the limit
    "Add(" + ", ".join(["Symbol('s0')"] * 3000) + ")",                # more nodes than the limit
    "Symbol('s0').__class__",
])
def test_unbounded_size_expressions_are_refused_before_evaluation(tmp_path: Path, expr: str) -> None:
    path, _, _ = _conv_file(tmp_path)
    doc = _program_doc(path)
    meta = next(iter(doc["graph_module"]["graph"]["tensor_values"].values()))
    meta["sizes"][0] = {"as_expr": {"expr_str": expr, "hint": None}}
    with pytest.raises(UnsafeFileError, match="size expression"):
        check_program(doc)


def test_crafted_range_constraints_are_refused(tmp_path: Path) -> None:
    path, _, _ = _conv_file(tmp_path)
    for key, bounds in [("u99999999999", {"min_val": 2, "max_val": None}),   # loops ~1e11 times in torch
                        ("10**10**12", {"min_val": 2, "max_val": None}),
                        ("s0", {"min_val": 2, "max_val": 10**40})]:
        doc = _program_doc(path)
        doc["range_constraints"] = {key: bounds}
        with pytest.raises(UnsafeFileError, match="range constraint"):
            check_program(doc)


def test_the_size_expressions_export_writes_for_float_scales_and_padding_pass() -> None:
    doc = {"graph_module": {"signature": {"input_specs": []}}, "range_constraints": {
        "6 - s49": {"min_val": 2, "max_val": 4}, "s0": {"min_val": 2, "max_val": None}}}
    exprs = [
        "TruncToInt(Mul(Float('0.0625', precision=53), ToFloat(Symbol('s25', positive=True, integer=True))))",
        "Add(ToFloat(FloorDiv(Symbol('s0', positive=True, integer=True), Integer(2))), Float('0.5', "
        "precision=53))",
        "Add(Integer(16), Mul(Integer(-1), Mod(Symbol('s24', positive=True, integer=True), Integer(16))))",
        "Max(Integer(1), Mul(Integer(4), TruncToInt(Mul(Float('0.25', precision=53), ToFloat(Symbol('s58', "
        "positive=True, integer=True))))))",
        "PowByNatural(Symbol('s0', positive=True, integer=True), Integer(2))",
        "Mul(" + ", ".join(f"Symbol('s{i}', positive=True, integer=True)" for i in range(12)) + ")",  # numels
    ]
    doc["graph_module"]["graph"] = {"nodes": [], "sym_int_values": {
        f"v{i}": {"as_expr": {"expr_str": e, "hint": None}} for i, e in enumerate(exprs)}}
    check_program(doc)  # no error


def test_a_recipe_asking_for_too_much_memory_is_refused_before_allocating(tmp_path: Path) -> None:
    with model_registry.MODELS.snapshot():
        @ck.register_model("test_limits_net")
        def net(width: int = 8) -> nn.Module:
            return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 4))

        data = [(torch.randn(2, 4), torch.randn(2, 4))]
        result = ck.compress(ck.create_model("test_limits_net"), data, config=_NO_STEPS, target="1.2x params")
        path = result.save(tmp_path / "reg.pt")
        assert isinstance(ck.load(path), nn.Sequential)
        saved = torch.load(path, weights_only=True)
        saved["registered"]["inputs"] = [([100_000, 3, 1000, 1000], "float32")]  # 1.2 TB of zeros
        torch.save(saved, tmp_path / "big_inputs.pt")
        with pytest.raises(UnsafeFileError, match="example inputs.*MiB.*COMPRESSKIT_LOAD_MAX_BYTES"):
            ck.load(tmp_path / "big_inputs.pt")
        saved = torch.load(path, weights_only=True)
        saved["registered"]["kwargs"] = {"width": 10**12}  # 32 TB of weights
        torch.save(saved, tmp_path / "big_model.pt")
        with pytest.raises(UnsafeFileError, match="MiB of weights"):
            ck.load(tmp_path / "big_model.pt")
    assert LIMITS["spec_bytes"] < 4_800_000_000  # the 4.8 GB a crafted spec could ask for is refused


# ------------------------------------------------------------------------------------------------ item 8
def test_weights_of_the_wrong_shape_or_dtype_are_refused_at_load(tmp_path: Path) -> None:
    path, x, y = _conv_file(tmp_path)
    name = next(k for k in torch.load(path, weights_only=True)["state_dict"] if k.endswith("weight"))
    for bad in (lambda t: torch.zeros(t.shape[0] + 1, *t.shape[1:]), lambda t: t.double()):
        saved = torch.load(path, weights_only=True)
        saved["state_dict"][name] = bad(saved["state_dict"][name])
        saved["shapes"][name] = list(saved["state_dict"][name].shape)  # consistent, but not the program's
        saved["dtypes"][name] = str(saved["state_dict"][name].dtype).removeprefix("torch.")
        torch.save(saved, tmp_path / "bad.pt")
        with pytest.raises(ValueError, match=rf"do not fit.*{name}: file"):
            ck.load(tmp_path / "bad.pt")
    saved = torch.load(path, weights_only=True)
    saved["state_dict"][name] = saved["state_dict"][name].double()  # differs from what the file records
    torch.save(saved, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match="damaged or was edited"):
        ck.load(tmp_path / "edited.pt")
    with torch.no_grad():
        assert torch.equal(ck.load(path)(x), y)


def test_a_registered_model_with_weights_of_another_dtype_is_refused(tmp_path: Path) -> None:
    with model_registry.MODELS.snapshot():
        @ck.register_model("test_dtype_net")
        def net() -> nn.Module:
            return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))

        result = ck.compress(ck.create_model("test_dtype_net"), [(torch.randn(2, 4), torch.randn(2, 4))],
                             config=_NO_STEPS, target="1.2x params")
        path = result.save(tmp_path / "reg.pt")
        saved = torch.load(path, weights_only=True)
        saved["state_dict"] = {k: v.double() for k, v in saved["state_dict"].items()}
        saved["dtypes"] = {k: "float64" for k in saved["dtypes"]}
        torch.save(saved, tmp_path / "f64.pt")
        with pytest.raises(ValueError, match=r"do not fit.*float64, model expects .* float32"):
            ck.load(tmp_path / "f64.pt")


class _Seq(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Sequential(nn.Linear(4, 24), nn.ReLU(), nn.Linear(24, 16))
        self.lstm, self.head = nn.LSTM(16, 16, batch_first=True), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        y, _ = self.lstm(self.emb(x))
        return self.head(y) * scale


def test_sizes_and_keyword_arguments_a_program_fixes_are_said_and_a_recipe_keeps_them(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 5, 4)
    with model_registry.MODELS.snapshot():
        ck.register_model("test_seq_net")(_Seq)
        result = ck.compress(_Seq().eval(), [(x, torch.rand(2, 5, 4))], config=_NO_STEPS,
                             target="1.2x params")
        with pytest.warns(UserWarning) as caught:
            path = result.save(tmp_path / "seq.pt")
        said = " ".join(str(w.message) for w in caught)
        assert "input 0 dim 1 = 5" in said and "LSTM" in said  # the sequence length export fixes
        assert "scale=1.0" in said  # and the keyword argument
        loaded = ck.load(path)
        longer = torch.rand(2, 7, 4)
        with torch.no_grad():
            assert torch.allclose(loaded(x), result.model(x), atol=1e-6)
            with pytest.raises(ValueError, match=r"outside what the saved program.*size\(\)\[1\] == 5"):
                loaded(longer)
            with pytest.raises(TypeError, match=r"keyword arguments \['scale'\].*scale=1\.0"):
                loaded(x, scale=2.0)
        # the registered recipe rebuilds the real class: every length, every keyword argument
        path = result.save(tmp_path / "recipe.pt", model_name="test_seq_net")
        assert torch.load(path, weights_only=True)["program"] is None
        rebuilt = ck.load(path)
        with torch.no_grad():
            assert torch.equal(rebuilt(longer, scale=2.0), result.model(longer, scale=2.0))


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_saved_files_follow_the_umask(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        path, _, _ = _conv_file(tmp_path)
        from compresskit.io import atomic_write_json

        report = atomic_write_json({"a": 1}, tmp_path / "r.json")
    finally:
        os.umask(old)
    for p in (path, report):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask


# ------------------------------------------------------------------------------------------------ item 1
class _NumpyNet(nn.Module):
    """numpy in forward: torch.export cannot follow it."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.a, self.m = nn.Conv2d(3, width, 3, padding=1), nn.Conv2d(width, 4, 1)
        self.b = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.m(torch.relu(self.a(x)))
        return self.b(y / (float(np.abs(y.detach().numpy()).mean()) + 1.0))


def test_a_model_export_cannot_read_fails_at_save_or_saves_by_recipe(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = [(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8))]
    result = ck.compress(_NumpyNet().eval(), data, config=_NO_STEPS)
    with pytest.raises(SaveError, match=r"torch\.export failed.*model_name=.*allow_pickle=True"):
        result.save(tmp_path / "np.pt")
    assert not (tmp_path / "np.pt").exists()  # nothing written that the loader would refuse
    with pytest.warns(UserWarning, match="only a pickled module"):
        pickled = result.save(tmp_path / "pickled.pt", allow_pickle=True)
    with pytest.raises(UnsafeFileError, match="trusted=True"):
        ck.load(pickled)
    x = torch.rand(1, 3, 8, 8)
    with model_registry.MODELS.snapshot():
        ck.register_model("test_numpy_net")(_NumpyNet)
        path = result.save(tmp_path / "recipe.pt", model_name="test_numpy_net")
        loaded = ck.load(path)  # untrusted: the registered factory, shrunk to the stored widths
        with torch.no_grad():
            assert torch.equal(loaded(x), result.model(x))
    with pytest.raises(ValueError, match="not registered in this process.*test_saving_checks"):
        ck.load(path)  # a process that did not register it says which module does


def test_save_refuses_a_recipe_that_does_not_rebuild_the_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = [(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8))]
    result = ck.compress(_NumpyNet().eval(), data, config=_NO_STEPS)
    with model_registry.MODELS.snapshot():
        ck.register_model("test_other_net")(lambda: nn.Sequential(nn.Conv2d(3, 3, 1)))
        with pytest.raises(SaveError, match="registered recipe 'test_other_net' does not load back"):
            result.save(tmp_path / "wrong.pt", model_name="test_other_net")
    assert not (tmp_path / "wrong.pt").exists()


def test_save_refuses_a_program_that_loads_but_computes_something_else(tmp_path: Path, monkeypatch) -> None:
    import compresskit.saving as saving

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 1)).eval()
    report = CompressReport(model="m", loss="", inputs="", before=ModelStats(0, 0),
                            example_input_shapes=[[1, 3, 8, 8]])
    result = CompressResult(model, None, report, None, ["float32"])
    real = saving._build

    def off_by_one(*a, **k):  # noqa: ANN002, ANN003, ANN202
        loaded = real(*a, **k)
        loaded.register_forward_hook(lambda m, i, o: o + 1)
        return loaded

    monkeypatch.setattr(saving, "_build", off_by_one)
    with pytest.raises(SaveError, match="does not reproduce the model: output differs"):
        result.save(tmp_path / "off.pt")
    assert not (tmp_path / "off.pt").exists()


def test_compress_into_out_dir_keeps_a_model_export_cannot_read_and_says_so(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = [(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8))]
    with pytest.warns(UserWarning, match="compressed.pt holds a pickled module.*torch.export failed"):
        result = ck.compress(_NumpyNet().eval(), data, config={**_NO_STEPS, "out_dir": str(tmp_path)})
    assert any("trusted=True" in n for n in result.report.notes)
    assert any("trusted=True" in n for n in json.loads((tmp_path / "report.json").read_text())["notes"])
    with pytest.raises(UnsafeFileError):
        ck.load(tmp_path / "compressed.pt")
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(ck.load(tmp_path / "compressed.pt", trusted=True)(x), result.model(x))
