"""layer_densities, density_table and plot_densities on hand-built weights with known zero counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import compresskit as ck
from compresskit.measure.density import density_table, plot_densities


def _model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.PReLU(), nn.Flatten(), nn.Linear(16, 5))
    with torch.no_grad():
        m[0].weight.fill_(0.5)
        m[0].weight[:2] = 0.0  # 2 of 4 output filters zero: 54 of 108 entries
        m[0].weight[3, 0, 0, 0] = 1e-4  # tiny but nonzero
        m[4].weight.fill_(-1.0)
        m[4].weight.view(-1)[:20] = 0.0  # 20 of 80
        m[1].weight.fill_(1.0)
        m[1].weight[0] = 0.0
    return m


def test_counts_nonzeros_per_weight():
    assert ck.layer_densities(_model()) == {"0": 54 / 108, "4": 60 / 80}
    dens = ck.layer_densities(_model(), threshold=1e-3)
    assert dens["0"] == 53 / 108 and dens["4"] == 60 / 80
    with_norms = ck.layer_densities(_model(), include_per_channel=True)
    assert list(with_norms) == ["0", "1", "2", "4"] and with_norms["1"] == 3 / 4 and with_norms["2"] == 1.0


def test_shared_weight_counted_once_and_custom_modules():
    class Scale(nn.Module):  # any module with a weight parameter counts
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.tensor([0.0, 2.0, 0.0, 3.0]))

    lin = nn.Linear(3, 3, bias=False)
    nn.init.zeros_(lin.weight)
    model = nn.ModuleDict({"a": lin, "b": lin, "s": Scale()})
    assert ck.layer_densities(model) == {"a": 0.0, "s": 0.5}


def test_table_and_plot(tmp_path):
    dens = ck.layer_densities(_model())
    table = density_table(dens)
    assert table.row_count == 3  # two layers + the mean
    assert [c.header for c in table.columns][:2] == ["layer", "density"]
    assert list(table.columns[1].cells)[:2] == ["0.500", "0.750"]
    path = plot_densities(dens, tmp_path / "sub" / "density.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100
    assert [p.name for p in path.parent.iterdir()] == ["density.png"]  # no temp file left


def test_errors(tmp_path):
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        ck.layer_densities({"w": torch.ones(2)})
    with pytest.raises(ValueError, match="threshold"):
        ck.layer_densities(_model(), threshold=-1)
    with pytest.raises(ValueError, match=r"densities\['x'\] must be a number in \[0, 1\]"):
        density_table({"x": 1.5})
    with pytest.raises(ValueError, match="empty"):
        plot_densities({}, tmp_path / "x.png")
