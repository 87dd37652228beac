"""``compresskit export RUN_DIR --onnx``: the ONNX file of a model saved by ``CompressResult.save``.

The saved file names the example inputs' shapes and dtypes (registered spec, exported program or report);
the model is rebuilt with ``ck.load`` and exported with :func:`compresskit.deploy.onnx.export_onnx` on
random inputs of those shapes (uniform [0, 1) floats, zero integers).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["saved_model_file", "saved_input_specs", "export_saved"]

_NAMES = ("compressed.pt", "compressed_model.pt")


def saved_model_file(path: str | os.PathLike) -> Path:
    """``path`` itself, or the model file inside a run folder (``compressed.pt``, else the one stage file)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"RUN_DIR: {str(path)!r} does not exist (expected a run folder of "
                                "compresskit compress or a file written by CompressResult.save)")
    for name in _NAMES:
        if (path / name).is_file():
            return path / name
    stages = sorted(path.glob("*.model.pt"))
    if len(stages) == 1:
        return stages[0]
    raise FileNotFoundError(f"RUN_DIR: {str(path)!r} holds no compressed.pt (run every stage of the job, or "
                            "give the model file itself)")


def saved_input_specs(data: Mapping[str, Any]) -> list[tuple[list[int], str]]:
    """``[(shape, dtype name)]`` of the example inputs recorded in a saved file's contents."""
    reg = data.get("registered") or {}
    if reg.get("inputs"):
        return [(list(s), str(d)) for s, d in reg["inputs"]]
    prog = data.get("program") or {}
    if prog.get("input_shapes"):
        dtypes = [str(d).removeprefix("torch.") for d in prog.get("input_dtypes") or []]
        shapes = prog["input_shapes"]
        return [(list(s), dtypes[i] if i < len(dtypes) else "float32") for i, s in enumerate(shapes)]
    shapes = (data.get("report") or {}).get("example_input_shapes") or []
    if not shapes:
        raise ValueError("the file records no example input shapes; export the model in Python with "
                         "compresskit.deploy.export_onnx(model, example_inputs, path)")
    return [(list(s), "float32") for s in shapes]


def export_saved(path: str | os.PathLike, out: str | os.PathLike | None = None, *, trusted: bool = False,
                 **kw: Any) -> Any:
    """Export the model saved at ``path`` (file or run folder) to ``out`` (default: beside it,
    ``<name>.onnx``); ``kw`` go to :func:`~compresskit.deploy.onnx.export_onnx`."""
    from compresskit.api import load
    from compresskit.deploy.onnx import export_onnx

    src = saved_model_file(path)
    data = torch.load(src, map_location="cpu", weights_only=True) if not trusted else torch.load(
        src, map_location="cpu", weights_only=False)
    if not isinstance(data, Mapping):
        raise ValueError(f"RUN_DIR: {str(src)!r} is not a file written by CompressResult.save")
    specs = saved_input_specs(data)
    model = load(src, trusted=trusted)
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    float_dtype = param.dtype if param is not None else torch.float32
    gen = torch.Generator().manual_seed(0)
    inputs = []
    for shape, name in specs:
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"RUN_DIR: input dtype {name!r} in {str(src)!r} is not a torch dtype")
        inputs.append(torch.rand(shape, generator=gen, dtype=float_dtype) if dtype.is_floating_point
                      else torch.zeros(shape, dtype=dtype))
    target = Path(out) if out is not None else src.with_suffix(".onnx")
    return export_onnx(model, tuple(inputs), target, **kw)
