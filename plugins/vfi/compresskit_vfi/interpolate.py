"""Frame-rate up-conversion of a whole video with any VFI model: ×2, ×4, ×8 (recursive), tiled if needed.

×2 puts one predicted frame between every pair of neighbours (N frames → 2N − 1). ×4 and ×8 apply ×2
again to the result, as the papers do, so a frame at t + ¼ is predicted from t and the predicted t + ½.
The levels are chained generators, so only a few frames are held in memory at any time.

Two-input models (AdaCoF, CDFI) get ``(f_t, f_{t+1})``; four-input models (ST-MFNet) get
``(f_{t−1}, f_t, f_{t+1}, f_{t+2})``. At the ends of the clip a four-input model lacks a neighbour:
``ends="copy"`` (the default, as the published ST-MFNet ``interpolate_yuv.py`` does) writes a copy of the
first frame between the first two frames and a copy of the last frame between the last two, and runs no
model there; ``ends="predict"`` predicts them with the missing neighbour replaced by the pair's own
frame. At scene cuts the outer neighbours are replicated the same way.

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

import contextlib
import inspect
import itertools
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
    "make_runner",
    "background",
    "ENDS",
    "RUNTIMES",
    "frame_tensor",
    "frame_uint8",
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


ENDS = ("copy", "predict")


def _double(items: Iterator[_Item], predict: Callable[[list[torch.Tensor]], torch.Tensor],
            n_inputs: int, ends: str = "copy") -> Iterator[_Item]:
    """One ×2 level: f0, mid(f0,f1), f1, mid(f1,f2), f2, ...; across a cut mid repeats the earlier frame;
    with ``ends="copy"`` a four-input model's first mid copies f0 and its last copies the last frame."""
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
            elif ends == "copy" and prev is None:  # the clip's first pair: the published script's copy
                yield cur
                yield frame, False, True
                prev, cur, nxt = cur, nxt, after
                continue
            elif ends == "copy" and after is None:  # the clip's last pair: a copy of the last frame
                mid = nxt[0]
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
                       cuts: list[int] | None = None, ends: str = "copy") -> Iterator[torch.Tensor]:
    """Yield the up-converted sequence: the input frames (B, 3, H, W) with ``factor − 1`` between each pair.

    Frames are passed through unchanged; predictions are clamped to [0, 1]. Runs under
    ``torch.inference_mode``. ``model`` may be any callable of the frames (e.g. :class:`Runner`).
    ``cut_threshold``: histogram distance that marks a scene cut (None: no detection); across a cut the
    inserted frames repeat the frame before it. The indices ``i`` of the cuts found (between input frame
    ``i`` and ``i+1``) are appended to ``cuts`` when a list is given. ``ends``: ``"copy"`` (published)
    or ``"predict"``: what a four-input model puts between the first two and between the last two frames
    (see the module docstring; a two-input model always predicts them).
    """
    if factor not in FACTORS:
        raise ValueError(f"factor must be one of {FACTORS}, got {factor!r}")
    if ends not in ENDS:
        raise ValueError(f"ends must be one of {ENDS}, got {ends!r}")
    if cut_threshold is not None and not 0 <= cut_threshold <= 1:
        raise ValueError(f"cut_threshold must be a histogram distance in [0, 1] or None, got {cut_threshold}")
    n = n_inputs or getattr(model, "n_inputs", None) or model_num_inputs(model)

    forward = make_predictor(model, tile, overlap)

    @torch.inference_mode()
    def predict(inputs: list[torch.Tensor]) -> torch.Tensor:
        return forward(inputs).clamp(0, 1)

    stream: Iterator[_Item] = _flag_cuts(frames, cut_threshold, cuts)
    for _ in range(factor.bit_length() - 1):
        stream = _double(stream, predict, n, ends)
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


def background(iterable: Iterable[Any], depth: int = 4) -> Iterator[Any]:
    """Iterate ``iterable`` in a thread of its own, up to ``depth`` items ahead (decoding, or the model,
    overlaps with what the consumer does); its exceptions are raised in the consumer. Closing the
    returned generator stops the thread."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in iterable:
                if not put((True, item)):
                    break
            else:
                put((True, done))
        except BaseException as e:  # handed to the consumer
            put((False, e))
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:  # in this thread, which iterated it: stops the stages before it
                close()

    thread = threading.Thread(target=work, daemon=True, name="compresskit-vfi-io")
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()


def frame_tensor(image: Any, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (H, W, 3) → float32 (1, 3, H, W) in [0, 1], the values of ``to_tensor`` (x / 255) but
    *channels-last* in memory: the decoded array is viewed, not transposed, so the one float conversion
    is the only copy, and a channels-last model takes the frame as it is."""
    from compresskit_vfi.data.transforms import to_tensor

    if getattr(image, "dtype", None) is None or image.ndim != 3 or image.shape[2] != 3:
        return to_tensor(image).unsqueeze(0).to(device)  # its error names what was expected
    hwc = torch.from_numpy(image if image.flags.writeable else image.copy())
    return hwc.to(device).permute(2, 0, 1).unsqueeze(0).to(torch.float32).div_(255.0)


def frame_uint8(frame: torch.Tensor) -> Any:
    """float (3, H, W) → uint8 (H, W, 3): ``to_uint8``'s round(clamp(x)·255) in one fresh buffer, the
    array a view of it when the frame is channels-last (no transposing copy before the encoder)."""
    q = frame.detach().float().clamp(0, 1).mul_(255).round_().to(torch.uint8)
    return q.permute(1, 2, 0).cpu().numpy()


