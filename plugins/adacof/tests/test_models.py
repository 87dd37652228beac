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
import compresskit.models

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
    with pytest.raises(compresskit.models.CheckpointMismatchError, match="module1by1_3.bias"):
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


def _bilinear_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """(n_out, n_in) matrix of 1-D bilinear resizing with align_corners=False, by its definition:
    source coordinate s = (i + ½)·n_in/n_out − ½, clamped at 0; taps floor(s) and floor(s)+1 (clamped)."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        s = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(s), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        frac = s - i0
        m[i, i0] += 1 - frac
        m[i, i1] += frac
    return m


@pytest.mark.parametrize("separate", [False, True])
def test_cdfi_warps_each_pyramid_level_stretched_to_the_kernel_padded_size(separate):
    """Published geometry (cdfi_adacof.py): each 1×1-conv feature P (padding=1, so (h+2)×(w+2)) is resized
    bilinearly to (H+2p)×(W+2p), p = (F−1)·d/2 = 10, and warped with no further padding. With a single tap
    at the kernel centre and integer offsets (α, β), the warped feature at output pixel (i, j) is the
    stretched map at (i+p+α, j+p+β), clamped to it. Ramps make every position tell."""
    torch.manual_seed(0)
    model = CDFI(separate_warps=separate).double().eval()
    H, W, p, f2 = 64, 96, 10, 121
    shifts = {1: (2, -3), 2: (-1, 4)}  # (α, β) of kernel set 1 and 2
    pyramid = []
    for k, c in enumerate((4, 8, 12, 16, 20), start=1):
        h, w = H // 2 ** (k - 1) + 2, W // 2 ** (k - 1) + 2
        ys = torch.arange(h, dtype=torch.float64).view(1, 1, h, 1)
        xs = torch.arange(w, dtype=torch.float64).view(1, 1, 1, w)
        ch = torch.arange(c, dtype=torch.float64).view(1, c, 1, 1)
        pyramid.append((ch + 1) * (3.0 * ys + 0.5 * xs) + 0.01 * ys * xs)

    def kernels(module, inputs, output):
        (w1, a1, b1, w2, a2, b2, occ, blend), _ = output
        one = torch.zeros_like(w1)
        one[:, f2 // 2] = 1.0
        sets = [(one, torch.full_like(a1, float(shifts[s][0])), torch.full_like(b1, float(shifts[s][1])))
                for s in (1, 2)]
        return [*sets[0], *sets[1], occ, blend], pyramid

    seen = {}
    model.get_kernel.register_forward_hook(kernels)
    model.context_synthesis.register_forward_pre_hook(lambda m, args: seen.setdefault("grid_in", args[0]))
    frame0, frame1 = torch.rand(2, 1, 3, H, W, dtype=torch.float64).unbind(0)
    with torch.no_grad():
        model(frame0, frame1)
    grid_in = seen["grid_in"]
    assert grid_in.shape == (1, 126, H, W)

    def shifted(t, s):  # t at (i+p+α, j+p+β), indices clamped to t
        rows = (torch.arange(H) + p + shifts[s][0]).clamp(0, t.shape[-2] - 1)
        cols = (torch.arange(W) + p + shifts[s][1]).clamp(0, t.shape[-1] - 1)
        return t[..., rows[:, None], cols[None, :]]

    padded = [torch.nn.functional.pad(f, [p] * 4, mode="replicate") for f in (frame0, frame1)]
    expected = [shifted(padded[0], 1), shifted(padded[1], 2)]
    for P in pyramid:
        stretched = _bilinear_matrix(H + 2 * p, P.shape[-2]) @ P @ _bilinear_matrix(W + 2 * p, P.shape[-1]).T
        expected += [shifted(stretched, 1), shifted(stretched, 2)]
    torch.testing.assert_close(grid_in, torch.cat(expected, 1), rtol=1e-12, atol=1e-9)
