"""Video I/O and clean-up: the published cuts/repeats of the sample clips, checked on the decoded frames."""

from __future__ import annotations

import av
import numpy as np
import pytest
from compresskit_vfi.data.samples import SampleDataMissingError, load_clip, sample_clip_path
from compresskit_vfi.data.video import (
    clean_segments,
    detect_repeats,
    detect_scene_cuts,
    read_video,
    video_info,
    write_video,
)

BIKES_CUTS = [29, 75, 136, 186, 241]  # a cut between frame i and i+1
BUNNY_REPEATS = [6, 31, 56, 81, 106]  # frame i+1 repeats frame i


def _skip_without_clips():
    try:
        sample_clip_path("bikes")
    except SampleDataMissingError as e:
        pytest.skip(str(e))


def _gray_diffs(path, max_frames=None):
    """Mean |Δ| of neighbouring frames' luma (subsampled 2×), decoded straight with PyAV."""
    diffs, prev = [], None
    with av.open(str(path)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if max_frames is not None and i >= max_frames:
                break
            y = frame.to_ndarray(format="gray")[::2, ::2].astype(np.float64)
            if prev is not None:
                diffs.append(np.abs(y - prev).mean())
            prev = y
    return np.array(diffs)


def test_bikes_cuts_are_large_jumps_and_detected():
    _skip_without_clips()
    d = _gray_diffs(sample_clip_path("bikes"))
    assert len(d) == 249
    median = np.median(d)
    others = np.delete(d, BIKES_CUTS)
    for i in BIKES_CUTS:  # a cut is a jump far above any motion between neighbouring frames
        assert d[i] > 8 * median, (i, d[i], median)
    assert d[BIKES_CUTS].min() > 2 * others.max()
    assert load_clip("bikes").cuts == BIKES_CUTS
    assert load_clip("bikes").repeats == []


def test_bigbuckbunny_repeats_are_near_zero_and_detected():
    _skip_without_clips()
    d = _gray_diffs(sample_clip_path("bigbuckbunny"), max_frames=112)
    median = np.median(d)
    others = np.delete(d, BUNNY_REPEATS)
    for i in BUNNY_REPEATS:
        assert d[i] < 0.1 * median, (i, d[i], median)
    assert d[BUNNY_REPEATS].max() < 0.5 * others.min()
    clip = load_clip("bigbuckbunny")
    assert clip.repeats == BUNNY_REPEATS and clip.cuts == []
    assert load_clip("carphone").cuts == [] and load_clip("carphone").repeats == []


def test_detectors_on_synthetic_clip():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (1, 24, 32, 3))
    # smooth motion: roll the pattern by one pixel per frame; a cut to an inverted scene after frame 5
    frames = [np.roll(base[0], t, axis=1) for t in range(6)]
    frames += [255 - np.roll(base[0], t, axis=0) // 2 for t in range(6)]
    frames.insert(9, frames[8].copy())  # frame 9 repeats frame 8
    frames = np.stack(frames).astype(np.uint8)
    assert detect_scene_cuts(frames) == [5]
    assert detect_repeats(frames) == [8]
    segs = clean_segments(frames)
    assert segs == [list(range(6)), [6, 7, 8, 10, 11, 12]]
    assert clean_segments(5, cuts=[1], repeats=[3]) == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="cuts and repeats"):
        clean_segments(5)


def test_write_read_roundtrip_lossless(tmp_path):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (5, 18, 22, 3), dtype=np.uint8)
    out = tmp_path / "clip.mkv"
    assert write_video(iter(frames), out, fps=12, codec="ffv1") == 5
    back = read_video(out)
    np.testing.assert_array_equal(back, frames)  # ffv1 is lossless, even in RGB via yuv444
    info = video_info(out)
    assert (info.width, info.height, float(info.fps)) == (22, 18, 12.0)


def test_write_is_atomic_and_validates(tmp_path):
    out = tmp_path / "x.mp4"

    def broken():
        yield np.zeros((16, 16, 3), np.uint8)
        raise RuntimeError("decoder died")

    with pytest.raises(RuntimeError, match="decoder died"):
        write_video(broken(), out)
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temp file is left
    with pytest.raises(ValueError, match="unsupported video suffix"):
        write_video([np.zeros((16, 16, 3), np.uint8)], tmp_path / "x.gif")
    with pytest.raises(ValueError, match="no frames"):
        write_video([], out)
    with pytest.raises(ValueError, match="size"):
        write_video([np.zeros((16, 16, 3), np.uint8), np.zeros((8, 16, 3), np.uint8)], out)
    assert list(tmp_path.iterdir()) == []


def test_unreadable_video_errors(tmp_path):
    bad = tmp_path / "notavideo.mp4"
    bad.write_bytes(b"hello")
    with pytest.raises(ValueError, match="could not be opened"):
        video_info(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_video(tmp_path / "missing.mp4")
