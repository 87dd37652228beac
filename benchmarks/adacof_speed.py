"""AdaCoF-family speed on this CPU at 256×256, all models measured in one run.

Questions (CDFI paper, and the ``one op call per kernel set`` design of compresskit-adacof):
- is the compressed AdaCoF (CDFI stage I) ≥ 1.3× faster than AdaCoF?
- does CDFI stay within 4× the time of its backbone, the compressed AdaCoF+?
- how much does warping the frame and the 5-level pyramid in ONE op call per kernel set (2 calls) save over
  the published structure (12 separate calls)?

Times come from ``--repeats`` forward passes per model (inference mode, batch 1), the models taking turns
so that a change of load hits all of them alike, with ``--threads`` torch threads, every model and input
in ``--memory-format`` (channels_last by default: oneDNN's convolutions are much faster in NHWC for the
compressed models' odd widths); MACs
count convolutions only (``compresskit.measure.count_macs``; the AdaCoF op and element-wise work are not
counted). Ratios compare the minimum times, which other load on a shared machine can only lengthen.
Results print as a rich table and, with ``--json``, are written atomically as JSON.

    .venv/bin/python benchmarks/adacof_speed.py [--size 256] [--threads 1] [--repeats 7]
        [--memory-format channels_last|contiguous] [--json out.json]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from compresskit_adacof.models import CDFI, AdaCoF, compressed_widths
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from compresskit.io import atomic_write_json
from compresskit.measure import count_macs, count_params

MODELS = {
    "AdaCoF (F=5, d=1)": lambda: AdaCoF(5, 1),
    "compressed AdaCoF (F=5, d=1)": lambda: AdaCoF(5, 1, compressed_widths()),
    "AdaCoF+ (F=11, d=2)": lambda: AdaCoF(11, 2),
    "compressed AdaCoF+ (F=11, d=2)": lambda: AdaCoF(11, 2, compressed_widths()),
    "CDFI (2 op calls)": lambda: CDFI(),
    "CDFI, published structure (12 op calls)": lambda: CDFI(separate_warps=True),
}

# (name, numerator, denominator, goal, "<=" or ">=")
RATIOS = (
    ("AdaCoF / compressed AdaCoF (speed-up)", "AdaCoF (F=5, d=1)", "compressed AdaCoF (F=5, d=1)", 1.3, ">="),
    ("CDFI / compressed AdaCoF+", "CDFI (2 op calls)", "compressed AdaCoF+ (F=11, d=2)", 4.0, "<="),
    ("CDFI published structure / compressed AdaCoF+", "CDFI, published structure (12 op calls)",
     "compressed AdaCoF+ (F=11, d=2)", None, ""),
)


def interleaved_times(models: dict[str, torch.nn.Module], inputs: tuple[torch.Tensor, ...], repeats: int,
                      warmup: int, console: Console) -> dict[str, list[float]]:
    """Milliseconds of ``repeats`` forward passes per model, the models taking turns (round robin), so
    that a change of load on a shared machine hits every model alike; ``warmup`` untimed passes first."""
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode(), Progress(*Progress.get_default_columns(), console=console) as progress:
        task = progress.add_task("timing", total=(warmup + repeats) * len(models))
        for r in range(warmup + repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(*inputs)
                if r >= warmup:
                    times[name].append((time.perf_counter() - start) * 1e3)
                progress.advance(task)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256, help="frame height and width")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=7, help="timed forward passes per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forward passes per model")
    parser.add_argument("--memory-format", choices=("channels_last", "contiguous"), default="channels_last",
                        help="memory layout of every model and input")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.size < 17:
        parser.error(f"--size: expected at least 17, got {args.size}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layout = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
    frames = tuple(f.contiguous(memory_format=layout) for f in torch.rand(2, 1, 3, args.size, args.size))
    console = Console()
    models = {name: build().eval().to(memory_format=layout) for name, build in MODELS.items()}
    times = interleaved_times(models, frames, args.repeats, args.warmup, console)
    rows = {}
    for name, model in models.items():
        rows[name] = {"params": count_params(model), "conv_macs": count_macs(model, frames),
                      "median_ms": statistics.median(times[name]), "min_ms": min(times[name])}
    ratios = []
    for label, num, den, goal, op in RATIOS:
        value = rows[num]["min_ms"] / rows[den]["min_ms"]
        ok = None if goal is None else (value >= goal if op == ">=" else value <= goal)
        ratios.append({"ratio": label, "value": value, "goal": f"{op} {goal}" if goal else None, "met": ok})

    table = Table(title=f"AdaCoF family at {args.size}×{args.size}, CPU, {args.threads} thread(s), batch 1, "
                        f"{args.memory_format}")
    for col in ("model", "params", "conv GMACs", "median ms", "min ms"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, r in rows.items():
        table.add_row(name, f"{r['params']:,}", f"{r['conv_macs'] / 1e9:.2f}", f"{r['median_ms']:.0f}",
                      f"{r['min_ms']:.0f}")
    console.print(table)
    rt = Table(title="time ratios (of the minimum times: robust to other load on a shared CPU)")
    for col in ("ratio", "value", "goal", "met"):
        rt.add_column(col)
    for r in ratios:
        rt.add_row(r["ratio"], f"{r['value']:.2f}×", r["goal"] or "-",
                   {True: "yes", False: "NO", None: "-"}[r["met"]])
    console.print(rt)
    result = {"size": args.size, "threads": args.threads, "repeats": args.repeats,
              "memory_format": args.memory_format, "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "models": rows, "ratios": ratios}
    if args.json:
        atomic_write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
