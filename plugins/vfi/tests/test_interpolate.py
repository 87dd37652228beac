"""Video interpolation: tiling equals untiled inference, recursion order, neighbours, atomic output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from compresskit_vfi.data.video import read_video, video_info, write_video
from compresskit_vfi.interpolate import (
    interpolate_frames,
    interpolate_video,
    make_predictor,
    model_num_inputs,
    tiled_forward,
)
from torch import nn


class Average(nn.Module):
    def forward(self, frame0, frame1):
        return (frame0 + frame1) / 2


class SmallConvNet(nn.Module):
    """Three zero-padded 3×3 convs: receptive field radius 3."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                 nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, a, b):
        return self.net(torch.cat([a, b], 1))


class FourFrames(nn.Module):
    """Records its inputs' identities (frame values) and returns I1."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, i0, i1, i2, i3):
        self.calls.append(tuple(round(float(t.flatten()[0]) * 255) for t in (i0, i1, i2, i3)))
        return (i1 + i2) / 2


def test_model_num_inputs():
    assert model_num_inputs(Average()) == 2 and model_num_inputs(FourFrames()) == 4

    class Three(nn.Module):
        def forward(self, a, b, c):
            return a

    with pytest.raises(ValueError, match="takes 3 required inputs"):
        model_num_inputs(Three())


@pytest.mark.parametrize("tile", [(16, 16), (13, 29), 7])
def test_tiled_equals_untiled(tile):
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 3, 37, 45, generator=g), torch.rand(2, 3, 37, 45, generator=g)
    for model, overlap in ((Average(), 0), (SmallConvNet(), 3), (SmallConvNet(), 5)):
        with torch.no_grad():
            full = model(a, b)
            tiled = tiled_forward(model, [a, b], tile=tile, overlap=overlap)
        torch.testing.assert_close(tiled, full, rtol=0, atol=1e-6)
    # too little context for the conv net: the seams differ (the test can fail)
    with torch.no_grad():
        short = tiled_forward(SmallConvNet(), [a, b], tile=16, overlap=1)
    assert (short - SmallConvNet()(a, b)).abs().max() > 1e-4


class MemoryLimited(SmallConvNet):
    """Raises torch.OutOfMemoryError for inputs of more than ``limit`` pixels, like a full GPU."""

    def __init__(self, limit):
        super().__init__()
        self.limit, self.sizes = limit, []

    def forward(self, a, b):
        if a.shape[-2] * a.shape[-1] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.sizes.append(tuple(a.shape[-2:]))
        return super().forward(a, b)


def test_auto_tiling_falls_back_on_out_of_memory():
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(1, 3, 200, 300, generator=g), torch.rand(1, 3, 200, 300, generator=g)
    with torch.no_grad():
        full = SmallConvNet()(a, b)
        m = MemoryLimited(limit=120 * 120)
        tiler = make_predictor(m, "auto", overlap=4)
        out = tiler([a, b])
        torch.testing.assert_close(out, full, rtol=0, atol=1e-6)
        assert tiler.tile == 75  # 300 -> 150 (158x158 crops > limit) -> 75 (83x83 crops fit)
        assert max(h * w for h, w in m.sizes) <= 120 * 120
        n_calls = len(m.sizes)
        tiler([a, b])  # the tile size found is kept: no failed attempts on the next frame
        assert len(m.sizes) == 2 * n_calls
        with pytest.raises(RuntimeError, match="out of memory even with"):
            make_predictor(MemoryLimited(limit=10), "auto", overlap=4)([a, b])
    with pytest.raises(ValueError, match="tile must be"):
        make_predictor(m, "big")


def _frames(values, h=4, w=6):
    return [torch.full((1, 3, h, w), v / 255) for v in values]


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_recursive_factor_is_linear_for_the_average_model(factor):
    # averaging is exact linear interpolation, so ×k of values 0, 64, 128 gives every 64/k step
    out = list(interpolate_frames(Average(), _frames([0, 64, 128]), factor))
    assert len(out) == 2 * factor + 1
    expected = np.linspace(0, 128, 2 * factor + 1)
    got = [float(t.flatten()[0]) * 255 for t in out]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_four_input_models_get_clamped_neighbours():
    m = FourFrames()
    out = list(interpolate_frames(m, _frames([10, 20, 30, 40]), 2))
    assert [round(float(t.flatten()[0]) * 255) for t in out] == [10, 15, 20, 25, 30, 35, 40]
    assert m.calls == [(10, 10, 20, 30), (10, 20, 30, 40), (20, 30, 40, 40)]
    m.calls.clear()
    list(interpolate_frames(m, _frames([0, 40, 80]), 4))
    # level 1 runs on 0, 40, 80; level 2 (streamed, interleaved) on 0, 20, 40, 60, 80, same clamping
    level1 = [(0, 0, 40, 80), (0, 40, 80, 80)]
    assert [c for c in m.calls if c in level1] == level1
    assert [c for c in m.calls if c not in level1] == [(0, 0, 20, 40), (0, 20, 40, 60), (20, 40, 60, 80),
                                                       (40, 60, 80, 80)]


def test_bad_factor():
    with pytest.raises(ValueError, match="factor must be one of"):
        interpolate_frames(Average(), _frames([0, 1]), 3)


def _video(path, n=5, h=16, w=24):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    write_video(frames, path, fps=10, codec="ffv1")
    return frames


def test_interpolate_video_end_to_end(tmp_path):
    src = tmp_path / "in.mkv"
    frames = _video(src)
    out = tmp_path / "out.mkv"
    summary = interpolate_video(src, out, Average(), factor=4, tile=8, overlap=0, codec="ffv1",
                                progress=False)
    assert summary["frames_in"] == 5 and summary["frames_out"] == 17
    got = read_video(out)
    assert got.shape == (17, 16, 24, 3) and float(video_info(out).fps) == 40.0
    np.testing.assert_array_equal(got[::4], frames)  # originals pass through, losslessly
    # frame 2 of 4 between 0 and 1 is the mean; frame 1 the mean of frame 0 and that mean (quantised)
    f0, f1 = frames[0].astype(np.float64), frames[1].astype(np.float64)
    np.testing.assert_allclose(got[2], (f0 + f1) / 2, atol=0.51)
    np.testing.assert_allclose(got[1], (f0 + (f0 + f1) / 2) / 2, atol=0.51)


def test_interpolate_video_failure_leaves_no_output(tmp_path):
    src = tmp_path / "in.mkv"
    _video(src)

    class Breaks(nn.Module):
        def __init__(self):
            super().__init__()
            self.n = 0

        def forward(self, a, b):
            self.n += 1
            if self.n == 3:
                raise RuntimeError("model failed")
            return a

    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="model failed"):
        interpolate_video(src, out, Breaks(), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mkv"]
    with pytest.raises(ValueError, match="factor"):
        interpolate_video(src, out, Average(), factor=16, progress=False)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="could not be opened"):
        interpolate_video(bad, out, Average(), progress=False)
    assert not out.exists()


def test_interpolate_frame_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    frames = rng.integers(0, 128, (3, 10, 14, 3), dtype=np.uint8) * 2  # even: exact means
    (tmp_path / "f").mkdir()
    for t, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / "f" / f"frame{t + 8}.png")  # natural order: 8, 9, 10
    out = tmp_path / "o.mkv"
    s = interpolate_video(tmp_path / "f", out, Average(), factor=2, fps=12, codec="ffv1", progress=False)
    assert s["frames_out"] == 5 and s["fps_out"] == 24.0
    got = read_video(out)
    np.testing.assert_array_equal(got[::2], frames)
    np.testing.assert_array_equal(got[1], ((frames[0].astype(int) + frames[1]) // 2).astype(np.uint8))
    with pytest.raises(ValueError, match="no image files"):
        interpolate_video(tmp_path, tmp_path / "x.mkv", Average(), progress=False)
