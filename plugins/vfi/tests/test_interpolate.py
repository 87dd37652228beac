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
    out = list(interpolate_frames(Average(), _frames([0, 64, 128]), factor, cut_threshold=None))
    assert len(out) == 2 * factor + 1
    expected = np.linspace(0, 128, 2 * factor + 1)
    got = [float(t.flatten()[0]) * 255 for t in out]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_four_input_models_get_clamped_neighbours():  # ends="predict": the clip's ends are predicted too
    m = FourFrames()
    out = list(interpolate_frames(m, _frames([10, 20, 30, 40]), 2, cut_threshold=None, ends="predict"))
    assert [round(float(t.flatten()[0]) * 255) for t in out] == [10, 15, 20, 25, 30, 35, 40]
    assert m.calls == [(10, 10, 20, 30), (10, 20, 30, 40), (20, 30, 40, 40)]
    m.calls.clear()
    list(interpolate_frames(m, _frames([0, 40, 80]), 4, cut_threshold=None, ends="predict"))
    # level 1 runs on 0, 40, 80; level 2 (streamed, interleaved) on 0, 20, 40, 60, 80, same clamping
    level1 = [(0, 0, 40, 80), (0, 40, 80, 80)]
    assert [c for c in m.calls if c in level1] == level1
    assert [c for c in m.calls if c not in level1] == [(0, 0, 20, 40), (0, 20, 40, 60), (20, 40, 60, 80),
                                                       (40, 60, 80, 80)]


