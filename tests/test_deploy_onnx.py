"""ONNX export: written only when ONNX Runtime reproduces the model; custom ops decomposed or named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from compresskit.deploy.onnx import onnx_available

pytestmark = pytest.mark.skipif(onnx_available() is not None,
                                reason=f"the [onnx] extra is not installed ({onnx_available()})")

from zoo import ZOO, build  # noqa: E402

from compresskit.deploy.onnx import (  # noqa: E402
    OnnxExportError,
    export_onnx,
    register_onnx_decomposition,
    run_session,
    session,
)

# models whose forward reads data into numpy: torch.export cannot capture them, export must say so
_NOT_EXPORTABLE = {"numpy_forward": "numpy", "item_branch": r"\.item\(\)"}
# models that fix their spatial sizes (a Linear after flatten, positional embeddings, a learned filter
# per frequency): the file must keep them fixed and say why
_FIXED_SPATIAL = {"vit_mha", "flatten_classifier", "fft_global_filter", "two_frame_vfi", "shape_cache",
                  "size_tensor"}


def _ort(path, xs):
    return run_session(session(path), xs)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_exports_and_onnx_runtime_matches_pytorch(name, tmp_path):
    torch.set_num_threads(1)
    model, inputs = build(name)
    path = tmp_path / f"{name}.onnx"
    if name in _NOT_EXPORTABLE:
        with pytest.raises(OnnxExportError, match=_NOT_EXPORTABLE[name]):
            export_onnx(model, inputs, path)
        assert not path.exists()
        return
    result = export_onnx(model, inputs, path)
    assert path.is_file() and result.checks and all(c.get("ok", True) for c in result.checks)
    shapes = result.input_shapes
    assert all(isinstance(s[0], str) for s in shapes), "the batch dimension stays dynamic"
    spatial = [d for s, x in zip(shapes, inputs) for d in s[2:] if x.dim() >= 4]
    if name in _FIXED_SPATIAL:
        assert all(isinstance(d, int) for d in spatial) and result.notes
    elif spatial:
        assert all(isinstance(d, str) for d in spatial), shapes
    # independent of the export's own check: run the file on fresh inputs of batch 3
    gen = torch.Generator().manual_seed(7)
    xs = tuple(torch.rand((3, *x.shape[1:]), generator=gen) if x.is_floating_point() else
               torch.zeros((3, *x.shape[1:]), dtype=x.dtype) for x in inputs)
    with torch.no_grad():
        want = model(*xs)
    got = _ort(path, xs)[0]
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) <= 1e-4 + 1e-3 * scale


@torch.library.custom_op("compresskit_test_deploy::shift_add", mutates_args=())
def _shift_add(x: Tensor, k: int) -> Tensor:
    return torch.roll(x, k, dims=-1) + x


@_shift_add.register_fake
def _(x: Tensor, k: int) -> Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("compresskit_test_deploy::no_onnx", mutates_args=())
def _no_onnx(x: Tensor) -> Tensor:
    return x * 2


@_no_onnx.register_fake
def _(x: Tensor) -> Tensor:
    return torch.empty_like(x)


class _Uses(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.conv, self.op = nn.Conv2d(3, 4, 3, padding=1), op

    def forward(self, x):
        return self.op(self.conv(x))


def test_custom_op_without_onnx_form_is_named_with_the_fix(tmp_path):
    model = _Uses(lambda x: torch.ops.compresskit_test_deploy.no_onnx(x)).eval()
    path = tmp_path / "m.onnx"
    with pytest.raises(OnnxExportError) as info:
        export_onnx(model, torch.rand(1, 3, 8, 8), path)
    text = str(info.value)
    assert "compresskit_test_deploy::no_onnx" in text and "register_onnx_decomposition" in text
    assert not path.exists()


def test_registered_decomposition_is_exported_and_checked(tmp_path):
    model = _Uses(lambda x: torch.ops.compresskit_test_deploy.shift_add(x, 2)).eval()
    x = torch.rand(1, 3, 8, 10)
    # a wrong decomposition is caught by the ONNX Runtime comparison: nothing is written
    register_onnx_decomposition(torch.ops.compresskit_test_deploy.shift_add,
                                lambda x, k: torch.roll(x, k + 1, dims=-1) + x)
    with pytest.raises(OnnxExportError, match="differs from PyTorch"):
        export_onnx(model, x, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
    register_onnx_decomposition(torch.ops.compresskit_test_deploy.shift_add,
                                lambda x, k: torch.cat([x[..., -k:], x[..., :-k]], -1) + x)
    result = export_onnx(model, x, tmp_path / "good.onnx")
    assert result.decomposed == ["compresskit_test_deploy::shift_add"]
    assert len([c for c in result.checks if c.get("ok")]) == 2  # the example size and a second one
    y = torch.rand(2, 3, 5, 7)
    with torch.no_grad():
        np.testing.assert_allclose(_ort(tmp_path / "good.onnx", (y,))[0], model(y), atol=1e-5)


def test_tolerance_and_path_arguments_are_checked(tmp_path):
    model = nn.Conv2d(3, 3, 1)
    with pytest.raises(ValueError, match="path: expected a file name ending in .onnx"):
        export_onnx(model, torch.rand(1, 3, 4, 4), tmp_path / "m.pt")
    with pytest.raises(ValueError, match="rtol, atol"):
        export_onnx(model, torch.rand(1, 3, 4, 4), tmp_path / "m.onnx", rtol=-1)


def test_compress_result_export_and_cli_export(tmp_path, capsys):
    import compresskit as ck
    from compresskit.cli import main

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 3, padding=1))
    data = [(torch.rand(2, 3, 12, 12), torch.rand(2, 3, 12, 12)) for _ in range(2)]
    out = tmp_path / "run"
    result = ck.compress(net, data, config=dict(sparsify={"steps": 0}, recover={"steps": 0},
                                                measure_latency=False, progress=False, out_dir=str(out)))
    record = result.export(tmp_path / "small.onnx")
    assert (tmp_path / "small.onnx").is_file() and record.dynamic
    x = torch.rand(1, 3, 20, 16)
    with torch.no_grad():
        np.testing.assert_allclose(_ort(tmp_path / "small.onnx", (x,))[0], result.model(x), atol=1e-5)
    assert main(["export", str(out), "--onnx", "--out", str(tmp_path / "cli.onnx")]) == 0
    printed = capsys.readouterr().out
    assert "ONNX Runtime matches PyTorch on 2 size(s)" in printed and (tmp_path / "cli.onnx").is_file()
    assert main(["export", str(tmp_path / "nothing"), "--onnx"]) == 1
    assert "RUN_DIR" in capsys.readouterr().err
