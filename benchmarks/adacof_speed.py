"""AdaCoF-family speed on this CPU at 256×256, all models measured in one run.

Questions (CDFI paper, and the ``one op call per kernel set`` design of compresskit-adacof):
- is the compressed AdaCoF (CDFI stage I) ≥ 1.3× faster than AdaCoF?
- does CDFI stay within 4× the time of its backbone, the compressed AdaCoF+?
- how much does warping the frame and the 5-level pyramid in ONE op call per kernel set (2 calls) save over
  the published structure (12 separate calls)?

Times are medians of ``--repeats`` forward passes (``compresskit.report.measure_latency``, inference mode,
batch 1) with ``--threads`` torch threads, every model and input in ``--memory-format`` (channels_last by
default: oneDNN's convolutions are much faster in NHWC for the compressed models' odd widths); MACs
count convolutions only (``compresskit.report.count_macs``; the AdaCoF op and element-wise work are not
counted). Ratios compare the minimum times, which other load on a shared machine can only lengthen.
Results print as a rich table and, with ``--json``, are written atomically as JSON.

    .venv/bin/python benchmarks/adacof_speed.py [--size 256] [--threads 1] [--repeats 5]
        [--memory-format channels_last|contiguous] [--json out.json]
"""

from __future__ import annotations

import argparse
import platform

import torch
from compresskit_adacof.models import CDFI, AdaCoF, compressed_widths
from rich.console import Console
from rich.table import Table

from compresskit.io import atomic_write_json
from compresskit.report import count_macs, count_params, measure_latency

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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256, help="frame height and width")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes per model")
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
    rows = {}
    with console.status("timing") as status:
        for name, build in MODELS.items():
            status.update(f"timing {name}")
            model = build().eval().to(memory_format=layout)
            latency = measure_latency(model, frames, repeats=args.repeats, warmup=args.warmup)
            rows[name] = {"params": count_params(model), "conv_macs": count_macs(model, frames),
                          "median_ms": latency["median_ms"], "min_ms": latency["min_ms"]}
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
