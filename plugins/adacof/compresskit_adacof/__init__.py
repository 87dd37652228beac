"""compresskit-adacof: AdaCoF, AdaCoF+, compressed AdaCoF and CDFI for compresskit, with the CDFI recipe.

Models are registered by name (``ck.create_model("cdfi", checkpoint=...)``) when compresskit discovers the
plugin; they can also be built directly from :mod:`compresskit_adacof.models`.
"""

from .models import (
           CDFI,
           AdaCoF,
           GridNet,
           cdfi_widths,
           compressed_widths,
           dense_widths,
           widths_from_state_dict,
)

__all__ = ["AdaCoF", "CDFI", "GridNet", "cdfi_widths", "compressed_widths", "dense_widths",
           "widths_from_state_dict"]
