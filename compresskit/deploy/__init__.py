"""Deploying a (compressed) model: ONNX export checked in ONNX Runtime, runtimes and layouts timed side by
side, time per op kind.

- :mod:`compresskit.deploy.onnx`: :func:`export_onnx` and the registry of ONNX decompositions of custom ops.
- :mod:`compresskit.deploy.runtime`: latency of one model in each runtime/layout (eager NCHW, eager
  channels-last, ONNX Runtime) and the fastest of them.
- :mod:`compresskit.deploy.profile`: time per op kind (conv, warp, resize, matmul, element-wise).

The ONNX parts need the optional extra ``pip install 'compresskit[onnx]'`` (onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

from compresskit.deploy.onnx import (
    OnnxExportError,
    OnnxExportResult,
    export_onnx,
    onnx_available,
    register_onnx_decomposition,
)

__all__ = ["export_onnx", "OnnxExportError", "OnnxExportResult", "onnx_available",
           "register_onnx_decomposition"]
