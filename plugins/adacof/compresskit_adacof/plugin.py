"""Entry point of compresskit-adacof: registers the AdaCoF-family models and losses with compresskit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import compresskit as ck

from .models import CDFI, AdaCoF, compressed_widths

MODEL_NAMES = ("adacof", "adacof_plus", "compressed_adacof", "compressed_adacof_plus", "cdfi")

_done = False


def adacof(widths: Mapping[str, Sequence[int]] | None = None) -> AdaCoF:
    """AdaCoF, F=5, d=1 (Lee et al., CVPR 2020): 21,843,427 parameters."""
    return AdaCoF(5, 1, widths)


def adacof_plus(widths: Mapping[str, Sequence[int]] | None = None) -> AdaCoF:
    """AdaCoF+, F=11, d=2: 22,933,219 parameters."""
    return AdaCoF(11, 2, widths)


def compressed_adacof() -> AdaCoF:
    """Compressed AdaCoF, F=5, d=1 (CDFI stage I): 2,452,094 parameters."""
    return AdaCoF(5, 1, compressed_widths())


def compressed_adacof_plus() -> AdaCoF:
    """Compressed AdaCoF+, F=11, d=2 (CDFI's backbone): 2,557,214 parameters."""
    return AdaCoF(11, 2, compressed_widths())


def cdfi(separate_warps: bool = False) -> CDFI:
    """CDFI, F=11, d=2 (Ding et al., CVPR 2021): 4,976,718 parameters."""
    return CDFI(separate_warps=separate_warps)


def register() -> None:
    """Register the models and losses (called once by compresskit's plugin discovery)."""
    global _done
    if _done:
        return
    from compresskit_vfi.task import default_loss, inputs_from_batch

    for factory in (adacof, adacof_plus, compressed_adacof, compressed_adacof_plus, cdfi):
        ck.register_model(factory.__name__, task="vfi", default_loss=default_loss,
                          inputs_from_batch=inputs_from_batch, tags=("vfi", "adacof"))(factory)
    from . import losses

    losses.register()
    _done = True
