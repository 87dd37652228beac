"""Video files in and out with PyAV, and the clean-up that turns a clip into usable training frames.

Reading decodes to uint8 RGB arrays (H, W, 3). Writing encodes RGB frames and replaces the output file
atomically (``compresskit.io``), so a failure mid-way leaves no half-written video behind.

Clean-up: a scene cut is a jump in the colour histogram between neighbouring frames (total-variation
distance of 8×8×8-bin RGB histograms above ``cut_threshold``); a repeated frame is one whose mean absolute
difference to the previous frame is below ``repeat_ratio`` times the median difference of its neighbours
(a duplicated frame carries only compression noise). Interpolation triplets must not straddle a cut, and
a duplicated frame would make the target equal an input, so :func:`clean_segments` drops repeats and
splits at cuts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "VideoInfo",
    "video_info",
    "has_audio",
    "iter_video_frames",
    "read_video",
    "write_video",
    "mean_abs_difference",
    "frame_differences",
    "color_histogram",
    "histogram_distance",
    "histogram_distances",
    "cuts_from_distances",
    "repeats_from_differences",
    "detect_scene_cuts",
    "detect_repeats",
    "clean_segments",
]

# container format chosen from the output suffix, and the codec used there by default
_CONTAINERS = {".mp4": ("mp4", "libx264"), ".mkv": ("matroska", "libx264"), ".mov": ("mov", "libx264"),
               ".avi": ("avi", "mpeg4"), ".webm": ("webm", "libvpx-vp9")}


def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - av is a dependency of the plugin
        raise ImportError("video input/output needs PyAV: pip install av") from e
    return av


@dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int
    height: int
    fps: Fraction
    frames: int  # as declared by the container (0 when unknown)
    duration: float | None = None  # seconds, as declared by the container

    @property
    def estimated_frames(self) -> int:
        """The declared frame count, else duration × fps (0 when neither is known)."""
        if self.frames or not self.duration:
            return self.frames
        return max(1, round(self.duration * self.fps))


def _open(path: str | os.PathLike):
    av = _av()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"video {str(p)!r} does not exist")
    try:
        container = av.open(str(p))
    except Exception as e:
        raise ValueError(f"video {str(p)!r} could not be opened by PyAV: {e}") from e
    if not container.streams.video:
        container.close()
        raise ValueError(f"video {str(p)!r} has no video stream")
    return container


def video_info(path: str | os.PathLike) -> VideoInfo:
    """Size, frame rate and declared frame count of ``path``."""
    with _open(path) as c:
        s = c.streams.video[0]
        rate = s.average_rate or s.guessed_rate or Fraction(25)
        if s.duration is not None and s.time_base is not None:
            duration = float(s.duration * s.time_base)
        else:
            duration = c.duration / 1e6 if c.duration is not None else None
        return VideoInfo(str(path), s.codec_context.width, s.codec_context.height, Fraction(rate),
                         int(s.frames or 0), duration)


def has_audio(path: str | os.PathLike) -> bool:
    """Whether the video file ``path`` has an audio stream."""
    with _open(path) as c:
        return bool(c.streams.audio)


def iter_video_frames(path: str | os.PathLike, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Decode ``path`` frame by frame as uint8 RGB (H, W, 3) arrays."""
    container = _open(path)
    try:
        for i, frame in enumerate(container.decode(video=0)):
            if max_frames is not None and i >= max_frames:
                break
            yield frame.to_ndarray(format="rgb24")
    except Exception as e:
        if isinstance(e, (GeneratorExit, KeyboardInterrupt)):
            raise
        raise ValueError(f"video {str(path)!r} could not be decoded: {e}") from e
    finally:
        container.close()


def read_video(path: str | os.PathLike, max_frames: int | None = None) -> np.ndarray:
    """All frames of ``path`` as one uint8 array (T, H, W, 3)."""
    frames = list(iter_video_frames(path, max_frames))
    if not frames:
        raise ValueError(f"video {str(path)!r} contains no decodable frames")
    return np.stack(frames)


# lossless codecs keep RGB exactly (no chroma subsampling)
_RGB_FORMATS = {"ffv1": "bgr0", "libx264rgb": "rgb24", "png": "rgb24", "rawvideo": "rgb24"}
# audio codecs a WebM file can hold (the other containers take what the common inputs carry)
_WEBM_AUDIO = {"opus", "vorbis"}


def _pixel_format(codec: str) -> str:
    """RGB for the lossless RGB codecs, else 4:2:0 (what every player decodes)."""
    return _RGB_FORMATS.get(codec, "yuv420p")