RUNTIMES = ("eager", "onnx")


def make_runner(model: nn.Module, first: torch.Tensor, runtime: str = "eager", layout: str = "auto",
                onnx_path: str | os.PathLike | None = None) -> Any:
    """The :class:`~compresskit_vfi.runtime.Runner` ``interpolate_video`` uses: ONNX Runtime, or eager
    PyTorch in ``layout`` (``"auto"``: the faster of NCHW and channels-last, timed on the first real
    predictions, :func:`~compresskit_vfi.runtime.adaptive_eager`); ``first`` is the clip's first frame
    (its size sets the ONNX export)."""
    from compresskit_vfi import runtime as rt

    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if layout not in ("auto", *rt.LAYOUTS):
        raise ValueError(f"layout must be 'auto' or one of {rt.LAYOUTS}, got {layout!r}")
    n = model_num_inputs(model)
    if runtime == "onnx":
        return rt.onnx_runner(model, tuple(first.shape), n, path=onnx_path)
    if layout == "auto":
        return rt.adaptive_eager(model, n)
    return rt.eager_runner(model, layout, n)


def interpolate_video(input: str | os.PathLike, output: str | os.PathLike, model: nn.Module,
                      factor: int = 2, tile: int | Sequence[int] | str | None = None, overlap: int = 32,
                      device: str | torch.device = "cpu", fps: float | None = None, codec: str | None = None,
                      crf: int = 18, progress: bool = True, cut_threshold: float | None = CUT_THRESHOLD,
                      audio: bool = True, console: Any = None, runtime: str = "eager", layout: str = "auto",
                      ends: str = "copy", overlap_io: bool = True,
                      onnx_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Up-convert the video (or frame folder) ``input`` by ``factor`` into the video file ``output``.

    The output frame rate is ``factor`` × the input's (``fps`` overrides the input rate). Scene cuts are
    detected (``cut_threshold``, see :func:`interpolate_frames`; None: off) and frames repeated across
    them. ``audio``: copy the input's audio stream into the output (remuxed, not re-encoded). A frame of
    odd size is encoded 4:2:0 padded to even (see :func:`compresskit_vfi.data.video.write_video`). The
    output is written atomically: an error at any point leaves no output file. ``progress`` shows a rich
    bar with frames/s. ``runtime``/``layout``: how the model runs (:func:`make_runner`; the eager default
    times NCHW against channels-last on the first predictions and keeps the faster); ``ends``: see
    :func:`interpolate_frames`; ``overlap_io``: decode, predict and encode in three threads at once.
    Returns a summary dict (``cuts``: input indices ``i`` with a cut after frame ``i``; ``runtime``: how
    the model ran; ``frames_per_second``: output frames per second of wall time, decoding and encoding
    included; ``cpu_seconds``: the CPU time of the process over the same span, all threads, which
    other jobs on a shared machine do not inflate).
    """
    from compresskit_vfi.data.video import has_audio, write_video

    if factor not in FACTORS:
        raise ValueError(f"factor must be one of {FACTORS}, got {factor!r}")
    if ends not in ENDS:
        raise ValueError(f"ends must be one of {ENDS}, got {ends!r}")
    input, output = Path(input), Path(output)
    if not input.exists():
        raise FileNotFoundError(f"input {str(input)!r} does not exist")
    if input.resolve() == output.resolve():
        raise ValueError("output must differ from input")
    frames, n_in, rate = _input_frames(input, fps)
    device = torch.device(device)
    model = model.to(device).eval()
    cuts: list[int] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    tensors: Iterator[torch.Tensor] = (frame_tensor(f, device) for f in frames)
    threads: list[Any] = []  # the background generators, closed (threads stopped) at the end
    if overlap_io:
        tensors = background(tensors)
        threads.append(tensors)
    try:
        first = next(tensors, None)
        if first is None:
            raise ValueError(f"input {str(input)!r} has no frames")
        runner = make_runner(model, first, runtime, layout, onnx_path)
        tensors = itertools.chain([first], tensors)
        out_frames: Iterator[Any] = (frame_uint8(t[0]) for t in interpolate_frames(
            runner, tensors, factor, tile, overlap, n_inputs=runner.n_inputs, cut_threshold=cut_threshold,
            cuts=cuts, ends=ends))
        if overlap_io:
            out_frames = background(out_frames)
            threads.append(out_frames)
        total = (n_in - 1) * factor + 1 if n_in > 1 else None
        audio_from = input if audio and input.is_file() else None

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
    finally:
        for it in reversed(threads):
            with contextlib.suppress(ValueError):  # still running in the model's thread: it stops itself
                it.close()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    n_read = (written - 1) // factor + 1
    return {"input": str(input), "output": str(output), "factor": factor, "frames_in": n_read,
            "frames_out": written, "fps_in": float(rate), "fps_out": float(rate * factor),
            "seconds": seconds, "frames_per_second": written / seconds if seconds > 0 else float("inf"),
            "cpu_seconds": cpu_seconds,
            "cuts": cuts, "audio": audio_from is not None and has_audio(input), "runtime": runner.name,
            "layout_ms": runner.info.get("ms"), "ends": ends}
