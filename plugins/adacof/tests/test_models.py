"""AdaCoF-family models: layouts of the published checkpoints, strict loading, forward conventions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from compresskit_adacof.models import (
    CDFI,
    AdaCoF,
    GridNet,
    cdfi_widths,
    compressed_widths,
    widths_from_state_dict,
)
from compresskit_adacof.models.adacof import HEADS, check_widths
from compresskit_vfi.task import default_loss

import compresskit as ck
import compresskit.registry

DATA = Path(__file__).resolve().parent / "data"
# in a checkout /work/main, the shared reference lies beside it: /work/shared/reference
SHARED = Path(__file__).resolve().parents[4] / "shared" / "reference" / "checkpoint_layouts"

# registered name -> (layout file, published parameter count from the papers' releases)
MODELS = {
    "adacof": ("adacof_f5_d1.json", 21_843_427),
    "adacof_plus": ("adacof_f11_d2.json", 22_933_219),
    "compressed_adacof": ("compressed_adacof_f5_d1.json", 2_452_094),
    "compressed_adacof_plus": ("compressed_adacof_f11_d2.json", 2_557_214),
    "cdfi": ("cdfi.json", 4_976_718),
}


def _layout(filename: str) -> dict:
    return json.loads((DATA / filename).read_text())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_registered_model_matches_published_layout(name):
    filename, published = MODELS[name]
    model = ck.create_model(name)
    info = ck.model_info(name)
    assert info.task == "vfi" and info.default_loss is default_loss and info.inputs_from_batch is not None
    layout = _layout(filename)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert set(ours) == set(layout["state_dict"]), (
        f"missing {sorted(set(layout['state_dict']) - set(ours))[:5]}, "
        f"extra {sorted(set(ours) - set(layout['state_dict']))[:5]}")
    assert ours == layout["state_dict"]
    assert len(ours) == layout["n_state_dict_keys"]
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == layout["total_params"] == published
    for module, count in layout["params_by_top_module"].items():
        assert sum(p.numel() for p in model.get_submodule(module).parameters()) == count, module


@pytest.mark.parametrize("filename", sorted(f for f, _ in MODELS.values()))
def test_layout_copies_equal_shared_reference(filename):
    if not (SHARED / filename).is_file():
        pytest.skip(f"shared reference folder {SHARED} is absent (tests use the copies in tests/data)")
    assert json.loads((SHARED / filename).read_text()) == _layout(filename)


def test_checkpoint_in_published_layout_loads_strictly(tmp_path):
    layout = _layout("cdfi.json")["state_dict"]
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=gen) for k, shape in layout.items()}
    torch.save({"state_dict": state, "epoch": 100}, tmp_path / "cdfi.pth")  # the official file format
    model = ck.create_model("cdfi", checkpoint=tmp_path / "cdfi.pth")
    assert torch.equal(model.get_kernel.moduleBlend[7].bias, state["get_kernel.moduleBlend.7.bias"])
    up = "context_synthesis.up_1_2.f.4.weight"
    assert torch.equal(model.get_parameter(up), state[up])
    del state["get_kernel.module1by1_3.bias"]
    with pytest.raises(ck.registry.CheckpointMismatchError, match="module1by1_3.bias"):
        ck.create_model("cdfi", checkpoint=state)
    small = _layout("compressed_adacof_f11_d2.json")["state_dict"]
    model = AdaCoF(11, 2, widths_from_state_dict({k: torch.empty(v) for k, v in small.items()}))
    model.load_state_dict({k: torch.zeros(v) for k, v in small.items()}, strict=True)


def test_widths_read_from_a_checkpoint_layout_are_the_published_widths():
    shapes = {k: torch.empty(0).new_empty(v) for k, v in _layout("compressed_adacof_f5_d1.json")
              ["state_dict"].items() if k.endswith("weight")}
    assert widths_from_state_dict(shapes) == compressed_widths()
    cdfi_shapes = {k: torch.empty(v) for k, v in _layout("cdfi.json")["state_dict"].items()}
    assert widths_from_state_dict(cdfi_shapes, extra=("Blend",)) == cdfi_widths()


def test_bad_widths_are_named():
    w = compressed_widths()
    w["Upsample3"] = (93,)
    with pytest.raises(ValueError, match="Upsample3"):
        check_widths(w)
    w = compressed_widths()
    del w["Beta1"]
    with pytest.raises(ValueError, match="Beta1"):
        AdaCoF(5, 1, w)
    with pytest.raises(ValueError, match="dilation"):
        AdaCoF(5, 0)
    with pytest.raises(ValueError, match="frame1"):
        AdaCoF(5, 1, compressed_widths())(torch.rand(1, 3, 40, 40), torch.rand(1, 4, 40, 40))


def test_gridnet_maps_126_channels_to_3_at_any_multiple_of_4():
    net = GridNet(126, 3, (8, 16, 24))
    assert net(torch.rand(2, 126, 12, 20)).shape == (2, 3, 12, 20)


def _set_identity_kernels(model: AdaCoF, alpha: float = 0.0, occlusion: float = 1e4, blend: float = -1e4):
    """Zero the last conv of every head; biases: one-hot weights on the centre tap, constant vertical
    offset ``alpha``, zero horizontal offsets, occlusion logit and (CDFI) blend logit."""
    center = model.kernel_size ** 2 // 2
    kernel = model.get_kernel
    names = list(HEADS) + (["Blend"] if hasattr(kernel, "moduleBlend") else [])
    with torch.no_grad():
        for name in names:
            conv = getattr(kernel, f"module{name}")[7]
            conv.weight.zero_()
            conv.bias.zero_()
            if name.startswith("Weight"):
                conv.bias.fill_(-1e4)
                conv.bias[center] = 0.0
            elif name.startswith("Alpha"):
                conv.bias.fill_(alpha)
            elif name == "Occlusion":
                conv.bias.fill_(occlusion)
            elif name == "Blend":
                conv.bias.fill_(blend)


@pytest.mark.parametrize("name", ["compressed_adacof", "compressed_adacof_plus", "cdfi"])
def test_centre_tap_kernels_reproduce_the_input_frame_at_an_odd_size(name):
    torch.manual_seed(0)
    model = ck.create_model(name).eval()
    _set_identity_kernels(model, occlusion=1e4)
    frame0, frame1 = torch.rand(2, 2, 3, 37, 45).unbind(0)
    with torch.no_grad():
        out = model(frame0, frame1)
        assert out.shape == frame0.shape
        torch.testing.assert_close(out, frame0, rtol=0, atol=1e-6)
        _set_identity_kernels(model, occlusion=-1e4)
        torch.testing.assert_close(model(frame0, frame1), frame1, rtol=0, atol=1e-6)


def test_half_pixel_offsets_interpolate_with_the_reflect_padded_frame():
    """α = 0.5 everywhere: out[i] = (I0[i] + I0[i+1]) / 2, where row H is the reflect padding (= row H−2)."""
    torch.manual_seed(0)
    model = AdaCoF(5, 1, compressed_widths()).eval()
    _set_identity_kernels(model, alpha=0.5)
    frame0, frame1 = torch.rand(2, 1, 3, 37, 45).unbind(0)
    below = torch.cat([frame0[:, :, 1:], frame0[:, :, -2:-1]], dim=2)
    with torch.no_grad():
        torch.testing.assert_close(model(frame0, frame1), (frame0 + below) / 2, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["adacof", "adacof_plus"])
def test_dense_adacof_forward_and_aux_kernels(name):
    torch.manual_seed(0)
    model = ck.create_model(name).eval()
    f2 = model.kernel_size**2
    frame0, frame1 = torch.rand(2, 1, 3, 33, 47).unbind(0)
    with torch.no_grad():
        out, aux = model(frame0, frame1, return_aux=True)
    assert out.shape == (1, 3, 33, 47)
    assert aux["weight1"].shape == aux["alpha2"].shape == (1, f2, 64, 64)
    torch.testing.assert_close(aux["weight2"].sum(1), torch.ones(1, 64, 64))
    assert ((aux["occlusion"] > 0) & (aux["occlusion"] < 1)).all()


def test_cdfi_single_joint_warp_equals_the_published_twelve_warps():
    torch.manual_seed(0)
    joint, separate = CDFI().eval(), CDFI(separate_warps=True).eval()
    separate.load_state_dict(joint.state_dict())
    with torch.no_grad():  # random (untrained) kernels with non-trivial offsets
        for name in ("Alpha1", "Beta1", "Alpha2", "Beta2"):
            getattr(joint.get_kernel, f"module{name}")[7].bias.normal_(0, 2)
        separate.load_state_dict(joint.state_dict())
        frame0, frame1 = torch.rand(2, 1, 3, 35, 41).unbind(0)
        torch.testing.assert_close(joint(frame0, frame1), separate(frame0, frame1), rtol=1e-5, atol=1e-6)


def test_cdfi_pyramid_uses_padded_1x1_convs():
    model = CDFI()
    _, pyramid = model.get_kernel(torch.rand(1, 6, 64, 96))
    sizes = [tuple(p.shape[1:]) for p in pyramid]
    assert sizes == [(4, 66, 98), (8, 34, 50), (12, 18, 26), (16, 10, 14), (20, 6, 8)]
