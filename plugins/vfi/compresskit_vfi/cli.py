"""``compresskit-vfi``: score VFI models the papers' way, and up-convert videos with them.

Every error is reported as one line on stderr with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

PROG = "compresskit-vfi"

EVALUATE_EXAMPLES = """examples:
  # ST-MFNet Mini against ST-MFNet on UCF101 (QVI) and the four SNU-FILM levels
  compresskit-vfi evaluate --model stmfnet --checkpoint stmfnet.pth \\
      --model stmfnet_mini --checkpoint stmfnet_mini.pth \\
      --dataset ucf101_qvi --data-dir data/ucf101 --dataset snufilm --data-dir data/SNU-FILM

  # CDFI convention (skimage SSIM, LPIPS) on Middlebury "other"
  compresskit-vfi evaluate --model cdfi --checkpoint cdfi.pth --convention cdfi --lpips \\
      --dataset middlebury_other --data-dir data/middlebury

  # a quick look on the embedded sample clips (no data to download)
  compresskit-vfi evaluate --model adacof --checkpoint adacof.pth --dataset sample --limit 10

datasets: sample, vimeo_triplet, vimeo_septuplet, ucf101_qvi, ucf101_dvf, davis90, snufilm (all four
levels) or snufilm_easy/medium/hard/extreme, middlebury_other, bvi_dvc, frames (a folder of frames),
video (a video file). One --data-dir serves every --dataset, or give one per dataset in order.
Writes results.json and psnr_vs_params_<dataset>.png to --out.
"""

INTERPOLATE_EXAMPLES = """examples:
  # official weights of a registered model
  compresskit-vfi interpolate in.mp4 out_x2.mp4 --model cdfi --checkpoint cdfi.pth
  compresskit-vfi interpolate in.mp4 out_x8.mp4 --model stmfnet_mini --checkpoint mini.pth --factor 8
  # a model written by compress (compressed.pt) or the demo (compressed_model.pt): no --model needed
  compresskit-vfi interpolate in.mp4 out_x2.mp4 --checkpoint runs/demo/compressed_model.pt
  # 4K input: predict in 512-pixel tiles with 64 pixels of context on each side
  compresskit-vfi interpolate in_4k.mp4 out.mp4 --model cdfi --checkpoint cdfi.pth --tile 512 --overlap 64

