"""AdaCoF-family models: AdaCoF / AdaCoF+ (any widths) and CDFI."""

from .adacof import AdaCoF, KernelEstimation, compressed_widths, dense_widths, widths_from_state_dict
from .cdfi import CDFI, CDFIKernelEstimation, GridNet, cdfi_widths

__all__ = ["AdaCoF", "KernelEstimation", "compressed_widths", "dense_widths", "widths_from_state_dict",
           "CDFI", "CDFIKernelEstimation", "GridNet", "cdfi_widths"]
