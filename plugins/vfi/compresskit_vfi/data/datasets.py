"""The papers' VFI datasets, read from local folders (nothing downloads), plus any folder of frames or video.

Every dataset yields one sample per index: a tuple of float32 frames (3, H, W) in [0, 1], the inputs in
time order and the target last — a triplet ``(frame0, frame1, gt)`` or a quintuplet ``(I0, I1, I2, I3,
gt)``. Frame indices follow the papers (``VFI_MODELS.md``, "Evaluation conventions"); the expected
on-disk layout of each set is in its ``LAYOUT`` string, repeated in every error about it, and in
``docs/vfi_data.md``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from compresskit_vfi.data.transforms import to_tensor

__all__ = [
    "DatasetLayoutError",
    "read_image",
    "FrameTupleDataset",
    "ArrayLoader",
    "sample_windows",
    "check_kind",
    "Vimeo90KTriplet",
    "Vimeo90KSeptuplet",
    "BVIDVCQuintuplets",
    "UCF101QVI",
    "UCF101DVF",
    "DAVIS90",
    "SNUFILM",
    "MiddleburyOther",
    "FrameFolder",
    "VideoFrames",
    "DATASETS",
    "create_dataset",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
KINDS = ("triplet", "quintuplet")


class DatasetLayoutError(ValueError):
    """A dataset folder or list file is missing or does not have the expected layout."""


def _layout_error(what: str, path: str | os.PathLike, layout: str) -> DatasetLayoutError:
    return DatasetLayoutError(f"{what}: {str(path)!r}. Expected layout:\n{layout.strip()}")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"frame {str(path)!r} does not exist") from None
    except Exception as e:
        raise ValueError(f"frame {str(path)!r} could not be read as an image: {e}") from e


class ArrayLoader:
    """Loader for frames held in memory: ``ref = (clip index, frame index)`` into a list of (T, H, W, 3)."""

    def __init__(self, clips: Sequence[np.ndarray]):
        self.clips = list(clips)

    def __call__(self, ref: tuple[int, int]) -> np.ndarray:
        return self.clips[ref[0]][ref[1]]


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _subfolders(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: _natural_key(p.name))


def _image_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                  key=lambda p: _natural_key(p.name))


def check_kind(kind: str) -> str:
    """``kind`` if it is one of :data:`KINDS` (``"triplet"``, ``"quintuplet"``), else a ``ValueError``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind


def sample_windows(n_frames: int, kind: str = "triplet", step: int = 1,
                   gap: int = 1) -> list[tuple[int, ...]]:
    """Frame indices of every sample in a run of ``n_frames`` consecutive frames.

    triplet: inputs ``(t, t+2g)``, target ``t+g``; quintuplet: inputs ``(t, t+2g, t+4g, t+6g)``, target
    ``t+3g`` (the septuplet convention of ST-MFNet and DAVIS-90), with ``g = gap`` (1 = adjacent frames;
    a larger gap means more motion between the inputs). ``t`` advances by ``step``.
    """
    check_kind(kind)
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    if isinstance(gap, bool) or not isinstance(gap, int) or gap < 1:
        raise ValueError(f"gap must be an int >= 1 (frames between an input and the target), got {gap!r}")
    g = gap
    if kind == "triplet":
        return [(t, t + 2 * g, t + g) for t in range(0, n_frames - 2 * g, step)]
    return [(t, t + 2 * g, t + 4 * g, t + 6 * g, t + 3 * g) for t in range(0, n_frames - 6 * g, step)]