def _pad_to_even(frame: np.ndarray) -> np.ndarray:
    """Repeat the last row / column of a frame of odd height / width (4:2:0 needs even sizes)."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


class _AudioCopy:
    """The audio stream of ``source`` remuxed (packets copied, not re-encoded) into an output container.

    Packets are shifted so that the source's first video frame is at time 0, as the output video is, and
    muxed interleaved with the video: :meth:`mux_until` writes those that start before a given time.
    """

    def __init__(self, source: str | os.PathLike, out: Any, fmt: str):
        self.container = _open(source)
        if not self.container.streams.audio:
            self.container.close()
            self.container = None
            return
        src = self.container.streams.audio[0]
        name = src.codec_context.name
        if fmt == "webm" and name not in _WEBM_AUDIO:
            self.container.close()
            raise ValueError(f"the audio of {str(source)!r} is {name}, which a .webm file cannot hold "
                             f"(only {sorted(_WEBM_AUDIO)}); write .mkv or .mp4, or drop the audio")
        video = self.container.streams.video[0]
        start = video.start_time * video.time_base if video.start_time is not None else 0
        self.shift = int(round(start / src.time_base)) if src.time_base else 0
        self.stream = out.add_stream_from_template(src)
        self.out = out
        self.packets = (p for p in self.container.demux(src) if p.dts is not None)
        self.pending: Any = None
        self.count = 0

    def mux_until(self, seconds: float | None) -> None:
        """Mux the packets that start before ``seconds`` (None: all that are left)."""
        if self.container is None:
            return
        while True:
            if self.pending is None:
                self.pending = next(self.packets, None)
                if self.pending is None:
                    return
            p = self.pending
            if p.pts is None:
                p.pts = p.dts
            if seconds is not None and (p.pts - self.shift) * p.time_base >= seconds:
                return
            p.pts -= self.shift
            p.dts -= self.shift
            p.stream = self.stream
            self.out.mux(p)
            self.count += 1
            self.pending = None

    def close(self) -> None:
        if self.container is not None:
            self.container.close()


def write_video(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: float | Fraction = 25,
                codec: str | None = None, crf: int = 18, audio_from: str | os.PathLike | None = None) -> int:
    """Encode uint8 RGB frames (H, W, 3) to ``path``; the file appears only when encoding succeeded.

    The container comes from the suffix (.mp4 .mkv .mov .avi .webm); the codec defaults to H.264
    (MPEG-4 part 2 for .avi); ``ffv1`` (in .mkv) and ``libx264rgb`` are lossless RGB. Lossy codecs
    encode 4:2:0 (``yuv420p``, which every player decodes); a frame of odd height or width is padded to
    even by repeating its last row / column, so the file is up to one pixel taller / wider than the
    frames (crop it back with ``frame[:H, :W]``, or ``ffmpeg -vf crop=W:H``). ``audio_from``: a video
    file whose audio stream is copied into the output (packets remuxed, not re-encoded; none if it has
    no audio). Returns the number of frames written.
    """
    from compresskit.io import atomic_write

    av = _av()
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _CONTAINERS:
        raise ValueError(f"output {str(path)!r}: unsupported video suffix {suffix!r}; "
                         f"expected one of {sorted(_CONTAINERS)}")
    fmt, default_codec = _CONTAINERS[suffix]
    codec = codec or default_codec
    rate = Fraction(fps).limit_denominator(100000)
    count = 0

    def encode(f) -> None:
        nonlocal count
        with av.open(f, "w", format=fmt) as out:
            audio: _AudioCopy | None = None
            try:
                stream = None
                for frame in frames:
                    frame = np.ascontiguousarray(frame)
                    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                        raise ValueError(f"write_video: frames must be uint8 (H, W, 3), got {frame.dtype} "
                                         f"{frame.shape}")
                    if stream is None:
                        size = frame.shape[:2]
                        pix_fmt = _pixel_format(codec)
                        h, w = size if pix_fmt != "yuv420p" else _pad_to_even(frame).shape[:2]
                        stream = out.add_stream(codec, rate=rate)
                        stream.width, stream.height = w, h
                        stream.pix_fmt = pix_fmt
                        if codec in ("libx264", "libx264rgb"):
                            stream.options = {"crf": str(crf)}
                        if audio_from is not None:  # after the video stream, so video is stream 0
                            audio = _AudioCopy(audio_from, out, fmt)
                    elif frame.shape[:2] != size:
                        raise ValueError(f"write_video: frame {count} has size {frame.shape[:2]}, "
                                         f"the first frame had {size}")
                    if pix_fmt == "yuv420p":
                        frame = _pad_to_even(frame)
                    if audio is not None:
                        audio.mux_until(float((count + 1) / rate))
                    for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                        out.mux(packet)
                    count += 1
                if stream is None:
                    raise ValueError(f"write_video: no frames to write to {str(path)!r}")
                for packet in stream.encode():
                    out.mux(packet)
                if audio is not None:
                    audio.mux_until(None)
            finally:
                if audio is not None:
                    audio.close()

    atomic_write(path, encode)
    return count


# --------------------------------------------------------------------------------------------- clean-up

def mean_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 frames, in 8-bit levels."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def frame_differences(frames: np.ndarray) -> np.ndarray:
    """Mean absolute difference (8-bit levels) between each frame and the next: shape (T-1,)."""
    return np.array([mean_abs_difference(frames[i], frames[i + 1]) for i in range(len(frames) - 1)],
                    dtype=np.float64)


def color_histogram(frame: np.ndarray) -> np.ndarray:
    """Normalised 8×8×8-bin RGB histogram (512 bins) of a uint8 frame."""
    q = (np.asarray(frame, dtype=np.uint8) >> 5).astype(np.uint16)
    idx = (q[..., 0] << 6) | (q[..., 1] << 3) | q[..., 2]
    h = np.bincount(idx.ravel(), minlength=512).astype(np.float64)
    return h / h.sum()


def histogram_distance(h0: np.ndarray, h1: np.ndarray) -> float:
    """Total-variation distance ½Σ|h1 − h0| of two normalised histograms, in [0, 1]."""
    return float(0.5 * np.abs(h1 - h0).sum())


def histogram_distances(frames: np.ndarray) -> np.ndarray:
    """:func:`histogram_distance` between each frame's colour histogram and the next's: shape (T-1,)."""
    hists = [color_histogram(f) for f in frames]
    return np.array([histogram_distance(hists[i], hists[i + 1]) for i in range(len(hists) - 1)],
                    dtype=np.float64)


def cuts_from_distances(hist_distances: np.ndarray, cut_threshold: float = 0.2) -> list[int]:
    """Cut indices from :func:`histogram_distances` (a cut after frame ``i`` when ``d[i] > threshold``)."""
    return [int(i) for i in np.flatnonzero(np.asarray(hist_distances) > cut_threshold)]


def repeats_from_differences(differences: np.ndarray, repeat_ratio: float = 0.2,
                             window: int = 4) -> list[int]:
    """Repeat indices from :func:`frame_differences`: ``d[i] < ratio · median(d[i-w..i+w] ∖ d[i])``."""
    d = np.asarray(differences, dtype=np.float64)
    repeats = []
    for i in range(len(d)):
        neighbours = np.concatenate([d[max(0, i - window):i], d[i + 1:i + 1 + window]])
        if len(neighbours) and d[i] < repeat_ratio * np.median(neighbours):
            repeats.append(i)
    return repeats


def detect_scene_cuts(frames: np.ndarray, cut_threshold: float = 0.2) -> list[int]:
    """Indices ``i`` such that a scene cut lies between frame ``i`` and frame ``i+1``."""
    return cuts_from_distances(histogram_distances(frames), cut_threshold)


def detect_repeats(frames: np.ndarray, repeat_ratio: float = 0.2, window: int = 4) -> list[int]:
    """Indices ``i`` such that frame ``i+1`` repeats frame ``i`` (its difference ≪ its neighbours')."""
    return repeats_from_differences(frame_differences(frames), repeat_ratio, window)


def clean_segments(frames: np.ndarray | int, cut_threshold: float = 0.2, repeat_ratio: float = 0.2,
                   cuts: Iterable[int] | None = None,
                   repeats: Iterable[int] | None = None) -> list[list[int]]:
    """Split a clip into runs of distinct, continuous frames: returns lists of frame indices.

    Frame ``i+1`` is dropped for every repeat ``i``; a new segment starts after every cut ``i``. Cuts and
    repeats are detected unless given (then ``frames`` may be just the frame count).
    """
    if isinstance(frames, int) and (cuts is None or repeats is None):
        raise ValueError("clean_segments: give the frames, or both cuts and repeats with a frame count")
    n = frames if isinstance(frames, int) else len(frames)
    cut_set = set(detect_scene_cuts(frames, cut_threshold) if cuts is None else cuts)
    dup_set = {i + 1 for i in (detect_repeats(frames, repeat_ratio) if repeats is None else repeats)}
    segments: list[list[int]] = [[]]
    for i in range(n):
        if i not in dup_set:
            segments[-1].append(i)
        if i in cut_set:
            segments.append([])
    return [s for s in segments if s]
