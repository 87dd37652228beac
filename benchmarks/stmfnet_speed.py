"""ST-MFNet vs ST-MFNet Mini speed, measured in one run, and where the time goes.

Questions: is ST-MFNet Mini ≥ 2.5× faster than ST-MFNet on this CPU at 256×256 (the paper reports 1.53× on
a GPU)? Which top-level parts (feature extractor, kernel heads, warps, PWC-Net, splatting, GridNet, 3-D
U-Net) take the time? On a GPU, each model's seconds per 480p (854×480) frame against the paper's 0.901 s
(ST-MFNet) and 0.588 s (Mini).

Timing: the models take turns (one forward each per round, ``--repeats`` rounds, inference mode, batch 1)
so that load from other processes hits both alike; the median is reported. Profile: one extra forward per
model under ``torch.profiler``, with a range per top-level module (forward hooks) and the custom ops
(AdaCoF, correlation, splatting) as their own rows. Both models run with channels-last 2-D convolutions
by default (``--memory-format``): oneDNN is much faster in NHWC for the Mini's odd widths.

    .venv/bin/python benchmarks/stmfnet_speed.py [--size 256] [--threads 1] [--repeats 5]
        [--memory-format channels_last|contiguous] [--json out.json]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
from compresskit_stmfnet.models import STMFNET_MINI_WIDTHS, STMFNet
from compresskit_stmfnet.models.stmfnet import to_channels_last
from rich.console import Console
from rich.table import Table
from torch import nn

from compresskit.io import atomic_write_json
from compresskit.measure import count_macs, count_params

MODELS: dict[str, Callable[[], nn.Module]] = {
    "ST-MFNet": lambda: STMFNet(),
    "ST-MFNet Mini": lambda: STMFNet(STMFNET_MINI_WIDTHS, flow=False),
}
PAPER_480P_S = {"ST-MFNet": 0.901, "ST-MFNet Mini": 0.588}
CUSTOM_OPS = {"compresskit_vfi::adacof": "AdaCoF warps (op)", "compresskit_stmfnet::correlation":
              "correlation (op)", "compresskit_stmfnet::sum_splat": "softmax splatting (op)"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_in_turns(models: dict[str, nn.Module], inputs: tuple, repeats: int, warmup: int,
                  device: torch.device) -> dict[str, list[float]]:
    """Seconds per forward for each model, the models taking turns every round."""
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for r in range(warmup + repeats):
            for name, m in models.items():
                _sync(device)
                t = time.perf_counter()
                m(*inputs)
                _sync(device)
                if r >= warmup:
                    times[name].append(time.perf_counter() - t)
    return times


def profile_parts(model: nn.Module, inputs: tuple) -> dict[str, float]:
    """Milliseconds per top-level module and per custom op in one forward (torch.profiler self-times)."""
    ranges: dict[nn.Module, torch.autograd.profiler.record_function] = {}
    hooks = []
    for name, child in model.named_children():
        def pre(mod, args, name=name):
            ranges[mod] = torch.autograd.profiler.record_function(f"part::{name}")
            ranges[mod].__enter__()

        def post(mod, args, out):
            ranges.pop(mod).__exit__(None, None, None)

        hooks += [child.register_forward_pre_hook(pre), child.register_forward_hook(post)]
    try:
        cpu = [torch.profiler.ProfilerActivity.CPU]
        with torch.inference_mode(), torch.profiler.profile(activities=cpu) as prof:
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    events = prof.key_averages()
    total_ms = 0.0
    parts: dict[str, float] = {}
    for ev in events:
        total_ms += ev.self_cpu_time_total / 1000.0
    # a part's time = its range's total minus the custom ops run inside it (reported separately)
    for ev in events:
        if ev.key.startswith("part::"):
            parts[ev.key[len("part::"):]] = ev.cpu_time_total / 1000.0
    for ev in events:
        if ev.key in CUSTOM_OPS:
            parts[CUSTOM_OPS[ev.key]] = ev.cpu_time_total / 1000.0
    parts["(whole forward)"] = total_ms
    return parts


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256, help="frame height and width on the CPU")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds")
    parser.add_argument("--device", default="cpu", help="'cpu' or 'cuda' (on CUDA: 480p frames)")
    parser.add_argument("--memory-format", choices=("channels_last", "contiguous"), default="channels_last",
                        help="layout of the 2-D convolutions and the input frames (both models alike)")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-part profile")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.size < 16:
        raise SystemExit(f"--size must be >= 16, got {args.size}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    console = Console()
    torch.manual_seed(0)
    models = {k: f().eval().to(device) for k, f in MODELS.items()}
    fmt = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
    if args.memory_format == "channels_last":
        models = {k: to_channels_last(m) for k, m in models.items()}
    h, w = (480, 854) if device.type == "cuda" else (args.size, args.size)
    g = torch.Generator().manual_seed(0)
    inputs = tuple(torch.rand(1, 3, h, w, generator=g).to(device).contiguous(memory_format=fmt)
                   for _ in range(4))
    times = time_in_turns(models, inputs, args.repeats, args.warmup, device)
    med = {k: statistics.median(v) for k, v in times.items()}
    macs = {k: count_macs(m, tuple(torch.zeros(1, 3, 256, 256, device=device) for _ in range(4)))
            for k, m in models.items()}

    table = Table(title=f"ST-MFNet vs Mini, {h}×{w}, {device.type}, {args.threads} thread(s), "
                        f"{args.memory_format}, median of {args.repeats}")
    for col in ("model", "params", "conv GMACs @256²", "s / frame", "paper s / 480p frame (GPU)"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for k, m in models.items():
        table.add_row(k, f"{count_params(m):,}", f"{macs[k] / 1e9:.1f}", f"{med[k]:.3f}",
                      f"{PAPER_480P_S[k]:.3f}")
    console.print(table)
    speedup = med["ST-MFNet"] / med["ST-MFNet Mini"]
    per_round = [a / b for a, b in zip(times["ST-MFNet"], times["ST-MFNet Mini"])]
    goal = "≥ 2.5× goal met" if speedup >= 2.5 else "below the 2.5× goal"
    console.print(f"Mini speed-up: [bold]{speedup:.2f}×[/] ({goal}; per round "
                  f"{', '.join(f'{r:.2f}' for r in per_round)}; paper: 1.53× on GPU); "
                  f"conv MACs ratio {macs['ST-MFNet'] / macs['ST-MFNet Mini']:.2f}× (paper: 4.06×)")

    result = {"device": str(device), "size": [h, w], "threads": args.threads, "repeats": args.repeats,
              "memory_format": args.memory_format,
              "platform": platform.platform(), "torch": torch.__version__,
              "seconds": times, "median_s": med, "speedup": speedup, "speedup_per_round": per_round,
              "conv_macs_256": macs,
              "params": {k: count_params(m) for k, m in models.items()}}
    if not args.no_profile:
        prof = {k: profile_parts(m, inputs) for k, m in models.items()}
        names = list(dict.fromkeys(n for p in prof.values() for n in p))
        pt = Table(title="where the time goes (ms, one forward, torch.profiler; ops also counted in "
                         "their part)")
        pt.add_column("part")
        for k in models:
            pt.add_column(k, justify="right")
        for n in names:
            pt.add_row(n, *(f"{prof[k][n]:.0f}" if n in prof[k] else "-" for k in models))
        console.print(pt)
        result["profile_ms"] = prof
    if args.json:
        atomic_write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
