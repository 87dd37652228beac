"""How well the latency table predicts the measured latency of shrunk models, and whether latency tracks MACs.

For each model: trace it, build :class:`compresskit.plan.latency.LatencyTable` (every conv/linear layer
timed alone on a grid of kept channel fractions 0.25/0.5/0.75/1), build it a second time (read from the
cache), then for several width assignments shrink the model for real (``ck.shrink``) and compare:

- ``predicted`` = ``table(widths)`` with ``measured`` = the shrunk model timed on the one clock
  (``compresskit.measure.clock.time_ms``: the median of ``--repeats`` runs, on the ``--clock``),
  error = predicted / measured − 1;
  also the error when the time outside the layers is a constant (``calibrate=()``);
- the MACs ratio (full / shrunk, ``count_macs``) with the measured latency ratio (full / shrunk, the two
  timed alternately, best of 3 each) and the predicted ratio (``table.full() / table(widths)``, what a
  ``"2x latency"`` target is planned with).

Width assignments: every prunable group kept at 75 %, 50 %, 25 % (random channels, seed 0), and two
non-uniform ones (each group at its own random fraction in [0.2, 0.9]).

Models: a ResNet with bottlenecks (the test zoo's, widths 64/128/256, 96×96 input), AdaCoF at a quarter of
its published widths (compresskit-adacof, 128×128 frames), and the zoo's small MobileNetV3 (depthwise
convs, squeeze-excite; 96×96).

The default clock is this thread's CPU time with one torch thread: on a machine shared with other jobs
the wall clock swings by 2x between two measurements of the same model, the thread's CPU time does not.

    python benchmarks/latency_table.py --json latency_table.json
    python benchmarks/latency_table.py --models resnet --clock wall --threads 2
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import compresskit as ck
from compresskit.io import atomic_write_json
from compresskit.measure.clock import STATISTIC, time_ms
from compresskit.measure.macs import count_macs
from compresskit.plan.latency import LatencyTable, device_name

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def resnet() -> tuple[torch.nn.Module, tuple]:
    from zoo import ResNet

    torch.manual_seed(0)
    return ResNet(widths=(64, 128, 256), blocks=2), (torch.randn(1, 3, 96, 96),)


def adacof_quarter() -> tuple[torch.nn.Module, tuple]:
    from compresskit_adacof import AdaCoF, dense_widths
    from compresskit_adacof.models.adacof import KERNEL_HEADS

    widths = {k: tuple(max(1, c // 4) for c in v) for k, v in dense_widths(5).items()}
    for name in KERNEL_HEADS:  # the heads' last layer emits the F² kernel taps: not a width
        widths[name] = (*widths[name][:2], dense_widths(5)[name][2])
    torch.manual_seed(0)
    frames = (torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128))
    return AdaCoF(5, 1, widths), frames


def mobilenet() -> tuple[torch.nn.Module, tuple]:
    from zoo import MobileNetV3

    torch.manual_seed(0)
    return MobileNetV3(), (torch.randn(1, 3, 96, 96),)


MODELS = {"resnet": resnet, "adacof_quarter": adacof_quarter, "mobilenet_v3": mobilenet}


def assignments(graph: ck.ChannelGraph) -> list[tuple[str, dict[int, torch.Tensor]]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for f in (0.75, 0.5, 0.25):
        out.append((f"all {f:.0%}", ck.testing.random_keep(graph, f, seed=0)))
    rng = random.Random(0)
    for i in range(2):
        keep = {}
        for g in graph.prunable_groups:
            if g.size >= 2:
                k = min(g.size, max(1, round(g.size * rng.uniform(0.2, 0.9))))
                keep[g.id] = torch.sort(torch.randperm(g.size, generator=gen)[:k]).values
        out.append((f"random {i + 1}", keep))
    return out


CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


def run(name: str, args: argparse.Namespace, cache_dir: Path, console: Console) -> dict:
    model, inputs = MODELS[name]()
    model.eval()
    graph = ck.trace(model, inputs)
    timer = CLOCKS[args.clock]
    kw = {"repeats": args.table_repeats, "timer": timer}

    def measure(m: torch.nn.Module) -> float:
        return time_ms(lambda: m(*inputs), repeats=args.repeats, timer=timer, warmup=2)

    t0 = time.perf_counter()
    table = LatencyTable.build(model, graph, inputs, cache_dir=cache_dir, **kw)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = LatencyTable.build(model, graph, inputs, cache_dir=cache_dir, **kw)
    cached_s = time.perf_counter() - t0
    constant = LatencyTable.build(model, graph, inputs, cache_dir=cache_dir, **kw, calibrate=())
    full_ms = measure(model)
    full_macs = count_macs(model, inputs)
    rows = []
    for label, keep in assignments(graph):
        small = ck.shrink(model, graph, keep=keep).eval()
        widths = {gid: len(idx) for gid, idx in keep.items()}
        # full and shrunk alternately, the best of each: their ratio is what a "2x latency" target needs,
        # and measured side by side it does not drift with the machine's load
        pairs = [(measure(model), measure(small)) for _ in range(3)]
        beside, measured = min(p[0] for p in pairs), min(p[1] for p in pairs)
        predicted = table(widths)
        macs = count_macs(small, inputs)
        ratio, predicted_ratio = beside / measured, table.full() / predicted
        rows.append({"widths": label, "predicted_ms": predicted, "measured_ms": measured,
                     "error": predicted / measured - 1,
                     "error_constant_rest": constant(widths) / measured - 1, "macs_ratio": full_macs / macs,
                     "full_beside_ms": beside, "latency_ratio": ratio, "predicted_ratio": predicted_ratio,
                     "ratio_error": predicted_ratio / ratio - 1})
    layer_ms = sum(t.full() for t in table.layers)
    full_again = measure(model)
    t = Table(title=f"{name}: {table.full():.2f} ms predicted at full width (measured {full_ms:.2f}, "
                    f"{full_again:.2f} at the end), outside the layers {table.full() - layer_ms:.2f} ms, "
                    f"{table.fixed_ms:.2f} of it fixed; table built in {build_s:.1f} s, {cached_s:.2f} s "
                    "from the cache")
    for col in ("widths", "predicted ms", "measured ms", "error", "error, rest constant", "MACs ratio",
                "latency ratio", "predicted ratio", "ratio error"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(r["widths"], f"{r['predicted_ms']:.2f}", f"{r['measured_ms']:.2f}", f"{r['error']:+.0%}",
                  f"{r['error_constant_rest']:+.0%}",
                  f"{r['macs_ratio']:.2f}x", f"{r['latency_ratio']:.2f}x", f"{r['predicted_ratio']:.2f}x",
                  f"{r['ratio_error']:+.0%}")
    console.print(t)
    return {"model": name, "layers": len(table.layers), "full_predicted_ms": table.full(),
            "full_measured_ms": full_ms, "full_measured_end_ms": full_again, "fixed_ms": table.fixed_ms,
            "build_s": build_s, "cached_build_s": cached_s, "cache_hits": again.from_cache, "rows": rows,
            "ms_per_element": table.ms_per_element,
            "mean_abs_error": sum(abs(r["error"]) for r in rows) / len(rows),
            "mean_abs_error_constant_rest": sum(abs(r["error_constant_rest"]) for r in rows) / len(rows),
            "mean_abs_ratio_error": sum(abs(r["ratio_error"]) for r in rows) / len(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: least disturbed by other load)")
    ap.add_argument("--repeats", type=int, default=20, help="timed runs per measured latency")
    ap.add_argument("--cache-dir", default=None, help="where the table is cached (default: a temp folder)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--table-repeats", type=int, default=7, help="timed runs per table entry")
    ap.add_argument("--clock", default="thread", choices=list(CLOCKS),
                    help="thread: CPU time of this thread (with --threads 1 all the work runs in it; other "
                    "load on the machine does not inflate it); wall: time.perf_counter")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.clock == "thread" and args.threads != 1:
        ap.error("--clock thread counts this thread's CPU time only: use it with --threads 1")
    console = Console(width=150)
    device = torch.device("cpu")
    console.print(f"{device_name(device)}, torch {torch.__version__}, {args.threads} thread(s), "
                  f"python {platform.python_version()}, clock {args.clock}, {STATISTIC} of the runs")
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = Path(args.cache_dir) if args.cache_dir else Path(tmp)
        results = [run(name, args, cache_dir, console) for name in args.models]
    if args.json:
        atomic_write_json({"device": device_name(device), "torch": torch.__version__, "threads": args.threads,
                           "repeats": args.repeats, "table_repeats": args.table_repeats, "stat": STATISTIC,
                           "clock": args.clock, "results": results}, args.json)


if __name__ == "__main__":
    main()