class FrameTupleDataset(Dataset):
    """Samples given as tuples of frame references (inputs..., target), loaded by ``loader``.

    ``loader(ref) -> uint8 (H, W, 3)``; by default references are image paths. ``transform`` maps the
    tuple of tensors to another (see :mod:`compresskit_vfi.data.transforms`).
    """

    LAYOUT = "any list of frame tuples"

    #: the sequence of each sample when a test set is scored per sequence (DAVIS), else None; see
    #: :func:`compresskit_vfi.evaluate.evaluate`
    groups: list[str] | None = None

    def __init__(self, samples: Sequence[Sequence[Any]], loader: Callable[[Any], np.ndarray] = read_image,
                 transform: Callable | None = None, name: str = ""):
        self.samples = [tuple(s) for s in samples]
        lengths = {len(s) for s in self.samples}
        if len(lengths) > 1:
            raise ValueError(f"{name or type(self).__name__}: samples have different lengths "
                             f"{sorted(lengths)}")
        if lengths and lengths != {3} and lengths != {5}:
            raise ValueError(f"{name or type(self).__name__}: samples must be triplets (3 frames) or "
                             f"quintuplets (5 frames), got {lengths.pop()} frames")
        self.loader = loader
        self.transform = transform
        self.name = name or type(self).__name__

    @property
    def n_inputs(self) -> int:
        """2 for triplets, 4 for quintuplets."""
        return len(self.samples[0]) - 1 if self.samples else 0

    def __len__(self) -> int:
        return len(self.samples)

    def load_uint8(self, index: int) -> list[np.ndarray]:
        """The frames of sample ``index`` as uint8 (H, W, 3), inputs first, target last, no transform."""
        return [self.loader(ref) for ref in self.samples[index]]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        frames = self.load_uint8(index)
        sizes = {f.shape for f in frames}
        if len(sizes) > 1:
            raise ValueError(f"{self.name}: the frames of sample {index} ({self.samples[index]}) have "
                             f"different sizes {sorted(sizes)}")
        sample = tuple(to_tensor(f) for f in frames)
        return self.transform(sample) if self.transform is not None else sample

    def __repr__(self) -> str:
        kind = {2: "triplets", 4: "quintuplets"}.get(self.n_inputs, "samples")
        return f"{self.name}({len(self)} {kind})"


def _require_dir(path: Path, layout: str, what: str = "dataset folder not found") -> Path:
    if not path.is_dir():
        raise _layout_error(what, path, layout)
    return path


def _read_list(path: Path, layout: str, pattern: re.Pattern[str], what: str) -> list[str]:
    """Non-empty lines of a list file, each matching ``pattern``; errors name the file and line."""
    if not path.is_file():
        raise _layout_error(f"{what} list file not found", path, layout)
    lines = []
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if not pattern.fullmatch(line):
            raise _layout_error(f"malformed line {n} ({line[:80]!r}) in list file", path, layout)
        lines.append(line)
    if not lines:
        raise _layout_error("list file is empty", path, layout)
    return lines


def _check_files(files: Sequence[Path], layout: str) -> None:
    for f in files:
        if not f.is_file():
            raise _layout_error("frame file not found", f, layout)


# ------------------------------------------------------------------------------------------- Vimeo-90K

_VIMEO_LINE = re.compile(r"[^/\s]+/[^/\s]+")


class Vimeo90KTriplet(FrameTupleDataset):
    """Vimeo-90K triplets: inputs im1, im3, target im2 (3,782 test, 51,312 train)."""

    LAYOUT = """
<root>/tri_trainlist.txt, <root>/tri_testlist.txt   one sequence per line, e.g. 00001/0001
<root>/sequences/<00001>/<0001>/im1.png im2.png im3.png"""

    def __init__(self, root: str | os.PathLike, split: str = "test", transform: Callable | None = None):
        if split not in ("train", "test"):
            raise ValueError(f"Vimeo90KTriplet: split must be 'train' or 'test', got {split!r}")
        root = _require_dir(Path(root), self.LAYOUT)
        seqs = _read_list(root / f"tri_{split}list.txt", self.LAYOUT, _VIMEO_LINE, "Vimeo-90K triplet")
        base = _require_dir(root / "sequences", self.LAYOUT, "sequences folder not found")
        samples = [tuple(base / s / f"im{i}.png" for i in (1, 3, 2)) for s in seqs]
        _check_files(samples[0], self.LAYOUT)
        super().__init__(samples, transform=transform, name=f"vimeo_triplet_{split}")


