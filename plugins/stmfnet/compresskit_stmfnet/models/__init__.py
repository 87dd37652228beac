"""ST-MFNet family: the full model, the Mini, and their parts."""

from compresskit_stmfnet.models.pwcnet import PWCNet
from compresskit_stmfnet.models.stmfnet import (
    STMFNET_MINI_WIDTHS,
    STMFNET_WIDTHS,
    STMFNet,
    STMFNetWidths,
)

__all__ = ["STMFNet", "STMFNetWidths", "STMFNET_WIDTHS", "STMFNET_MINI_WIDTHS", "PWCNet"]
