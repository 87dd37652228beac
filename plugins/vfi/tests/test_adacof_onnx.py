"""The AdaCoF op exports to ONNX as gathers: equal to the plain-loop formula, checked in ONNX Runtime."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from compresskit_vfi.ops import adacof, adacof_padding
from compresskit_vfi.ops.adacof_onnx import adacof_decomposed
from torch import nn

import compresskit as ck
from compresskit.deploy.onnx import onnx_available

_spec = importlib.util.spec_from_file_location("_adacof_ref", Path(__file__).with_name("test_ops_adacof.py"))
_ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ref)

needs_onnx = pytest.mark.skipif(onnx_available() is not None,
                                reason=f"the [onnx] extra is not installed ({onnx_available()})")


def _case(f, d, b=2, c=3, h=6, w=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    pad = adacof_padding(f, d)
    x = torch.rand(b, c, h + pad, w + pad, generator=g, dtype=torch.float64)
    wt = torch.rand(b, f * f, h, w, generator=g, dtype=torch.float64)
    # offsets of both signs, fractions and integers, and far outside the image (clamped taps)
    al = torch.randn(b, f * f, h, w, generator=g, dtype=torch.float64) * 3
    be = torch.randn(b, f * f, h, w, generator=g, dtype=torch.float64) * 3
    al[0, 0, 0, 0], be[0, 1, 1, 1], al[1, 2, 2, 2] = 40.0, -55.5, -2.0
    return x, wt, al, be


@pytest.mark.parametrize("f,d", [(3, 1), (5, 1), (3, 2)])
def test_decomposition_equals_the_published_formula(f, d):
    x, wt, al, be = _case(f, d)
    want = _ref.reference_adacof(x, wt, al, be, d)
    torch.testing.assert_close(adacof_decomposed(x, wt, al, be, d), want, rtol=0, atol=1e-12)


class _Warp(nn.Module):
    """Kernels from a conv, the frame warped by the AdaCoF op (the structure of AdaCoF's output)."""

    def __init__(self, f=3, d=1):
        super().__init__()
        self.f, self.d = f, d
        self.head = nn.Conv2d(3, 3 * f * f, 3, padding=1)

    def forward(self, frame):
        w, a, b = self.head(frame).chunk(3, 1)
        p = adacof_padding(self.f, self.d) // 2
        padded = torch.nn.functional.pad(frame, [p, p, p, p], mode="replicate")
        return adacof(padded, torch.softmax(w, 1), a * 2, b * 2, self.d)


@needs_onnx
def test_adacof_op_exports_as_standard_onnx_ops(tmp_path):
    import onnx

    from compresskit.deploy.onnx import export_onnx, run_session, session

    torch.manual_seed(0)
    model = _Warp().eval()
    result = export_onnx(model, torch.rand(1, 3, 10, 12), tmp_path / "warp.onnx")
    assert result.decomposed == ["compresskit_vfi::adacof"]
    assert isinstance(result.input_shapes[0][2], str) and isinstance(result.input_shapes[0][3], str)
    domains = {n.domain for n in onnx.load(str(tmp_path / "warp.onnx")).graph.node}
    assert domains <= {"", "ai.onnx"}, domains  # no custom domain: any ONNX runtime runs it
    x = torch.rand(2, 3, 9, 15)
    with torch.inference_mode():
        want = model(x)
    got = run_session(session(tmp_path / "warp.onnx"), (x,))[0]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


@needs_onnx
@pytest.mark.slow
@pytest.mark.parametrize("name", ["compressed_adacof"])
def test_published_model_exports_and_matches(name, tmp_path):
    from compresskit.deploy.onnx import export_onnx

    torch.set_num_threads(1)
    model = ck.create_model(name).eval()
    xs = (torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    result = export_onnx(model, xs, tmp_path / f"{name}.onnx", dynamic=False)
    assert result.checks[0]["ok"] and result.decomposed == ["compresskit_vfi::adacof"]
