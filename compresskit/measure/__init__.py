"""The ground floor: what a model costs and what its weights hold, measured on the model itself.

- :mod:`~compresskit.measure.counts`: parameters (``count_params``);
- :mod:`~compresskit.measure.macs`: multiply-accumulates of one forward pass (``count_macs``);
- :mod:`~compresskit.measure.clock`: the one latency clock (``Clock``, ``time_ms``, ``measure_latency``);
- :mod:`~compresskit.measure.density`: per-layer weight densities (``layer_densities``);
- :mod:`~compresskit.measure.mass`: per-unit masses of a channel group (``unit_l1_mass``).

Nothing here imports a higher part of compresskit (planning, surgery, sparsification, training, the
report): they all measure through these functions.
"""

from compresskit.measure.clock import Clock, measure_latency, time_ms
from compresskit.measure.counts import count_params
from compresskit.measure.density import layer_densities
from compresskit.measure.macs import count_macs
from compresskit.measure.mass import unit_l1_mass

__all__ = ["Clock", "count_macs", "count_params", "layer_densities", "measure_latency", "time_ms",
           "unit_l1_mass"]
