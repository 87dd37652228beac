"""``compresskit-vfi interpolate`` frames/s on bigbuckbunny (1280×720) ×2: the demo's model before and
after compression, eager (fastest layout, chosen on the first predictions) and in ONNX Runtime.

The original is the demo's teacher (``examples/demo.py``'s ``load_pretrained``: FlowVFI,
``examples/assets/flowvfi_gap4_samples.pt``). The compressed model is ``--compressed PATH``, the file
``make demo`` writes (``demo_output/compressed_model.pt``; loaded with ``trusted=True``, since its saved
program is fixed to the training crop size and a whole frame needs the model's class) or, by default,
the teacher with every prunable channel group shrunk to half of its units. Each run calls
``interpolate_video`` exactly as the CLI does (decode, predict and encode overlapped in threads,
inference mode) on the first ``--frames`` frames of the clip, so the frames/s include decoding and
encoding (the layout is chosen on the first four predictions, which are real ones).

On a shared machine one run says little: ``--rounds`` runs every model that many times, alternating
original and compressed, and reports the best wall-clock frames/s of each and, beside it, frames per
CPU-second (the process's CPU time over the run, all threads: what other jobs do not inflate). The load
average is recorded before and after.

Quick mode (``--quick``): 12 input frames (23 output frames), 2 rounds, eager only; ``--onnx`` adds
ONNX Runtime; ``--profile`` the time of each op kind of both models on one 1280×720 pair and the CPU
time of one forward of each.

    .venv/bin/python benchmarks/interpolate_speed.py --quick --compressed demo_output/compressed_model.pt \
        --json docs/data/interpolate_speed.json
    .venv/bin/python benchmarks/interpolate_speed.py --frames 132 --rounds 3 --onnx \
        --compressed demo_output/compressed_model.pt --json docs/data/interpolate_speed_full.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
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
        small = ck.load(compressed, trusted=True)  # the model's class: the saved program fixes the size
        how = Path(compressed).name
    else:
        from compresskit.testing import random_keep

        x = (torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))
        graph = ck.trace(original, x)
        small = ck.shrink(original, graph, keep=random_keep(graph, 0.5, 0)).eval()
        how = "teacher with every prunable group halved"
    return {"original (demo teacher)": original, f"compressed ({how})": small}


def _cpu(fn) -> float:
    """CPU time (ms) of one call of ``fn``."""
    start = time.process_time()
    fn()
    return (time.process_time() - start) * 1e3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--frames", type=int, default=None, help="input frames (default 12 quick, 132 full)")
    p.add_argument("--rounds", type=int, default=None, help="runs per model, alternating (default 2)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--onnx", action="store_true")
    p.add_argument("--compressed", help="a file written by compress / the demo")
    p.add_argument("--profile", action="store_true",
                   help="also time each op kind of both models on one 1280×720 pair, channels-last "
                        "(compresskit.deploy.profile): where the time of a frame goes")
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from compresskit_vfi.data.samples import sample_clip_path
    from compresskit_vfi.data.video import iter_video_frames, write_video
    from compresskit_vfi.interpolate import frame_tensor, interpolate_video

    n = args.frames or (12 if args.quick else 132)
    rounds = args.rounds or 2
    console = Console()
    runs: list[dict] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "bbb.mkv"  # the first n frames, lossless, so every run reads the same input
        write_video(iter_video_frames(sample_clip_path("bigbuckbunny"), n), clip, fps=25, codec="ffv1")
        runtimes = ["eager"] + (["onnx"] if args.onnx else [])
        named = models(args.compressed)
        for k in range(rounds):
            for label, model in named.items():
                for runtime in runtimes:
                    s = interpolate_video(clip, Path(tmp) / "out.mp4", model, factor=2, progress=False,
                                          audio=False, runtime=runtime)
                    runs.append({"round": k, "model": label, "params": ck.report.count_params(model),
                                 "runtime": runtime, "chosen": s["runtime"], "layout_ms": s["layout_ms"],
                                 "frames_out": s["frames_out"], "seconds": s["seconds"],
                                 "cpu_seconds": s["cpu_seconds"],
                                 "frames_per_second": s["frames_per_second"],
                                 "frames_per_cpu_second": s["frames_out"] / s["cpu_seconds"],
                                 "load": os.getloadavg()[0]})
                    console.print(f"round {k}, {label}, {s['runtime']}: {s['frames_per_second']:.3f} "
                                  f"frames/s ({s['frames_out']} frames in {s['seconds']:.1f} s, "
                                  f"{s['cpu_seconds']:.1f} CPU-s; load {os.getloadavg()[0]:.1f})")
    rows = []
    for label in named:
        for runtime in runtimes:
            mine = [r for r in runs if r["model"] == label and r["runtime"] == runtime]
            rows.append({"model": label, "params": mine[0]["params"], "runtime": runtime,
                         "chosen": [r["chosen"] for r in mine],
                         "frames_per_second": max(r["frames_per_second"] for r in mine),
                         "frames_per_second_runs": [r["frames_per_second"] for r in mine],
                         "frames_per_cpu_second": max(r["frames_per_cpu_second"] for r in mine)})
    table = Table(title=f"interpolate ×2, bigbuckbunny 1280×720, {n} input frames, {args.threads} "
                        f"thread(s), best of {rounds} alternating runs", title_justify="left")
    for col in ("model", "params", "runtime", "frames/s (runs)", "vs original", "frames/CPU-s",
                "vs original"):
        table.add_column(col, justify="right")
    base = {r["runtime"]: r for r in rows if r["model"].startswith("original")}
    for r in rows:
        ref = base.get(r["runtime"])
        runs_text = ", ".join(f"{v:.3f}" for v in r["frames_per_second_runs"])
        table.add_row(r["model"], f"{r['params']:,}", r["runtime"],
                      f"{r['frames_per_second']:.3f} ({runs_text})",
                      f"{r['frames_per_second'] / ref['frames_per_second']:.2f}×" if ref else "-",
                      f"{r['frames_per_cpu_second']:.3f}",
                      f"{r['frames_per_cpu_second'] / ref['frames_per_cpu_second']:.2f}×" if ref else "-")
    console.print(table)
    op_times = {}
    if args.profile:
        from compresskit.deploy.profile import kept_time_note, share_summary, time_by_op_kind
        from compresskit.deploy.runtime import prepare

        pair = tuple(frame_tensor(f) for f in iter_video_frames(sample_clip_path("bigbuckbunny"), 2))
        forward_cpu = {}
        for label, model in named.items():
            op_times[label] = time_by_op_kind(model, pair, "channels_last", repeats=1)
            fn = prepare(model, pair, "channels_last")
            with torch.inference_mode():
                fn()
                forward_cpu[label] = min(_cpu(fn) for _ in range(2))
            console.print(f"{label}: one forward {forward_cpu[label]:.0f} CPU-ms (channels-last); "
                          f"{share_summary(op_times[label], top=4)}")
        before, after = op_times.values()
        macs = [ck.report.count_macs(m, pair) for m in named.values()]
        note = kept_time_note(before, after, macs[0] / macs[1])
        console.print(f"MACs at 1280×720: {macs[0] / 1e9:.2f} G → {macs[1] / 1e9:.2f} G "
                      f"({macs[0] / macs[1]:.2f}×); {note}")
        op_times = {"macs": macs, "note": note, "forward_cpu_ms": forward_cpu,
                    **{k: v.to_dict() for k, v in op_times.items()}}
    load_after = os.getloadavg()
    console.print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")
    if args.json:
        atomic_write_json({"torch": torch.__version__, "threads": args.threads, "input_frames": n,
                           "rounds": rounds, "load_before": load_before, "load_after": load_after,
                           "rows": rows, "runs": runs, "op_times": op_times}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