class Vimeo90KSeptuplet(FrameTupleDataset):
    """Vimeo-90K septuplets as quintuplets: inputs im1, im3, im5, im7, target im4 (ST-MFNet)."""

    LAYOUT = """
<root>/sep_trainlist.txt, <root>/sep_testlist.txt   one sequence per line, e.g. 00001/0001
<root>/sequences/<00001>/<0001>/im1.png ... im7.png"""

    def __init__(self, root: str | os.PathLike, split: str = "test", transform: Callable | None = None):
        if split not in ("train", "test"):
            raise ValueError(f"Vimeo90KSeptuplet: split must be 'train' or 'test', got {split!r}")
        root = _require_dir(Path(root), self.LAYOUT)
        seqs = _read_list(root / f"sep_{split}list.txt", self.LAYOUT, _VIMEO_LINE, "Vimeo-90K septuplet")
        base = _require_dir(root / "sequences", self.LAYOUT, "sequences folder not found")
        samples = [tuple(base / s / f"im{i}.png" for i in (1, 3, 5, 7, 4)) for s in seqs]
        _check_files(samples[0], self.LAYOUT)
        super().__init__(samples, transform=transform, name=f"vimeo_septuplet_{split}")


# --------------------------------------------------------------------------------------------- BVI-DVC

class BVIDVCQuintuplets(FrameTupleDataset):
    """BVI-DVC training quintuplets: each image is five equal-width frames side by side, f1 f3 f5 f7 f4.

    The published layout (ST-MFNet's ``BVIDVC_quintuplet``) is one folder per sample,
    ``<root>/quintuplets/<id>/quintuplet.png``, a 1280×256 strip; the strip is cut into five (H, W/5)
    frames and the sample is ``(f1, f3, f5, f7, f4)`` = (I0..I3, gt). Strips stored directly as
    ``<root>/quintuplets/*.png`` are read too. Samples are in natural order of ``<id>``.
    """

    LAYOUT = """
<root>/quintuplets/<id>/quintuplet.png   one folder per sample (the published layout; <root> may also be
                                         the quintuplets folder itself)
or <root>/quintuplets/*.png              the strips directly
each strip is 5 frames of equal width side by side, ordered f1, f3, f5, f7, f4
(e.g. 1280x256 = 5 frames of 256x256)"""

    STRIP_NAME = "quintuplet.png"

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None):
        root = _require_dir(Path(root), self.LAYOUT)
        folder = root / "quintuplets" if (root / "quintuplets").is_dir() else root
        strips = [d / self.STRIP_NAME for d in _subfolders(folder) if (d / self.STRIP_NAME).is_file()]
        strips += _image_files(folder)
        if not strips:
            raise _layout_error(f"no <id>/{self.STRIP_NAME} folders (or strip images) found in", folder,
                                self.LAYOUT)
        self._cache: tuple[Path, np.ndarray] | None = None
        super().__init__([tuple((p, k) for k in range(5)) for p in strips], loader=self._load_part,
                         transform=transform, name="bvi_dvc")

    def _load_part(self, ref: tuple[Path, int]) -> np.ndarray:
        path, part = ref
        if self._cache is None or self._cache[0] != path:
            strip = read_image(path)
            if strip.shape[1] % 5:
                raise _layout_error(f"strip width {strip.shape[1]} is not a multiple of 5", path, self.LAYOUT)
            self._cache = (path, strip)
        strip = self._cache[1]
        w = strip.shape[1] // 5
        return strip[:, part * w:(part + 1) * w]


# ---------------------------------------------------------------------------------------------- UCF101

class UCF101QVI(FrameTupleDataset):
    """UCF101 quintuplets of the QVI test set (100 clips), used by ST-MFNet."""

    LAYOUT = """
<root>/<clip>/frame0.png frame1.png frame2.png frame3.png framet.png
inputs frame0..frame3 (I0..I3), target framet (between frame1 and frame2)"""

    NAMES = ("frame0.png", "frame1.png", "frame2.png", "frame3.png", "framet.png")

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None):
        root = _require_dir(Path(root), self.LAYOUT)
        clips = [c for c in _subfolders(root) if (c / self.NAMES[0]).is_file()]
        if not clips:
            raise _layout_error("no clip folders with frame0.png found in", root, self.LAYOUT)
        samples = [tuple(c / n for n in self.NAMES) for c in clips]
        for s in samples:
            _check_files(s, self.LAYOUT)
        super().__init__(samples, transform=transform, name="ucf101_qvi")