IN is a video file or a folder of frames (then --fps sets its rate, default 25); OUT is a video file
(.mp4 .mkv .mov .avi .webm), encoded with PyAV at factor x the input frame rate, 4:2:0 (a frame of odd
size is padded to even by repeating its last row/column). The input's audio stream is copied unchanged
(--no-audio drops it). At a scene cut (RGB-histogram distance of neighbours above --cut-threshold, 0.2)
the inserted frames repeat the frame before the cut instead of blending two shots. OUT appears only
when the whole video was written. The model runs in its faster memory layout (NCHW or channels-last,
timed on the first predictions) under torch.inference_mode, with decoding and encoding in threads of their
own; --runtime onnx runs the exported, checked ONNX file in ONNX Runtime instead. frames/s is printed.
"""


class CLIError(Exception):
    """A user error, reported as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _tile(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of pixels or 'auto', got {value!r}")
    return size


def _cut_threshold(value: str) -> float:
    try:
        d = float(value)
    except ValueError:
        d = -1.0
    if not 0 <= d <= 1:
        raise argparse.ArgumentTypeError(f"expected a histogram distance in [0, 1], got {value!r}")
    return d


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG,
                     description="Evaluate video frame interpolation models and interpolate videos.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ev = sub.add_parser("evaluate", help="PSNR/SSIM per test set, runtime, parameters, MACs",
                        description="Score models the papers' way: a rich table, results.json and a "
                                    "PSNR-vs-parameters PNG per test set.",
                        epilog=EVALUATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("--model", action="append", required=True, metavar="NAME",
                    help="registered model name (repeat for several models side by side)")
    ev.add_argument("--checkpoint", action="append", default=[], metavar="PATH",
                    help="checkpoint for each --model, in order ('-' for none)")
    ev.add_argument("--label", action="append", default=[], metavar="LABEL",
                    help="display name for each --model, in order")
    ev.add_argument("--dataset", action="append", required=True, metavar="NAME", help="test set (repeatable)")
    ev.add_argument("--data-dir", action="append", default=[], metavar="DIR",
                    help="root folder (or file) of the datasets: one for all, or one per --dataset")
    ev.add_argument("--convention", choices=("stmfnet", "cdfi"), default="stmfnet",
                    help="SSIM convention: 3-D Gaussian (stmfnet) or skimage 7x7 (cdfi)")
    ev.add_argument("--lpips", action="store_true", help="also score LPIPS (needs lpips and its weights)")
    ev.add_argument("--limit", type=int, default=None, metavar="N", help="score only N samples per set")
    ev.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    ev.add_argument("--no-runtime", action="store_true", help="skip timing a 480p frame")
    ev.add_argument("--runtime-repeats", type=int, default=3, metavar="N")
    ev.add_argument("--no-macs", action="store_true", help="skip counting MACs")
    ev.add_argument("--tile", type=_tile, default=None, metavar="PX|auto",
                    help="predict in tiles of PX pixels, or 'auto' (tiles only when out of memory)")
    ev.add_argument("--overlap", type=int, default=32, metavar="PX", help="context around each tile")
    ev.add_argument("--out", default="vfi_eval", metavar="DIR", help="output folder (default: vfi_eval)")
    ev.add_argument("--no-progress", action="store_true")
    ev.add_argument("--trusted", action="store_true",
                    help="unpickle a compressed --checkpoint that needs it; only for files you trust")
    ev.add_argument("--random-weights", action="store_true",
                    help="score a --model without --checkpoint with random weights (testing only)")

    ip = sub.add_parser("interpolate", help="up-convert a video by 2, 4 or 8",
                        description="Insert factor-1 predicted frames between every pair of frames.",
                        epilog=INTERPOLATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ip.add_argument("input", metavar="IN", help="input video file or folder of frames")
    ip.add_argument("output", metavar="OUT", help="output video file")
    ip.add_argument("--model", default=None, metavar="NAME",
                    help="registered model name (needed for official weights; optional for a file "
                         "written by compress, whose model it must match)")
    ip.add_argument("--checkpoint", default=None, metavar="PATH",
                    help="official weights of --model, or a file written by compress (compressed.pt, "
                         "compressed_model.pt), loaded with compresskit.load")
    ip.add_argument("--random-weights", action="store_true",
                    help="run --model with random weights when no --checkpoint is given (testing only)")
    ip.add_argument("--factor", default="2", metavar="{2,4,8}", help="frame-rate factor (default 2)")
    ip.add_argument("--tile", type=_tile, default=None, metavar="PX|auto",
                    help="predict in tiles of PX pixels, or 'auto' (tiles only when out of memory)")
    ip.add_argument("--overlap", type=int, default=32, metavar="PX", help="context around each tile")
    ip.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    ip.add_argument("--fps", type=float, default=None, help="input frame rate (default: the file's, or 25)")
    ip.add_argument("--codec", default=None, help="video codec (default: libx264; mpeg4 for .avi)")
    ip.add_argument("--crf", type=int, default=18, help="x264 quality, lower is better (default 18)")
    ip.add_argument("--cut-threshold", type=_cut_threshold, default=0.2, metavar="D",
                    help="RGB-histogram distance in [0, 1] above which neighbours are a scene cut "
                         "(default 0.2)")
    ip.add_argument("--no-cut-detection", action="store_true", help="interpolate across scene cuts too")
    ip.add_argument("--no-audio", action="store_true", help="do not copy the input's audio stream")
    ip.add_argument("--runtime", choices=("eager", "onnx"), default="eager",
                    help="eager PyTorch (default), or ONNX Runtime on the model exported and checked "
                         "first (needs pip install 'compresskit[onnx]')")
    ip.add_argument("--layout", choices=("auto", "nchw", "channels_last"), default="auto",
                    help="eager memory layout; auto (default) times both on the first predictions and "
                         "keeps the faster")
    ip.add_argument("--ends", choices=("copy", "predict"), default="copy",
                    help="four-input models at the clip's ends: copy the first/last frame as the "
                         "published ST-MFNet script does (default), or predict from duplicated neighbours")
    ip.add_argument("--onnx-out", default=None, metavar="FILE.onnx",
                    help="with --runtime onnx: keep the exported file here")
    ip.add_argument("--no-progress", action="store_true")
    ip.add_argument("--trusted", action="store_true",
                    help="unpickle a compressed --checkpoint that needs it; only for files you trust")
    return parser


def _compressed_spec(path: Path) -> dict[str, Any] | None:
    """The contents of ``path`` if it is a file written by ``CompressResult.save``, else None.

    A file that only the full unpickler reads (a compressed model compress could not register) is
    recognised by ``compresskit.load`` itself: ``{}`` is returned for it.
    """
    import torch

    from compresskit.saving import FILE_FORMATS

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return {}  # not a plain weights file: let compresskit.load decide
    if isinstance(data, dict) and data.get("format") in FILE_FORMATS:
        return data
    return None


def _create_model(name: str | None, checkpoint: str | None, trusted: bool = False) -> Any:
    """``--model``/``--checkpoint`` as a model: a compress file via ``ck.load`` (unpickling only with
    ``--trusted``), else ``ck.create_model``."""
    import compresskit as ck
    from compresskit.saving import UnsafeFileError

    if checkpoint is not None and not Path(checkpoint).is_file():
        raise CLIError(f"--checkpoint {checkpoint!r} does not exist")
    if checkpoint is not None:
        spec = _compressed_spec(Path(checkpoint))
        if spec is not None:
            try:
                model = ck.load(checkpoint, trusted=trusted)
            except UnsafeFileError as e:
                advice = str(e).replace("pass ck.load(path, trusted=True)", "pass --trusted")
                raise CLIError(f"--checkpoint {checkpoint!r}: {advice}") from e
            except ValueError as e:
                if spec:  # written by compress, yet it does not rebuild: say why
                    raise CLIError(f"--checkpoint {checkpoint!r}: {e}") from e
                model = None  # neither weights_only-readable nor a compress file: an official checkpoint
            if model is not None:
                saved = (spec.get("registered") or {}).get("name")
                if name is not None and saved is not None and saved != name:
                    raise CLIError(f"--checkpoint {checkpoint!r} holds a compressed {saved!r}, not --model "
                                   f"{name!r}; drop --model or give the matching name")
                return model
    if name is None:
        raise CLIError(f"--checkpoint {checkpoint!r} is not a file written by compress; official weights "
                       "need --model NAME (see `compresskit list-models`)")
    try:
        return ck.create_model(name, checkpoint=checkpoint)
    except KeyError as e:
        raise CLIError(str(e.args[0]) if e.args else str(e)) from e


def _expand_datasets(names: list[str], dirs: list[str]) -> list[tuple[str, str | None]]:
    if len(dirs) > 1 and len(dirs) != len(names):
        raise CLIError(f"give one --data-dir for all datasets or one per --dataset "
                       f"({len(names)} datasets, {len(dirs)} data dirs)")
    pairs = []
    for i, name in enumerate(names):
        d = dirs[i] if len(dirs) > 1 else (dirs[0] if dirs else None)
        if name == "sample":
            pairs.append((name, None))
        elif name == "snufilm":
            pairs += [(f"snufilm_{lvl}", d) for lvl in ("easy", "medium", "hard", "extreme")]
        else:
            pairs.append((name, d))
    return pairs


def _check_dataset_arg(name: str, data_dir: str | None) -> None:
    from compresskit_vfi.data.datasets import DATASETS

    if name == "sample":
        return
    if name not in DATASETS:
        raise CLIError(f"unknown --dataset {name!r}; expected one of "
                       f"{', '.join(['sample', 'snufilm', *sorted(DATASETS)])}")
    if data_dir is None:
        raise CLIError(f"--dataset {name} needs --data-dir")
    if not Path(data_dir).exists():
        raise CLIError(f"--data-dir {data_dir!r} of --dataset {name} does not exist")


def _build_dataset(name: str, data_dir: str | None, kind: str) -> Any:
    from compresskit_vfi.data.datasets import create_dataset

    if name == "sample":
        return create_dataset("sample", kind=kind, split="val", size=None)
    _check_dataset_arg(name, data_dir)
    kinded = name.startswith("snufilm") or name in ("davis90", "frames", "video")
    return create_dataset(name, data_dir, **({"kind": kind} if kinded else {}))


def _evaluate(args: argparse.Namespace) -> int:
    from compresskit_vfi.evaluate import evaluate
    from compresskit_vfi.interpolate import model_num_inputs

    n = len(args.model)
    if args.checkpoint and len(args.checkpoint) != n:
        raise CLIError(f"give one --checkpoint per --model ({n} models, {len(args.checkpoint)} checkpoints)")
    if args.label and len(args.label) != n:
        raise CLIError(f"give one --label per --model ({n} models, {len(args.label)} labels)")
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be >= 1, got {args.limit}")
    checkpoints = [None if c == "-" else c for c in args.checkpoint] or [None] * n
    pairs = _expand_datasets(args.dataset, args.data_dir)
    for name, d in pairs:  # names and folders are checked before any model is built
        _check_dataset_arg(name, d)
    unweighted = [name for name, ckpt in zip(args.model, checkpoints) if ckpt is None]
    if unweighted and not args.random_weights:
        raise CLIError(f"--model {unweighted[0]} has no --checkpoint: evaluate scores trained weights (the "
                       "official ones, or a file written by compress); give one --checkpoint per --model, "
                       "or --random-weights to score random weights on purpose")
    models: dict[str, Any] = {}
    for i, (name, ckpt) in enumerate(zip(args.model, checkpoints)):
        label = args.label[i] if args.label else name
        if label in models:
            label = f"{name}:{Path(ckpt).stem}" if ckpt else f"{name}#{i}"
        models[label] = _create_model(name, ckpt, args.trusted)
    kind = "quintuplet" if any(model_num_inputs(m) == 4 for m in models.values()) else "triplet"
    datasets = {}
    for name, d in pairs:
        ds = _build_dataset(name, d, kind)
        key = str(getattr(ds, "name", name))
        while key in datasets:
            key += "'"
        datasets[key] = ds
    for name, ckpt in zip(args.model, checkpoints):
        if ckpt is None:
            print(f"{PROG}: warning: --model {name} has no --checkpoint; scoring random weights",
                  file=sys.stderr)
    result = evaluate(models, datasets, args.convention, device=args.device, lpips=args.lpips,
                      runtime=not args.no_runtime, runtime_repeats=args.runtime_repeats,
                      macs=not args.no_macs, limit=args.limit, tile=args.tile, overlap=args.overlap,
                      out_dir=args.out, progress=not args.no_progress)
    print(f"results: {Path(args.out) / 'results.json'} ({len(result.models)} models, "
          f"{len(result.datasets)} test sets)")
    return 0


def _interpolate(args: argparse.Namespace) -> int:
    try:
        factor = int(args.factor)
    except ValueError:
        factor = None
    if factor not in (2, 4, 8):  # checked before torch is even imported
        raise CLIError(f"--factor must be 2, 4 or 8, got {args.factor!r}")
    from compresskit_vfi.interpolate import interpolate_video

    src = Path(args.input)
    if not src.exists():
        raise CLIError(f"input {args.input!r} does not exist")
    if src.is_file():  # probe before loading the model: an unreadable input fails fast
        from compresskit_vfi.data.video import video_info

        video_info(src)
    if args.checkpoint is None and not args.random_weights:
        raise CLIError("interpolate needs --checkpoint: the official weights of --model, or a file written "
                       "by compress (compressed.pt, compressed_model.pt); without one the model's weights "
                       "are random (--random-weights does that on purpose)")
    if args.checkpoint is None and args.model is None:
        raise CLIError("--random-weights needs --model NAME")
    model = _create_model(args.model, args.checkpoint, args.trusted)
    summary = interpolate_video(src, args.output, model, factor=factor, tile=args.tile, overlap=args.overlap,
                                device=args.device, fps=args.fps, codec=args.codec, crf=args.crf,
                                progress=not args.no_progress,
                                cut_threshold=None if args.no_cut_detection else args.cut_threshold,
                                audio=not args.no_audio, runtime=args.runtime, layout=args.layout,
                                ends=args.ends, onnx_path=args.onnx_out)
    cuts = summary["cuts"]
    print(f"wrote {summary['output']}: {summary['frames_out']} frames at {summary['fps_out']:.3f} fps "
          f"from {summary['frames_in']} frames in {summary['seconds']:.1f} s "
          f"({summary['cpu_seconds']:.1f} s of CPU time) "
          f"({summary['frames_per_second']:.1f} frames/s, {summary['runtime']}"
          f"{_layout_times(summary.get('layout_ms'))}); {len(cuts)} scene cut(s) kept"
          f"{' after input frames ' + ', '.join(map(str, cuts[:10])) if cuts else ''}"
          f"{' ...' if len(cuts) > 10 else ''}; audio {'copied' if summary['audio'] else 'none'}")
    return 0


def _layout_times(ms: dict[str, float] | None) -> str:
    """``, timed NCHW 812 ms, channels-last 455 ms per call`` when both eager layouts were timed."""
    if not ms:
        return ""
    names = {"nchw": "NCHW", "channels_last": "channels-last"}
    return ", timed " + ", ".join(f"{names.get(k, k)} {v:.0f} ms" for k, v in ms.items()) + " per call"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``compresskit-vfi``; returns the exit status."""
    args = _build_parser().parse_args(argv)
    try:
        return _evaluate(args) if args.command == "evaluate" else _interpolate(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # every failure is one line; no traceback for user errors
        message = " ".join(str(e).split()) or type(e).__name__
        if not isinstance(e, (CLIError, ValueError, FileNotFoundError, KeyError, TypeError, OSError)):
            message = f"{type(e).__name__}: {message}"
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
