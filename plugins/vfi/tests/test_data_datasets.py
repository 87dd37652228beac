"""The papers' dataset layouts, built in a temp folder with frames whose pixel value names the frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from compresskit_vfi.data import (
    DAVIS90,
    SNUFILM,
    UCF101DVF,
    UCF101QVI,
    BVIDVCQuintuplets,
    DatasetLayoutError,
    FrameFolder,
    MiddleburyOther,
    VideoFrames,
    Vimeo90KSeptuplet,
    Vimeo90KTriplet,
    create_dataset,
    sample_windows,
)
from compresskit_vfi.data.video import write_video
from PIL import Image

H, W = 8, 12


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), value, np.uint8)).save(path)


def _values(sample):
    """The constant 8-bit value of each frame of a sample (inputs..., target)."""
    out = []
    for f in sample:
        assert f.dtype == torch.float32 and f.shape == (3, H, W) and f.min() >= 0 and f.max() <= 1
        v = f * 255
        assert torch.equal(v, v.flatten()[0].expand_as(v))
        out.append(int(round(float(v.flatten()[0]))))
    return out


def test_sample_windows_paper_indices():
    assert sample_windows(4, "triplet") == [(0, 2, 1), (1, 3, 2)]
    assert sample_windows(8, "quintuplet") == [(0, 2, 4, 6, 3), (1, 3, 5, 7, 4)]
    assert sample_windows(6, "quintuplet") == []
    with pytest.raises(ValueError, match="kind"):
        sample_windows(5, "septuplet")


def test_sample_windows_gap_hand_computed():
    # gap 2 over 7 frames: inputs two frames either side of the target
    assert sample_windows(7, "triplet", gap=2) == [(0, 4, 2), (1, 5, 3), (2, 6, 4)]
    assert sample_windows(7, "triplet", step=2, gap=3) == [(0, 6, 3)]
    assert sample_windows(6, "triplet", gap=3) == []
    assert sample_windows(14, "quintuplet", gap=2) == [(0, 4, 8, 12, 6), (1, 5, 9, 13, 7)]
    assert sample_windows(5, "triplet", gap=1) == sample_windows(5, "triplet")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="gap must be an int >= 1"):
            sample_windows(9, "triplet", gap=bad)


def test_vimeo_triplet_and_septuplet(tmp_path):
    for seq, base in (("00001/0001", 10), ("00002/0007", 100)):
        for i in range(1, 8):
            _png(tmp_path / "sequences" / seq / f"im{i}.png", base + i)
    (tmp_path / "tri_testlist.txt").write_text("00001/0001\n00002/0007\n\n")
    (tmp_path / "sep_testlist.txt").write_text("00002/0007\n")
    tri = Vimeo90KTriplet(tmp_path, "test")
    assert len(tri) == 2 and tri.n_inputs == 2
    assert _values(tri[0]) == [11, 13, 12] and _values(tri[1]) == [101, 103, 102]
    sep = Vimeo90KSeptuplet(tmp_path, "test")
    assert _values(sep[0]) == [101, 103, 105, 107, 104]
    # errors name the path and show the layout
    with pytest.raises(DatasetLayoutError, match="tri_trainlist.txt") as e:
        Vimeo90KTriplet(tmp_path, "train")
    assert "sequences/<00001>/<0001>/im1.png" in str(e.value)
    (tmp_path / "tri_trainlist.txt").write_text("00001/0001\nthis line is wrong\n")
    with pytest.raises(DatasetLayoutError, match="malformed line 2"):
        Vimeo90KTriplet(tmp_path, "train")
    with pytest.raises(DatasetLayoutError, match="dataset folder not found"):
        Vimeo90KTriplet(tmp_path / "nope")
    (tmp_path / "tri_trainlist.txt").write_text("00009/0001\n")
    with pytest.raises(DatasetLayoutError, match="frame file not found"):
        Vimeo90KTriplet(tmp_path, "train")


def test_bvi_dvc_strips(tmp_path):
    # strip of five 12-wide frames: f1 f3 f5 f7 f4 with values 1 3 5 7 4
    strip = np.concatenate([np.full((H, W, 3), v, np.uint8) for v in (1, 3, 5, 7, 4)], axis=1)
    (tmp_path / "quintuplets").mkdir()
    Image.fromarray(strip).save(tmp_path / "quintuplets" / "00001.png")
    Image.fromarray(strip + 10).save(tmp_path / "quintuplets" / "00002.png")
    ds = BVIDVCQuintuplets(tmp_path)
    assert len(ds) == 2 and ds.n_inputs == 4
    assert _values(ds[0]) == [1, 3, 5, 7, 4] and _values(ds[1]) == [11, 13, 15, 17, 14]
    Image.fromarray(strip[:, :-1]).save(tmp_path / "quintuplets" / "00003.png")
    with pytest.raises(DatasetLayoutError, match="not a multiple of 5"):
        ds = BVIDVCQuintuplets(tmp_path)
        ds[2]


def test_bvi_dvc_published_quintuplet_folders(tmp_path):
    # ST-MFNet's BVIDVC_quintuplet reads <root>/quintuplets/<id>/quintuplet.png, a strip cut at x = 0, 256,
    # 512, 768, 1024 into f1, f3, f5, f7, f4; here five 12-wide frames whose values name the frame
    for k, sid in enumerate(("10", "2", "1")):  # natural order of the ids: 1, 2, 10
        strip = np.concatenate([np.full((H, W, 3), v + 20 * k, np.uint8) for v in (1, 3, 5, 7, 4)], axis=1)
        (tmp_path / "quintuplets" / sid).mkdir(parents=True)
        Image.fromarray(strip).save(tmp_path / "quintuplets" / sid / "quintuplet.png")
    for root in (tmp_path, tmp_path / "quintuplets"):  # the dataset root, or the quintuplets folder itself
        ds = BVIDVCQuintuplets(root)
        assert len(ds) == 3 and ds.n_inputs == 4
        assert [_values(ds[i]) for i in range(3)] == [[41, 43, 45, 47, 44], [21, 23, 25, 27, 24],
                                                      [1, 3, 5, 7, 4]]
    assert len(create_dataset("bvi_dvc", tmp_path)) == 3
    (tmp_path / "empty" / "quintuplets" / "00001").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="quintuplet.png") as e:
        BVIDVCQuintuplets(tmp_path / "empty")
    assert "<root>/quintuplets/<id>/quintuplet.png" in str(e.value)


def test_ucf101_qvi_and_dvf(tmp_path):
    for c in range(3):
        for k, name in enumerate(("frame0", "frame1", "frame2", "frame3", "framet")):
            _png(tmp_path / "qvi" / str(c) / f"{name}.png", 10 * c + k)
        _png(tmp_path / "dvf" / str(c) / "frame_00.png", 10 * c)
        _png(tmp_path / "dvf" / str(c) / "frame_01_gt.png", 10 * c + 1)
        _png(tmp_path / "dvf" / str(c) / "frame_02.png", 10 * c + 2)
    qvi = UCF101QVI(tmp_path / "qvi")
    assert len(qvi) == 3 and _values(qvi[2]) == [20, 21, 22, 23, 24]
    dvf = UCF101DVF(tmp_path / "dvf")
    assert len(dvf) == 3 and _values(dvf[1]) == [10, 12, 11]
    with pytest.raises(DatasetLayoutError, match="frame0.png"):
        UCF101QVI(tmp_path / "dvf")
    (tmp_path / "qvi" / "1" / "framet.png").unlink()
    with pytest.raises(DatasetLayoutError, match="framet.png"):
        UCF101QVI(tmp_path / "qvi")


def test_davis90_published_step_and_sequences(tmp_path):
    # ST-MFNet's Davis90_quintuplet: t in range(0, num_frames - 6, 2), inputs t, t+2, t+4, t+6, target t+3
    for s, n in (("bear", 11), ("car", 7), ("short", 6)):
        for t in range(n):
            _png(tmp_path / "JPEGImages" / "480p" / s / f"{t:05d}.png", 20 * len(s) + t)
    ds = DAVIS90(tmp_path)
    assert ds.n_sequences == 2
    assert len(ds) == 3 + 1  # bear: t = 0, 2, 4; car: t = 0; short: none
    assert [_values(ds[i]) for i in range(3)] == [[80, 82, 84, 86, 83], [82, 84, 86, 88, 85],
                                                  [84, 86, 88, 90, 87]]
    assert _values(ds[3]) == [60, 62, 64, 66, 63]
    assert ds.groups == ["bear", "bear", "bear", "car"]
    tri = DAVIS90(tmp_path, kind="triplet")  # Davis90_triplet: (t+2, t+4) -> t+3, same t
    assert len(tri) == 4 and _values(tri[1]) == [84, 86, 85]
    assert len(DAVIS90(tmp_path, step=1)) == 5 + 1


def test_snufilm_triplets_and_quintuplets(tmp_path):
    seq = tmp_path / "test" / "GOPRO_test" / "GOPR0001"
    for t in range(1, 42):
        _png(seq / f"{t:06d}.png", t)
    rel = "data/SNU-FILM/test/GOPRO_test/GOPR0001"
    (tmp_path / "test-easy.txt").write_text(f"{rel}/000003.png {rel}/000004.png {rel}/000005.png\n")
    (tmp_path / "test-hard.txt").write_text(f"{rel}/000009.png {rel}/000013.png {rel}/000017.png\n"
                                            f"{rel}/000001.png {rel}/000005.png {rel}/000009.png\n"
                                            f"{rel}/000026.png {rel}/000030.png {rel}/000034.png\n")
    easy = SNUFILM(tmp_path, "easy")
    assert _values(easy[0]) == [3, 5, 4]
    assert _values(SNUFILM(tmp_path, "easy", kind="quintuplet")[0]) == [1, 3, 5, 7, 4]  # offset 2
    # ST-MFNet's get_quintuplet: first - o and first + 2o (o = 8 for hard); a line whose frames are missing
    # is skipped (1 - 8 < 1; 26 + 16 = 42 > 41), never clamped
    hard = SNUFILM(tmp_path, "hard", kind="quintuplet")
    assert len(hard) == 1 and hard.n_skipped == 2
    assert _values(hard[0]) == [1, 9, 17, 25, 13]
    assert len(create_dataset("snufilm_hard", tmp_path)) == 3  # triplets: every line
    (tmp_path / "test-medium.txt").write_text(f"{rel}/000001.png {rel}/000003.png {rel}/000005.png\n")
    with pytest.raises(DatasetLayoutError, match="no quintuplet"):
        SNUFILM(tmp_path, "medium", kind="quintuplet")
    (tmp_path / "test-medium.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="test-medium.txt"):
        SNUFILM(tmp_path, "medium")
    (tmp_path / "test-extreme.txt").write_text(f"{rel}/000001.png {rel}/000009.png\n")
    with pytest.raises(DatasetLayoutError, match="malformed line 1"):
        SNUFILM(tmp_path, "extreme")
    (tmp_path / "test-extreme.txt").write_text(f"{rel}/1.png {rel}/9.png {rel}/17.png\n")
    with pytest.raises(DatasetLayoutError, match="not found under"):
        SNUFILM(tmp_path, "extreme")


def test_middlebury_other_only_sequences_with_gt(tmp_path):
    for k, s in enumerate(("Beanbags", "Dimetrodon", "Walking")):
        _png(tmp_path / "other-data" / s / "frame10.png", 10 * k)
        _png(tmp_path / "other-data" / s / "frame11.png", 10 * k + 2)
        if s != "Walking":
            _png(tmp_path / "other-gt-interp" / s / "frame10i11.png", 10 * k + 1)
    (tmp_path / "other-gt-interp" / "Walking").mkdir()
    ds = MiddleburyOther(tmp_path)
    assert len(ds) == 2 and _values(ds[1]) == [10, 12, 11]
    with pytest.raises(DatasetLayoutError, match="other-gt-interp"):
        MiddleburyOther(tmp_path / "other-data")


def test_frame_folder_and_video(tmp_path):
    for t in range(1, 12):  # natural order: 2 before 10
        _png(tmp_path / "f" / f"frame{t}.png", 10 * t)
    tri = FrameFolder(tmp_path / "f")
    assert len(tri) == 9 and _values(tri[0]) == [10, 30, 20]
    quint = FrameFolder(tmp_path / "f", kind="quintuplet", step=2)
    assert len(quint) == 3 and _values(quint[2]) == [50, 70, 90, 110, 80]
    for t in range(2):
        _png(tmp_path / "two" / f"{t}.png", t)
    with pytest.raises(DatasetLayoutError, match="too few frames"):
        FrameFolder(tmp_path / "two")

    # a video with a scene cut after frame 4: no sample may straddle it
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 128, (H * 4, W * 4, 3)), rng.integers(128, 256, (H * 4, W * 4, 3))
    frames = [np.roll(a, t, axis=1) for t in range(5)] + [np.roll(b, t, axis=0) for t in range(5)]
    path = tmp_path / "v.mkv"
    write_video([f.astype(np.uint8) for f in frames], path, codec="ffv1")
    vid = VideoFrames(path)
    assert len(vid) == 3 + 3
    refs = [tuple(i for _, i in s) for s in vid.samples]
    assert refs == [(0, 2, 1), (1, 3, 2), (2, 4, 3), (5, 7, 6), (6, 8, 7), (7, 9, 8)]
    np.testing.assert_array_equal(vid[4][2].numpy(), (frames[7].transpose(2, 0, 1) / 255).astype(np.float32))
    assert len(VideoFrames(path, clean=False)) == 8


def test_create_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'vimeo'"):
        create_dataset("vimeo", tmp_path)
    with pytest.raises(ValueError, match="needs a data_dir"):
        create_dataset("davis90")
    with pytest.raises(DatasetLayoutError, match="dataset folder not found"):
        create_dataset("middlebury_other", tmp_path / "missing")