class UCF101DVF(FrameTupleDataset):
    """UCF101 triplets of the DVF test set (379 clips), used by CDFI."""

    LAYOUT = """
<root>/<clip>/frame_00.png frame_02.png frame_01_gt.png
inputs frame_00, frame_02, target frame_01_gt (frame_01.png is accepted when frame_01_gt.png is absent)"""

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None):
        root = _require_dir(Path(root), self.LAYOUT)
        samples = []
        for c in _subfolders(root):
            if not (c / "frame_00.png").is_file():
                continue
            gt = c / "frame_01_gt.png" if (c / "frame_01_gt.png").is_file() else c / "frame_01.png"
            s = (c / "frame_00.png", c / "frame_02.png", gt)
            _check_files(s, self.LAYOUT)
            samples.append(s)
        if not samples:
            raise _layout_error("no clip folders with frame_00.png found in", root, self.LAYOUT)
        super().__init__(samples, transform=transform, name="ucf101_dvf")


# ---------------------------------------------------------------------------------------------- DAVIS

class DAVIS90(FrameTupleDataset):
    """DAVIS-90 (ST-MFNet): inputs t, t+2, t+4, t+6 and target t+3, for t = 0, 2, 4, ... of every sequence.

    As ST-MFNet's ``Davis90_quintuplet`` (``t in range(0, num_frames - 6, 2)``); the triplet form takes the
    middle pair ``(t+2, t+4) -> t+3`` (``Davis90_triplet``). ``step=1`` scores every ``t`` instead. The
    published score is the mean over sequences of each sequence's mean: ``groups`` names each sample's
    sequence so :func:`~compresskit_vfi.evaluate.evaluate` averages that way.
    """

    LAYOUT = """
<root>/<sequence>/00000.jpg 00001.jpg ...   (or <root>/JPEGImages/480p/<sequence>/...)
frames of each sequence in name order; t = 0, 2, 4, ... with t+6 inside the sequence is one sample"""

    #: ST-MFNet's evaluation steps t by 2
    STEP = 2

    def __init__(self, root: str | os.PathLike, kind: str = "quintuplet", transform: Callable | None = None,
                 step: int = STEP):
        check_kind(kind)
        root = _require_dir(Path(root), self.LAYOUT)
        if (root / "JPEGImages" / "480p").is_dir():
            root = root / "JPEGImages" / "480p"
        samples, groups = [], []
        seqs = 0
        for seq in _subfolders(root):
            frames = _image_files(seq)
            windows = sample_windows(len(frames), "quintuplet", step)
            if windows:
                seqs += 1
            for w in windows:
                ws = w if kind == "quintuplet" else (w[1], w[2], w[4])  # triplet: t+2, t+4 -> t+3
                samples.append(tuple(frames[i] for i in ws))
                groups.append(seq.name)
        if not samples:
            raise _layout_error("no sequence folders with at least 7 frames found in", root, self.LAYOUT)
        self.n_sequences = seqs
        super().__init__(samples, transform=transform, name="davis90")
        self.groups = groups


# -------------------------------------------------------------------------------------------- SNU-FILM

SNU_FILM_OFFSETS = {"easy": 2, "medium": 4, "hard": 8, "extreme": 16}


def _resolve_under(root: Path, rel: str) -> Path | None:
    """``rel`` found under ``root``, dropping leading components (lists say data/SNU-FILM/test/...)."""
    parts = Path(rel).parts
    for k in range(len(parts)):
        p = root.joinpath(*parts[k:])
        if p.is_file():
            return p
    return None


