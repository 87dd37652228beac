"""Compressed vs original latency in every runtime, side by side in one run: compressed AdaCoF vs AdaCoF
and ST-MFNet Mini vs ST-MFNet at 256² (batch 1, CPU).

Each model is timed by ``compresskit.deploy.runtime.measure_runtimes`` (the report's own clock: median
of ``--repeats`` calls under inference mode after a warm-up) in eager NCHW, eager channels-last and, with
``--onnx``, ONNX Runtime (the model exported and checked first, sizes fixed). The ratio is given in each
runtime and in the *chosen* one (each model in its fastest, as the report measures). Goals (issue 22):
compressed AdaCoF ≥ 2× faster than AdaCoF, ST-MFNet Mini ≥ 3× faster than ST-MFNet.

Quick mode (``--quick``): 3 repeats, eager runtimes only, the AdaCoF pair and the ST-MFNet pair; the
ONNX Runtime column for the AdaCoF pair needs ``--onnx`` (each export takes about a minute on one thread).
``--profile`` adds the time per op kind of both models (``compresskit.deploy.profile``) and names the
kinds that kept their time: where a latency lagging the MACs went.

On a shared machine the wall clock of one call swings with the other jobs; with one thread the *CPU time*
of a call (``time.process_time``) is what the call would take alone. Even that drifts by 10–20 % over
minutes on a virtual machine, so the CPU times are taken *interleaved*: ``--rounds`` rounds, each one
call of the original then one of the compressed model (each in its chosen eager layout). ``cpu ms`` is
each model's minimum over the rounds, ``cpu ratio`` the ratio of the minima, ``cpu ratio (median)`` the
median of the per-round ratios (a drift that lasts longer than a round cancels in each).

    .venv/bin/python benchmarks/deploy_speed.py --quick --profile --json docs/data/deploy_speed.json
    .venv/bin/python benchmarks/deploy_speed.py --onnx --repeats 10 --json docs/data/deploy_speed_full.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

import compresskit as ck
from compresskit.deploy.runtime import measure_runtimes, prepare
from compresskit.io import atomic_write_json
from compresskit.measure import count_macs, count_params

PAIRS = {"adacof": ("adacof", "compressed_adacof", 2), "stmfnet": ("stmfnet", "stmfnet_mini", 4)}
GOALS = {"adacof": 2.0, "stmfnet": 3.0}


def interleaved_cpu_ms(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """CPU times (ms, this process) of ``rounds`` rounds, each calling every function once in turn, after
    one warm-up call each (under inference mode)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        for fn in fns.values():
            fn()
        for _ in range(rounds):
            for name, fn in fns.items():
                start = time.process_time()
                fn()
                times[name].append((time.process_time() - start) * 1e3)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds of the CPU-time ratio (default: 9 quick, 15 full)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--onnx", action="store_true", help="also time ONNX Runtime")
    p.add_argument("--pair", choices=tuple(PAIRS), action="append")
    p.add_argument("--profile", action="store_true",
                   help="also time each op kind (conv, warp, resize, ...) before and after, in the "
                        "compressed model's chosen eager layout, and name what kept its time")
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 10)
    rounds = args.rounds or (9 if args.quick else 15)
    runtimes = ["eager", "channels_last"] + (["onnxruntime"] if args.onnx else [])
    console = Console()
    rows = []
    for pair in args.pair or list(PAIRS):
        big, small, n = PAIRS[pair]
        gen = torch.Generator().manual_seed(0)
        x = tuple(torch.rand(1, 3, args.size, args.size, generator=gen) for _ in range(n))
        stats, fns = {}, {}
        for name in (big, small):
            model = ck.create_model(name).eval()
            t = measure_runtimes(model, x, runtimes, repeats=repeats)
            eager_best = min(("eager", "channels_last"), key=lambda r: t.ms.get(r, float("inf")))
            fns[name] = prepare(model, x, eager_best)
            stats[name] = {"params": count_params(model), "macs": count_macs(model, x), "ms": t.ms,
                           "min_ms": t.min_ms, "best": t.best, "errors": t.errors, "cpu_runtime": eager_best,
                           "load": os.getloadavg()[0]}
            console.print(f"{name}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in t.ms.items())
                          + f"; chosen eager layout {eager_best}; load {stats[name]['load']:.1f}"
                          + (f"; failed: {t.errors}" if t.errors else ""))
        cpu = interleaved_cpu_ms(fns, rounds)
        del fns
        for name in (big, small):
            stats[name]["cpu_ms"] = min(cpu[name])
            stats[name]["cpu_ms_rounds"] = cpu[name]
        per_round = sorted(a / b for a, b in zip(cpu[big], cpu[small]))
        b, s = stats[big], stats[small]
        console.print(f"CPU time, {rounds} interleaved rounds: {big} {b['cpu_ms']:.0f} ms, {small} "
                      f"{s['cpu_ms']:.0f} ms (minima); per-round ratios "
                      f"{per_round[0]:.2f}–{per_round[-1]:.2f}×")
        row = {"pair": f"{small} vs {big}", "goal": GOALS[pair], "big": big, "small": small, "stats": stats,
               "ratio": {r: b["ms"][r] / s["ms"][r] for r in runtimes if r in b["ms"] and r in s["ms"]},
               "chosen": b["ms"][b["best"]] / s["ms"][s["best"]], "mac_ratio": b["macs"] / s["macs"],
               "cpu_ratio": b["cpu_ms"] / s["cpu_ms"], "cpu_ratio_median": per_round[len(per_round) // 2],
               "cpu_rounds": rounds,
               "ratio_of_min": {r: b["min_ms"][r] / s["min_ms"][r] for r in runtimes
                                if r in b["min_ms"] and r in s["min_ms"]}}
        if args.profile:
            from compresskit.deploy.profile import kept_time_note, time_by_op_kind

            layout = s["best"] if s["best"] in ("eager", "channels_last") else "eager"
            tb = time_by_op_kind(ck.create_model(big).eval(), x, layout, repeats=1)
            ts = time_by_op_kind(ck.create_model(small).eval(), x, layout, repeats=1)
            row["op_times"] = {"before": tb.to_dict(), "after": ts.to_dict()}
            row["op_note"] = kept_time_note(tb, ts, row["mac_ratio"])
            console.print(f"{row['pair']}: {row['op_note']}")
        rows.append(row)
    title = f"latency ratio at {args.size}², batch 1, {args.threads} thread(s), {repeats} repeats"
    table = Table(title=title, title_justify="left")
    for col in ("pair", "MACs ratio", *runtimes, "chosen (each its fastest)", "CPU-time ratio",
                "CPU-time ratio (median round)", "goal"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["pair"], f"{r['mac_ratio']:.2f}×",
                      *[f"{r['ratio'][k]:.2f}×" if k in r["ratio"] else "-" for k in runtimes],
                      f"{r['chosen']:.2f}× ({r['stats'][r['big']]['best']} / "
                      f"{r['stats'][r['small']]['best']})",
                      f"{r['cpu_ratio']:.2f}× ({r['stats'][r['big']]['cpu_ms']:.0f} / "
                      f"{r['stats'][r['small']]['cpu_ms']:.0f} ms)",
                      f"{r['cpu_ratio_median']:.2f}×", f"≥ {r['goal']:g}×")
    console.print(table)
    if args.json:
        atomic_write_json({"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                           "threads": args.threads, "size": args.size, "repeats": repeats, "rounds": rounds,
                           "rows": rows,
                           "load_after": os.getloadavg()},
                          args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
