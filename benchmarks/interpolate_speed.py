"""``compresskit-vfi interpolate`` frames/s on bigbuckbunny (1280×720) ×2: the demo's AdaCoF before and
after compression, eager (fastest layout, chosen on the first predictions) and in ONNX Runtime.

The original is the demo's teacher, our quarter-width AdaCoF (``examples/assets/adacof_w025_samples.pt``).
The compressed model is ``--compressed PATH`` (e.g. ``demo_output/compressed_model.pt`` written by
``make demo``) or, by default, the teacher with every prunable channel group shrunk to half of its units
(about 4× fewer parameters, the demo's "4x params" target; speed does not depend on the weights, the
frames written do). Each run calls ``interpolate_video`` exactly as the CLI does (decode, predict and
encode overlapped in threads, inference mode) on the first ``--frames`` frames of the clip, so the
frames/s include decoding and encoding (the layout is chosen on the first four predictions, which are
real ones: the first two are also the warm-up of each layout).

Quick mode (``--quick``): 6 input frames (11 output frames), eager only; ``--onnx`` adds ONNX Runtime.

    .venv/bin/python benchmarks/interpolate_speed.py --quick --json docs/data/interpolate_speed.json
    .venv/bin/python benchmarks/interpolate_speed.py --frames 132 --onnx \
        --json docs/data/interpolate_speed_full.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import compresskit as ck
from compresskit.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]


def models(compressed: str | None):
    sys.path.insert(0, str(ROOT / "examples"))
    from demo import load_pretrained

    original, _ = load_pretrained()
    if compressed:
        small = ck.load(compressed)
        how = compressed
    else:
        from compresskit.testing import random_keep

        x = (torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))
        graph = ck.trace(original, x)
        small = ck.shrink(original, graph, keep=random_keep(graph, 0.5, 0)).eval()
        how = "teacher with every prunable group halved"
    return {"original (demo teacher)": original, f"compressed ({how})": small}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--frames", type=int, default=None, help="input frames (default 6 quick, 132 full)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--onnx", action="store_true")
    p.add_argument("--compressed", help="a file written by compress / the demo")
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from compresskit_vfi.data.samples import sample_clip_path
    from compresskit_vfi.data.video import iter_video_frames, write_video
    from compresskit_vfi.interpolate import interpolate_video

    n = args.frames or (6 if args.quick else 132)
    console = Console()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "bbb.mkv"  # the first n frames, lossless, so every run reads the same input
        write_video(iter_video_frames(sample_clip_path("bigbuckbunny"), n), clip, fps=25, codec="ffv1")
        runtimes = ["eager"] + (["onnx"] if args.onnx else [])
        for label, model in models(args.compressed).items():
            params = ck.report.count_params(model)
            for runtime in runtimes:
                s = interpolate_video(clip, Path(tmp) / "out.mp4", model, factor=2, progress=False,
                                      audio=False, runtime=runtime)
                rows.append({"model": label, "params": params, "runtime": s["runtime"],
                             "layout_ms": s["layout_ms"], "frames_out": s["frames_out"],
                             "seconds": s["seconds"], "frames_per_second": s["frames_per_second"]})
                console.print(f"{label}, {s['runtime']}: {s['frames_per_second']:.3f} frames/s "
                              f"({s['frames_out']} frames in {s['seconds']:.1f} s)")
    table = Table(title=f"interpolate ×2, bigbuckbunny 1280×720, {n} input frames, {args.threads} thread(s)",
                  title_justify="left")
    for col in ("model", "params", "runtime", "frames/s", "vs original"):
        table.add_column(col, justify="right")
    base = {r["runtime"].split()[0]: r["frames_per_second"] for r in rows
            if r["model"].startswith("original")}
    for r in rows:
        ref = base.get(r["runtime"].split()[0])
        table.add_row(r["model"], f"{r['params']:,}", r["runtime"], f"{r['frames_per_second']:.3f}",
                      f"{r['frames_per_second'] / ref:.2f}×" if ref else "-")
    console.print(table)
    if args.json:
        atomic_write_json({"torch": torch.__version__, "threads": args.threads, "input_frames": n,
                           "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
