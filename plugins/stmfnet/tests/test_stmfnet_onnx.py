"""Splatting and correlation export to ONNX as scatter-adds and shifted products, checked in ONNX Runtime."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from compresskit_stmfnet.ops import correlation, softmax_splat
from compresskit_stmfnet.ops.onnx import correlation_decomposed, sum_splat_decomposed
from torch import nn

from compresskit.deploy.onnx import onnx_available

_spec = importlib.util.spec_from_file_location("_stmfnet_ref", Path(__file__).with_name("test_ops.py"))
_ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ref)

needs_onnx = pytest.mark.skipif(onnx_available() is not None,
                                reason=f"the [onnx] extra is not installed ({onnx_available()})")


def test_decompositions_equal_the_naive_loops():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 6, 7, generator=g, dtype=torch.float64)
    flow = torch.randn(2, 2, 6, 7, generator=g, dtype=torch.float64) * 3  # some corners land outside
    torch.testing.assert_close(sum_splat_decomposed(x, flow), _ref.naive_splat(x, flow), rtol=0, atol=1e-12)
    f1, f2 = (torch.rand(2, 5, 6, 7, generator=g, dtype=torch.float64) for _ in range(2))
    torch.testing.assert_close(correlation_decomposed(f1, f2), _ref.naive_correlation(f1, f2), rtol=0,
                               atol=1e-12)


class _FlowWarp(nn.Module):
    """Cost volume → flow → softmax splatting (the structure of ST-MFNet's flow branch)."""

    def __init__(self):
        super().__init__()
        self.feat = nn.Conv2d(3, 4, 3, padding=1)
        self.flow = nn.Conv2d(81, 3, 3, padding=1)

    def forward(self, a, b):
        cost = correlation(self.feat(a), self.feat(b))
        flow, z = self.flow(cost).split([2, 1], 1)
        return softmax_splat(a, flow * 2, z)


@needs_onnx
def test_splat_and_correlation_export_as_standard_onnx_ops(tmp_path):
    import onnx

    from compresskit.deploy.onnx import export_onnx, run_session, session

    torch.manual_seed(0)
    model = _FlowWarp().eval()
    xs = (torch.rand(1, 3, 8, 10), torch.rand(1, 3, 8, 10))
    result = export_onnx(model, xs, tmp_path / "flow.onnx")
    assert sorted(result.decomposed) == ["compresskit_stmfnet::correlation", "compresskit_stmfnet::sum_splat"]
    assert all(isinstance(d, str) for d in (result.input_shapes[0][0], *result.input_shapes[0][2:]))
    assert {n.domain for n in onnx.load(str(tmp_path / "flow.onnx")).graph.node} <= {"", "ai.onnx"}
    ys = (torch.rand(2, 3, 12, 9), torch.rand(2, 3, 12, 9))
    with torch.inference_mode():
        want = model(*ys)
    torch.testing.assert_close(run_session(session(tmp_path / "flow.onnx"), ys)[0], want, rtol=0, atol=1e-4)
