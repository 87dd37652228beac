"""Entry point of compresskit-vfi (``compresskit.plugins`` group, name ``vfi``).

``register()`` is called once by compresskit's plugin discovery. It registers the channel rule of the
``compresskit_vfi::adacof`` op (and makes its Python wrapper a tracing leaf). The VFI task helpers
(``compresskit_vfi.task``: default loss, batch → inputs) are used by the model plugins when they register
their models; the datasets are built with ``compresskit_vfi.data.create_dataset``.
"""

from __future__ import annotations

_done = False


def register() -> None:
    """Register the VFI plugin's ops and rules with compresskit (idempotent)."""
    global _done
    if _done:
        return
    from compresskit_vfi import ops

    ops.register_rules()
    ops.register_onnx()
    _done = True