def test_four_input_models_copy_the_clip_ends_as_the_published_script():
    # published interpolate_yuv.py writes f0, f0, f1, mid(f0..f3), f2, ..., f_{N-2}, f_{N-1}, f_{N-1}:
    # the first inserted frame is a copy of the first frame, the last one a copy of the last frame
    m = FourFrames()
    out = list(interpolate_frames(m, _frames([10, 20, 30, 40, 50]), 2, cut_threshold=None))
    assert [round(float(t.flatten()[0]) * 255) for t in out] == [10, 10, 20, 25, 30, 35, 40, 50, 50]
    assert m.calls == [(10, 20, 30, 40), (20, 30, 40, 50)]  # only pairs with both true neighbours
    m.calls.clear()
    out = list(interpolate_frames(m, _frames([0, 40, 80, 120]), 4, cut_threshold=None))
    got = [round(float(t.flatten()[0]) * 255) for t in out]
    # level 1: 0, [0], 40, 60, 80, [120], 120; level 2 copies at its own ends and repeats copies
    assert got[:3] == [0, 0, 0] and got[-3:] == [120, 120, 120] and len(got) == 13
    assert all(c[0] != c[1] or c[1] != c[2] for c in m.calls)  # never a pair beside a duplicated end
    # a two-input model has every neighbour it needs: it still predicts the ends
    out = list(interpolate_frames(Average(), _frames([10, 20, 30]), 2, cut_threshold=None))
    assert [round(float(t.flatten()[0]) * 255) for t in out] == [10, 15, 20, 25, 30]
    with pytest.raises(ValueError, match="ends must be one of"):
        interpolate_frames(m, _frames([0, 1]), 2, ends="mirror")


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
                                progress=False, cut_threshold=None)  # random frames: all would be cuts
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

    calls = []  # shared by the copy the layout choice makes (a deep copy keeps the closure's list)

    class Breaks(nn.Module):
        def forward(self, a, b):
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("model failed")
            return a

    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="model failed"):
        interpolate_video(src, out, Breaks(), progress=False, cut_threshold=None)
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
    s = interpolate_video(tmp_path / "f", out, Average(), factor=2, fps=12, codec="ffv1", progress=False,
                          cut_threshold=None)
    assert s["frames_out"] == 5 and s["fps_out"] == 24.0
    got = read_video(out)
    np.testing.assert_array_equal(got[::2], frames)
    np.testing.assert_array_equal(got[1], ((frames[0].astype(int) + frames[1]) // 2).astype(np.uint8))
    with pytest.raises(ValueError, match="no image files"):
        interpolate_video(tmp_path, tmp_path / "x.mkv", Average(), progress=False)


# --------------------------------------------------------------------------------------------- scene cuts

BIKES_CUTS = [29, 75, 136, 186, 241]  # verified in test_data_video: a cut between frame i and i+1


def test_scene_cuts_of_the_bikes_clip_are_repeated_not_blended():
    from compresskit_vfi.data.samples import SampleDataMissingError, sample_clip_path
    from compresskit_vfi.data.transforms import to_tensor, to_uint8
    from compresskit_vfi.data.video import iter_video_frames

    try:
        path = sample_clip_path("bikes")
    except SampleDataMissingError as e:
        pytest.skip(str(e))
    frames = list(iter_video_frames(path))
    assert len(frames) == 250
    cuts: list[int] = []
    out = interpolate_frames(Average(), (to_tensor(f).unsqueeze(0) for f in frames), 2, cuts=cuts)
    n = 0
    for k, t in enumerate(out):
        got = to_uint8(t[0])
        i = k // 2
        if k % 2 == 0 or i in BIKES_CUTS:  # an original, or across a cut: the frame before it, repeated
            np.testing.assert_array_equal(got, frames[i])
        else:  # within a shot: the model's frame (the mean of the two neighbours)
            mean = (frames[i].astype(np.float64) + frames[i + 1]) / 2
            assert np.abs(got - mean).max() <= 0.5 + 1e-9, k
        n += 1
    assert n == 2 * 250 - 1
    assert cuts == BIKES_CUTS


class Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, i0, i1, i2, i3):
        self.calls.append(tuple(int(t[0, 0, 0, 0] * 255 + 0.5) for t in (i0, i1, i2, i3)))
        return (i1 + i2) / 2


def _two_shots():
    """Shot A: levels 40, 42, 44, 46 (histogram bin 32-63); shot B: 200, 202, 204 (bin 192-223)."""
    return [torch.full((1, 3, 8, 12), v / 255) for v in (40, 42, 44, 46, 200, 202, 204)]


def test_cut_at_factor_4_repeats_and_four_input_models_see_no_other_shot():
    frames = _two_shots()  # cut between frame 3 and 4
    m = Counting()
    cuts: list[int] = []
    out = list(interpolate_frames(m, frames, 4, cuts=cuts, ends="predict"))
    assert cuts == [3] and len(out) == 6 * 4 + 1
    for k in (13, 14, 15):  # the three frames inserted between frame 3 and 4 all repeat frame 3
        assert torch.equal(out[k], frames[3])
    assert torch.equal(out[16], frames[4])
    torch.testing.assert_close(out[2], (frames[0] + frames[1]) / 2)  # inside a shot: the model's frame
    for call in m.calls:  # no call mixes the two shots
        assert len({v < 100 for v in call}) == 1, call
    # level 1: pairs inside shot A (0-1, 1-2, 2-3) and B (4-5, 5-6), neighbours replicated at the cut
    originals = {40, 42, 44, 46, 200, 202, 204}
    level1 = [c for c in m.calls if set(c) <= originals]
    assert level1 == [(40, 40, 42, 44), (40, 42, 44, 46), (42, 44, 46, 46), (200, 200, 202, 204),
                      (200, 202, 204, 204)]
    assert len(m.calls) == 5 + 10  # level 2: twice as many pairs inside the shots; none at the repeats


def test_no_cut_detection_blends_across():
    frames = _two_shots()
    out = list(interpolate_frames(Average(), frames, 2, cut_threshold=None))
    torch.testing.assert_close(out[7], (frames[3] + frames[4]) / 2)
    with pytest.raises(ValueError, match="cut_threshold"):
        interpolate_frames(Average(), frames, 2, cut_threshold=1.5)


# ----------------------------------------------------------------------------------- audio, size, progress

def _clip_with_audio(path, codec, audio_codec, rate=16000, n=6, fps=10, size=(16, 24)):
    """A video with a 440 Hz sine audio stream, made with PyAV."""
    import av

    h, w = size
    t = np.arange(int(rate * n / fps)) / rate
    sine = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    rng = np.random.default_rng(5)
    with av.open(str(path), "w") as out:
        v = out.add_stream(codec, rate=fps)
        v.width, v.height = w, h
        v.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
        a = out.add_stream(audio_codec, rate=rate, layout="mono")
        fmt = "s16" if audio_codec == "pcm_s16le" else "fltp"
        samples = (sine * 32767).astype(np.int16) if fmt == "s16" else sine
        step = a.codec_context.frame_size or 1024
        for i in range(n):
            img = np.full((h, w, 3), 100 + 2 * i, np.uint8) + rng.integers(0, 3, (h, w, 3), dtype=np.uint8)
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for k in range(0, len(samples), step):
            chunk = samples[k:k + step]
            if len(chunk) < step and audio_codec != "pcm_s16le":
                chunk = np.pad(chunk, (0, step - len(chunk)))
            frame = av.AudioFrame.from_ndarray(chunk[None], format=fmt, layout="mono")
            frame.sample_rate, frame.pts = rate, k
            for p in a.encode(frame):
                out.mux(p)
        for s in (a, v):
            for p in s.encode():
                out.mux(p)


def _audio_packets(path):
    import av

    with av.open(str(path)) as c:
        if not c.streams.audio:
            return []
        return [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]


@pytest.mark.parametrize("suffix,codec,audio_codec",
                         [(".mkv", "ffv1", "pcm_s16le"), (".mp4", "libx264", "aac")])
def test_audio_stream_is_kept(tmp_path, suffix, codec, audio_codec):
    import av

    src = tmp_path / f"in{suffix}"
    _clip_with_audio(src, codec, audio_codec)
    packets = _audio_packets(src)
    assert len(packets) > 3
    out = tmp_path / f"out{suffix}"
    s = interpolate_video(src, out, Average(), factor=2, codec=codec, progress=False)
    assert s["audio"] is True and s["frames_out"] == 11
    assert _audio_packets(out) == packets  # remuxed: the very same coded audio
    with av.open(str(out)) as c:
        assert c.streams[0].type == "video" and c.streams.audio[0].codec_context.name == audio_codec
        assert c.streams.audio[0].codec_context.sample_rate == 16000
    silent = tmp_path / f"silent{suffix}"
    s = interpolate_video(src, silent, Average(), codec=codec, progress=False, audio=False)
    assert s["audio"] is False
    assert _audio_packets(silent) == []


def test_odd_frame_size_is_padded_and_stays_yuv420p(tmp_path):
    import av

    y, x = np.mgrid[0:13, 0:17]
    frames = np.stack([np.stack([8 * y + 4 * x + t, 200 - 6 * y, 60 + 5 * x], -1) for t in range(3)])
    frames = frames.astype(np.uint8)
    out = tmp_path / "odd.mp4"
    write_video(frames, out, fps=10, crf=0)
    with av.open(str(out)) as c:
        cc = c.streams.video[0].codec_context
        assert (cc.pix_fmt, cc.width, cc.height) == ("yuv420p", 18, 14)
    got = read_video(out).astype(int)
    assert got.shape == (3, 14, 18, 3)
    # cropped back with [:13, :17] it is the frame (up to 4:2:0 chroma); the padding repeats the edge
    assert np.abs(got[:, :13, :17] - frames).mean() < 3
    assert np.abs(got[:, 13] - got[:, 12]).mean() < 3 and np.abs(got[:, :, 17] - got[:, :, 16]).mean() < 3


def test_progress_bar_shows_frames_per_second(tmp_path):
    import io

    from rich.console import Console

    src = tmp_path / "in.mkv"
    _video(src, n=4)
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=160)
    s = interpolate_video(src, tmp_path / "o.mkv", Average(), codec="ffv1", cut_threshold=None,
                          console=console)
    text = buf.getvalue()
    assert "interpolate ×2" in text and "frames/s" in text and "7/7" in text
    assert s["frames_per_second"] > 0
