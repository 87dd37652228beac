"""Entry point of compresskit-stmfnet: registers ST-MFNet and ST-MFNet Mini with compresskit."""

from __future__ import annotations

from typing import Any

import compresskit as ck
from compresskit_stmfnet.models import STMFNET_MINI_WIDTHS, STMFNET_WIDTHS, STMFNet, STMFNetWidths

MODEL_NAMES = ("stmfnet", "stmfnet_mini")

_done = False


def stmfnet(widths: STMFNetWidths | dict | None = None, flow: bool = True,
            freeze_flow: bool = True) -> STMFNet:
    """ST-MFNet (Danier et al., CVPR 2022): 21,028,799 parameters, the PWC-Net (9,374,274) frozen."""
    return STMFNet(STMFNET_WIDTHS if widths is None else widths, flow=flow, freeze_flow=freeze_flow)


def stmfnet_mini(widths: STMFNetWidths | dict | None = None, flow: bool = False) -> STMFNet:
    """ST-MFNet Mini (Morris et al.): 1,822,162 parameters, no flow branch."""
    return STMFNet(STMFNET_MINI_WIDTHS if widths is None else widths, flow=flow)


def _vfi_task_defaults() -> dict[str, Any]:
    """Default loss and batch → inputs mapping of the VFI task (compresskit-vfi): the published ST-MFNet
    loss, the summed 5-level Laplacian pyramid loss (``compresskit_vfi.task.laplacian_loss``)."""
    from compresskit_vfi import task

    return {"default_loss": task.laplacian_loss, "inputs_from_batch": task.inputs_from_batch}


def register() -> None:
    """Register the models and the channel rules of the correlation and splatting custom ops (called once
    by compresskit's plugin discovery)."""
    global _done
    if _done:
        return
    from compresskit_stmfnet import ops

    ops.register_rules()
    ops.register_onnx()

    defaults = _vfi_task_defaults()
    for factory in (stmfnet, stmfnet_mini):
        ck.register_model(factory.__name__, task="vfi", tags=("vfi", "stmfnet"), **defaults)(factory)
    _done = True
