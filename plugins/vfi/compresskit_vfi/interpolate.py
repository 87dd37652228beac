"""Frame-rate up-conversion of a whole video with any VFI model: ×2, ×4, ×8 (recursive), tiled if needed.

×2 puts one predicted frame between every pair of neighbours (N frames → 2N − 1). ×4 and ×8 apply ×2
again to the result, as the papers do, so a frame at t + ¼ is predicted from t and the predicted t + ½.
The levels are chained generators, so only a few frames are held in memory at any time.

Two-input models (AdaCoF, CDFI) get ``(f_t, f_{t+1})``; four-input models (ST-MFNet) get
``(f_{t−1}, f_t, f_{t+1}, f_{t+2})``, the outer neighbours replicated at the ends of the clip and at
scene cuts.

Scene cuts: a model blending the last frame of one shot with the first of the next makes a ghosted
frame. A cut is detected between neighbouring input frames when the total-variation distance of their
8×8×8-bin RGB histograms exceeds ``cut_threshold`` (default 0.2, :func:`compresskit_vfi.data.video.
histogram_distance`, the detector that finds the five cuts of the ``bikes`` sample clip and no motion).
Across a cut every inserted frame repeats the frame before the cut (so the cut stays at the same time)
and no model runs; a four-input model never sees a neighbour from the other side of a cut.

Tiled inference splits a frame into ``tile``-sized cores; each core is predicted from a crop enlarged by
``overlap`` pixels on every side (clipped at the frame border) and only the core is kept. For a model
whose output at a pixel depends only on inputs within ``overlap`` pixels (e.g. a conv net whose receptive
field radius is at most the overlap), the tiled result equals the untiled one. ``tile="auto"`` predicts
whole frames and falls back to tiles, halved until they fit, when a frame runs out of memory.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from torch import nn

__all__ = [
    "FACTORS",
    "model_num_inputs",
    "tiled_forward",
    "AutoTiler",
    "make_predictor",
    "interpolate_frames",
    "interpolate_video",
]

FACTORS = (2, 4, 8)


def model_num_inputs(model: nn.Module) -> int:
    """Number of frames ``model.forward`` takes (required positional parameters): 2 or 4."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return 2
    required = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                and p.default is p.empty]
    if any(p.kind == p.VAR_POSITIONAL for p in params) and not required:
        return 2
    if len(required) not in (2, 4):
        raise ValueError(f"{type(model).__name__}.forward takes {len(required)} required inputs; "
                         "a VFI model takes 2 frames (AdaCoF-style) or 4 frames (ST-MFNet-style)")
    return len(required)


def _pair(v: int | Sequence[int], name: str) -> tuple[int, int]:
    a, b = (v, v) if isinstance(v, int) else tuple(v)
    if a <= 0 or b <= 0:
        raise ValueError(f"{name} must be positive, got {v!r}")
    return int(a), int(b)


def tiled_forward(model: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor],
                  tile: int | Sequence[int] | None = None, overlap: int = 32) -> torch.Tensor:
    """``model(*inputs)`` computed tile by tile: cores of ``tile`` pixels, each with ``overlap`` context.

    ``inputs`` are (B, C, H, W) frames of one size; the output must have the inputs' spatial size.
    """
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    H, W = inputs[0].shape[-2:]
    if tile is None:
        return model(*inputs)
    th, tw = _pair(tile, "tile")
    if th >= H and tw >= W:
        return model(*inputs)
    out: torch.Tensor | None = None
    for y0 in range(0, H, th):
        y1 = min(y0 + th, H)
        ya, yb = max(0, y0 - overlap), min(H, y1 + overlap)
        for x0 in range(0, W, tw):
            x1 = min(x0 + tw, W)
            xa, xb = max(0, x0 - overlap), min(W, x1 + overlap)
            pred = model(*[t[..., ya:yb, xa:xb] for t in inputs])
            if pred.shape[-2:] != (yb - ya, xb - xa):
                raise ValueError(f"tiled_forward: the model returned {tuple(pred.shape)} for a "
                                 f"{yb - ya}x{xb - xa} tile; expected the input's spatial size")
            if out is None:
                out = pred.new_empty((*pred.shape[:-2], H, W))
            out[..., y0:y1, x0:x1] = pred[..., y0 - ya:y1 - ya, x0 - xa:x1 - xa]
    assert out is not None
    return out


def _is_out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