class SNUFILM(FrameTupleDataset):
    """SNU-FILM easy/medium/hard/extreme (310 triplets each).

    Triplets are ``(first, last, middle)`` from ``test-{level}.txt``, all of them. As quintuplets (ST-MFNet's
    ``Snufilm_*_quintuplet``) the frame numbers ``first − o`` and ``first + 2o`` are added, o being the
    level's offset (easy 2, medium 4, hard 8, extreme 16): ``(first − o, first, last, first + 2o,
    middle)``, named like ``first`` (same folder, same zero padding). A line whose added frames do not
    exist is skipped, as the published script skips it (``n_skipped`` counts them); the mean is over the
    remaining samples.
    """

    LAYOUT = """
<root>/test-easy.txt, test-medium.txt, test-hard.txt, test-extreme.txt
  each line: three frame paths <first> <middle> <last>, relative to <root> (a leading data/SNU-FILM/ is ok)
<root>/test/<source>/<sequence>/<number>.png   (the frames named in the lists; numbered names)"""

    def __init__(self, root: str | os.PathLike, level: str = "easy", kind: str = "triplet",
                 transform: Callable | None = None):
        if level not in SNU_FILM_OFFSETS:
            raise ValueError(f"SNUFILM: level must be one of {list(SNU_FILM_OFFSETS)}, got {level!r}")
        check_kind(kind)
        root = _require_dir(Path(root), self.LAYOUT)
        list_file = root / f"test-{level}.txt"
        if not list_file.is_file() and (root / "eval_modes" / list_file.name).is_file():
            list_file = root / "eval_modes" / list_file.name
        lines = _read_list(list_file, self.LAYOUT, re.compile(r"\S+\s+\S+\s+\S+"), f"SNU-FILM {level}")
        offset = SNU_FILM_OFFSETS[level]
        samples = []
        self.n_skipped = 0
        for n, line in enumerate(lines, 1):
            paths = []
            for rel in line.split():
                p = _resolve_under(root, rel)
                if p is None:
                    raise _layout_error(f"frame {rel!r} of line {n} in {list_file} not found under", root,
                                        self.LAYOUT)
                paths.append(p)
            first, middle, last = paths
            if kind == "triplet":
                samples.append((first, last, middle))
                continue
            before, after = self._renumbered(first, -offset), self._renumbered(first, 2 * offset)
            if before.is_file() and after.is_file():
                samples.append((before, first, last, after, middle))
            else:
                self.n_skipped += 1
        if not samples:
            raise _layout_error(f"every line of {list_file} lacks the frames {offset} before and "
                                f"{2 * offset} after its first frame; no quintuplet in", root, self.LAYOUT)
        super().__init__(samples, transform=transform, name=f"snufilm_{level}")

    def _renumbered(self, frame: Path, delta: int) -> Path:
        """``frame`` with its number moved by ``delta``, zero-padded to the same width."""
        m = re.fullmatch(r"(.*?)(\d+)", frame.stem)
        if m is None:
            raise _layout_error("SNU-FILM frame names must end in a frame number", frame, self.LAYOUT)
        prefix, digits = m.groups()
        number = int(digits) + delta
        if number < 0:
            return frame.with_name(f"{prefix}-{-number}{frame.suffix}")  # no such file: the line is skipped
        return frame.with_name(f"{prefix}{number:0{len(digits)}d}{frame.suffix}")


# ------------------------------------------------------------------------------------------ Middlebury

class MiddleburyOther(FrameTupleDataset):
    """Middlebury "other" sequences with ground truth (12): inputs frame10, frame11, target frame10i11."""

    LAYOUT = """
<root>/other-data/<sequence>/frame10.png frame11.png
<root>/other-gt-interp/<sequence>/frame10i11.png   (sequences without ground truth are skipped)"""

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None):
        root = _require_dir(Path(root), self.LAYOUT)
        data = _require_dir(root / "other-data", self.LAYOUT, "other-data folder not found")
        gt = _require_dir(root / "other-gt-interp", self.LAYOUT, "other-gt-interp folder not found")
        samples = []
        for seq in _subfolders(gt):
            target = seq / "frame10i11.png"
            if not target.is_file():
                continue
            s = (data / seq.name / "frame10.png", data / seq.name / "frame11.png", target)
            _check_files(s, self.LAYOUT)
            samples.append(s)
        if not samples:
            raise _layout_error("no sequence with frame10i11.png found in", gt, self.LAYOUT)
        super().__init__(samples, transform=transform, name="middlebury_other")


# ------------------------------------------------------------------------------------- frames and video

class FrameFolder(FrameTupleDataset):
    """Any folder of frames (image files, name order): every window of :func:`sample_windows`."""

    LAYOUT = """
<root>/<any name with a number>.png|jpg|...   consecutive frames of one shot, in natural name order"""

    def __init__(self, root: str | os.PathLike, kind: str = "triplet", step: int = 1,
                 transform: Callable | None = None):
        root = _require_dir(Path(root), self.LAYOUT)
        frames = _image_files(root)
        windows = sample_windows(len(frames), kind, step)
        if not windows:
            raise _layout_error(f"too few frames ({len(frames)}) for one {kind} in", root, self.LAYOUT)
        super().__init__([tuple(frames[i] for i in w) for w in windows], transform=transform,
                         name=f"frames:{root.name}")


class VideoFrames(FrameTupleDataset):
    """Any video file (decoded with PyAV into memory): windows within each clean segment.

    With ``clean=True`` scene cuts split the clip and repeated frames are dropped
    (:func:`compresskit_vfi.data.video.clean_segments`), so no sample straddles a cut.
    """

    LAYOUT = "a video file PyAV can decode (mp4, mkv, avi, mov, webm, ...)"

    def __init__(self, path: str | os.PathLike, kind: str = "triplet", step: int = 1, clean: bool = True,
                 max_frames: int | None = None, transform: Callable | None = None):
        from compresskit_vfi.data.video import clean_segments, read_video

        check_kind(kind)
        frames = read_video(path, max_frames)
        segments = clean_segments(frames) if clean else [list(range(len(frames)))]
        samples = [tuple((0, seg[i]) for i in w)
                   for seg in segments for w in sample_windows(len(seg), kind, step)]
        if not samples:
            raise ValueError(f"video {str(path)!r}: too few continuous frames for one {kind}")
        self.frames = frames
        super().__init__(samples, loader=ArrayLoader([frames]), transform=transform,
                         name=f"video:{Path(path).name}")


# ------------------------------------------------------------------------------------------- registry

def _snu(level: str) -> Callable[..., FrameTupleDataset]:
    def make(root: str | os.PathLike, **kw: Any) -> FrameTupleDataset:
        return SNUFILM(root, level=level, **kw)

    make.__doc__ = f"SNU-FILM {level}"
    return make


#: dataset name -> factory(data_dir, **kwargs)
DATASETS: dict[str, Callable[..., Dataset]] = {
    "vimeo_triplet": Vimeo90KTriplet,
    "vimeo_septuplet": Vimeo90KSeptuplet,
    "bvi_dvc": BVIDVCQuintuplets,
    "ucf101_qvi": UCF101QVI,
    "ucf101_dvf": UCF101DVF,
    "davis90": DAVIS90,
    **{f"snufilm_{lvl}": _snu(lvl) for lvl in SNU_FILM_OFFSETS},
    "middlebury_other": MiddleburyOther,
    "frames": FrameFolder,
    "video": VideoFrames,
}


def create_dataset(name: str, data_dir: str | os.PathLike | None = None, **kwargs: Any) -> Dataset:
    """Build dataset ``name`` (see ``DATASETS``; ``"sample"`` = the embedded clips) from ``data_dir``."""
    if name == "sample":
        from compresskit_vfi.data.samples import sample_dataset

        if data_dir is not None:
            raise ValueError("dataset 'sample' takes no data_dir (it uses the embedded sample clips)")
        return sample_dataset(**kwargs)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted([*DATASETS, 'sample'])}")
    if data_dir is None:
        raise ValueError(f"dataset {name!r} needs a data_dir (its root folder or file)")
    return DATASETS[name](data_dir, **kwargs)