class AutoTiler:
    """Predict whole frames while they fit; on out-of-memory retry with tiles halved until they do.

    The tile size found is kept for the following frames. ``min_tile`` bounds the search.
    """

    def __init__(self, model: Callable[..., torch.Tensor], overlap: int = 32, min_tile: int = 64):
        self.model, self.overlap, self.min_tile = model, overlap, min_tile
        self.tile: int | None = None

    def __call__(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        while True:
            try:
                return tiled_forward(self.model, inputs, self.tile, self.overlap)
            except Exception as e:
                if not _is_out_of_memory(e):
                    raise
                current = self.tile or max(inputs[0].shape[-2:])
                if current // 2 < self.min_tile:
                    raise RuntimeError(f"out of memory even with {current}-pixel tiles "
                                       f"(overlap {self.overlap})") from e
                self.tile = current // 2
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()


def make_predictor(model: Callable[..., torch.Tensor], tile: int | Sequence[int] | str | None = None,
                   overlap: int = 32) -> Callable[[Sequence[torch.Tensor]], torch.Tensor]:
    """``predict(inputs)``: whole frames (None), fixed tiles (pixels) or ``"auto"`` (:class:`AutoTiler`)."""
    if tile == "auto":
        return AutoTiler(model, overlap)
    if isinstance(tile, str):
        raise ValueError(f"tile must be None, a size in pixels or 'auto', got {tile!r}")
    if tile is not None:
        _pair(tile, "tile")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    return lambda inputs: tiled_forward(model, inputs, tile, overlap)


# A stream item is (frame, cut_after, repeat): ``cut_after`` marks a scene cut between this frame and the
# next; ``repeat`` marks a frame that is a copy of the previous one (inserted across a cut).
_Item = tuple[torch.Tensor, bool, bool]

#: histogram distance above which two neighbouring frames are taken to lie on either side of a scene cut
CUT_THRESHOLD = 0.2


def _double(items: Iterator[_Item], predict: Callable[[list[torch.Tensor]], torch.Tensor],
            n_inputs: int) -> Iterator[_Item]:
    """One ×2 level: f0, mid(f0,f1), f1, mid(f1,f2), f2, ...; across a cut mid repeats the earlier frame."""
    cur = next(items, None)
    nxt = next(items, None) if cur is not None else None
    prev: _Item | None = None
    while cur is not None:
        if nxt is None:
            yield cur
            return
        after = next(items, None)
        frame, cut, _ = cur
        if cut or nxt[2]:  # a scene cut after cur, or nxt copies cur: repeat, no model
            yield frame, False, cur[2]
            yield frame, cut, True
        else:
            if n_inputs == 2:
                mid = predict([frame, nxt[0]])
            else:  # neighbours from across a cut (or beyond the clip) are replaced by the pair's own frames
                before = frame if prev is None or prev[1] else prev[0]
                beyond = nxt[0] if after is None or nxt[1] else after[0]
                mid = predict([before, frame, nxt[0], beyond])
            yield cur
            yield mid, False, False
        prev, cur, nxt = cur, nxt, after


def _flag_cuts(frames: Iterable[torch.Tensor], threshold: float | None,
               found: list[int] | None) -> Iterator[_Item]:
    """Frames as stream items with their cut flags (one frame of look-ahead); cut indices go to ``found``."""
    from compresskit_vfi.data.video import color_histogram, histogram_distance

    def hist(t: torch.Tensor) -> Any:
        u8 = t.detach().clamp(0, 1).mul(255).round().to(torch.uint8)
        return color_histogram(u8.movedim(-3, -1).cpu().numpy())

    it = iter(frames)
    cur = next(it, None)
    h_cur = hist(cur) if cur is not None and threshold is not None else None
    index = 0
    while cur is not None:
        nxt = next(it, None)
        cut = False
        if nxt is not None and threshold is not None:
            h_nxt = hist(nxt)
            cut = histogram_distance(h_cur, h_nxt) > threshold
            h_cur = h_nxt
            if cut and found is not None:
                found.append(index)
        yield cur, cut, False
        cur, index = nxt, index + 1


def interpolate_frames(model: nn.Module, frames: Iterable[torch.Tensor], factor: int = 2,
                       tile: int | Sequence[int] | str | None = None, overlap: int = 32,
                       n_inputs: int | None = None, cut_threshold: float | None = CUT_THRESHOLD,
                       cuts: list[int] | None = None) -> Iterator[torch.Tensor]:
    """Yield the up-converted sequence: the input frames (B, 3, H, W) with ``factor − 1`` between each pair.

    Frames are passed through unchanged; predictions are clamped to [0, 1]. Runs under no_grad.
    ``cut_threshold``: histogram distance that marks a scene cut (None: no detection); across a cut the
    inserted frames repeat the frame before it. The indices ``i`` of the cuts found (between input frame
    ``i`` and ``i+1``) are appended to ``cuts`` when a list is given.
    """
    if factor not in FACTORS:
        raise ValueError(f"factor must be one of {FACTORS}, got {factor!r}")
    if cut_threshold is not None and not 0 <= cut_threshold <= 1:
        raise ValueError(f"cut_threshold must be a histogram distance in [0, 1] or None, got {cut_threshold}")
    n = n_inputs or model_num_inputs(model)

    forward = make_predictor(model, tile, overlap)

    @torch.no_grad()
    def predict(inputs: list[torch.Tensor]) -> torch.Tensor:
        return forward(inputs).clamp(0, 1)

    stream: Iterator[_Item] = _flag_cuts(frames, cut_threshold, cuts)
    for _ in range(factor.bit_length() - 1):
        stream = _double(stream, predict, n)
    return (item[0] for item in stream)


class RateColumn(ProgressColumn):
    """Frames per second of a rich progress task."""

    def render(self, task: Any) -> Text:
        return Text(f"{task.speed:.2f} frames/s" if task.speed else "- frames/s")


def progress_bar(label: str, console: Any = None) -> Progress:
    """A rich progress bar with count, rate (frames/s) and ETA."""
    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                    TimeRemainingColumn(), console=console)


def _input_frames(path: Path, fps: float | None) -> tuple[Iterator[Any], int, Fraction]:
    """uint8 frames of a video file or a folder of images, their count (0 if unknown) and rate."""
    from compresskit_vfi.data.datasets import IMAGE_SUFFIXES, _image_files, read_image
    from compresskit_vfi.data.video import iter_video_frames, video_info

    if path.is_dir():
        files = _image_files(path)
        if not files:
            raise ValueError(f"input folder {str(path)!r} contains no image files "
                             f"({', '.join(IMAGE_SUFFIXES)})")
        return (read_image(f) for f in files), len(files), Fraction(fps or 25).limit_denominator(100000)
    info = video_info(path)
    rate = Fraction(fps).limit_denominator(100000) if fps else info.fps
    return iter_video_frames(path), info.estimated_frames, rate


def interpolate_video(input: str | os.PathLike, output: str | os.PathLike, model: nn.Module,
                      factor: int = 2, tile: int | Sequence[int] | str | None = None, overlap: int = 32,
                      device: str | torch.device = "cpu", fps: float | None = None, codec: str | None = None,
                      crf: int = 18, progress: bool = True, cut_threshold: float | None = CUT_THRESHOLD,
                      audio: bool = True, console: Any = None) -> dict[str, Any]:
    """Up-convert the video (or frame folder) ``input`` by ``factor`` into the video file ``output``.

    The output frame rate is ``factor`` × the input's (``fps`` overrides the input rate). Scene cuts are
    detected (``cut_threshold``, see :func:`interpolate_frames`; None: off) and frames repeated across
    them. ``audio``: copy the input's audio stream into the output (remuxed, not re-encoded). A frame of
    odd size is encoded 4:2:0 padded to even (see :func:`compresskit_vfi.data.video.write_video`). The
    output is written atomically: an error at any point leaves no output file. ``progress`` shows a rich
    bar with frames/s. Returns a summary dict (``cuts``: input indices ``i`` with a cut after frame ``i``).
    """
    from compresskit_vfi.data.transforms import to_tensor, to_uint8
    from compresskit_vfi.data.video import has_audio, write_video

    if factor not in FACTORS:
        raise ValueError(f"factor must be one of {FACTORS}, got {factor!r}")
    input, output = Path(input), Path(output)
    if not input.exists():
        raise FileNotFoundError(f"input {str(input)!r} does not exist")
    if input.resolve() == output.resolve():
        raise ValueError("output must differ from input")
    frames, n_in, rate = _input_frames(input, fps)
    device = torch.device(device)
    model = model.to(device).eval()
    cuts: list[int] = []
    tensors = (to_tensor(f).unsqueeze(0).to(device) for f in frames)
    out_frames = (to_uint8(t[0]) for t in interpolate_frames(model, tensors, factor, tile, overlap,
                                                             cut_threshold=cut_threshold, cuts=cuts))
    total = (n_in - 1) * factor + 1 if n_in > 1 else None
    audio_from = input if audio and input.is_file() else None
    start = time.perf_counter()

    def write(it: Iterator[Any]) -> int:
        return write_video(it, output, fps=rate * factor, codec=codec, crf=crf, audio_from=audio_from)

    if progress:
        with progress_bar(f"interpolate ×{factor}", console) as bar:
            task = bar.add_task("frames", total=total)

            def counted(it: Iterator[Any]) -> Iterator[Any]:
                for f in it:
                    yield f
                    bar.advance(task)

            written = write(counted(out_frames))
    else:
        written = write(out_frames)
    seconds = time.perf_counter() - start
    n_read = (written - 1) // factor + 1
    return {"input": str(input), "output": str(output), "factor": factor, "frames_in": n_read,
            "frames_out": written, "fps_in": float(rate), "fps_out": float(rate * factor),
            "seconds": seconds, "frames_per_second": written / seconds if seconds > 0 else float("inf"),
            "cuts": cuts, "audio": audio_from is not None and has_audio(input)}
