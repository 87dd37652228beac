"""How long one OBProxSG.step() takes next to torch.optim.SGD(foreach=True), in the same run.

The parameters are the 118 tensors of AdaCoF (F=5, d=1; 21,843,427 parameters; shapes built from the
published topology), each with a random gradient. Timed: median of ``--repeats`` steps after warm-up,
the variants taking turns step by step (a shared machine's load changes hit all of them alike):

- SGD(foreach=True): the yardstick (x ← x − lr·g);
- OBProxSG prox and orthant steps, eager (CPU: slice by slice in cache; CUDA: ``torch._foreach_*``)
  and compiled (``compile=True``);
- a naive per-tensor ``torch.where`` implementation of both steps (what not to do).

    python benchmarks/obproxsg_step.py                 # CPU, all threads
    python benchmarks/obproxsg_step.py --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table

import compresskit as ck
from compresskit.io import atomic_write_json


def adacof_shapes(F: int = 5) -> list[tuple[int, ...]]:  # noqa: N803 - F is the paper's kernel size
    """Weight and bias shapes of AdaCoF's kernel-estimation U-Net (all 3x3 convs with bias)."""
    shapes: list[tuple[int, ...]] = []

    def conv(cin: int, cout: int) -> None:
        shapes.extend([(cout, cin, 3, 3), (cout,)])

    for cin, cout in [(6, 32), (32, 64), (64, 128), (128, 256), (256, 512)]:  # moduleConv1..5
        conv(cin, cout), conv(cout, cout), conv(cout, cout)
    for cin, cout in [(512, 512), (512, 256), (256, 128), (128, 64)]:  # moduleDeconv5..2 + Upsample
        conv(cin, cout), conv(cout, cout), conv(cout, cout), conv(cout, cout)
    for _ in range(6):  # Weight1/2, Alpha1/2, Beta1/2 heads
        conv(64, 64), conv(64, 64), conv(64, F * F), conv(F * F, F * F)
    conv(64, 64), conv(64, 64), conv(64, 64), conv(64, 1)  # Occlusion head
    return shapes


def _naive(phase: str, params: list[torch.Tensor], lr: float, lam: float, eps: float) -> None:
    with torch.no_grad():
        for p in params:
            g = p.grad
            if phase == "prox":
                y = p - lr * g
                p.copy_(torch.where(y.abs() > lr * lam, y - torch.sign(y) * lr * lam, torch.zeros_like(y)))
            else:
                z = torch.sign(p)
                x_hat = torch.where(z != 0, p - lr * (g + lam * z), torch.zeros_like(p))
                p.copy_(torch.where(x_hat * z > eps, x_hat, torch.zeros_like(p)))


def _time_interleaved(
    fns: dict[str, Callable[[], None]], repeats: dict[str, int], sync: Callable[[], None]
) -> dict[str, float]:
    """Median ms per call; the variants take turns, so a load change on the machine hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    sync()
    for r in range(max(repeats.values())):
        for k, fn in fns.items():
            if r >= repeats[k]:
                continue
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive torch.where rows")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    shapes = adacof_shapes()
    params = []
    for s in shapes:
        p = torch.nn.Parameter((torch.randn(s, generator=gen) * 0.05).to(device, dtype))
        p.grad = (torch.randn(s, generator=gen) * 0.01).to(device, dtype)
        params.append(p)
    n = sum(math.prod(s) for s in shapes)
    lr, lam, eps = 1e-3, 1e-4, 1e-4
    console = Console()
    console.print(f"{len(params)} tensors, {n:,} parameters, {dtype} on {device} "
                  f"({torch.get_num_threads()} threads, torch {torch.__version__})")

    fns: dict[str, Callable[[], None]] = {}
    repeats: dict[str, int] = {}
    notes: dict[str, str] = {}
    sgd = torch.optim.SGD(params, lr=lr, foreach=True)
    fns["SGD(foreach=True)"] = sgd.step
    for compiled in ([False] if args.no_compile else [False, True]):
        for phase, n_prox in (("prox", None), ("orthant", 0)):
            opt = ck.OBProxSG(params, lr=lr, lambda_=lam, eps=eps, n_prox_steps=n_prox, compile=compiled)
            assert opt.phase == phase
            name = f"OBProxSG {phase}, {'compiled' if compiled else 'eager'}"
            if compiled:
                t0 = time.perf_counter()
                opt.step()
                sync()
                notes[name] = f"first step compiles: {time.perf_counter() - t0:.0f} s"
                if not opt.compile:
                    notes[name] = "compile failed: eager fallback"
            fns[name] = opt.step
    if not args.no_naive:
        for phase in ("prox", "orthant"):
            fns[f"naive per-tensor torch.where, {phase}"] = (
                lambda ph=phase: _naive(ph, params, lr, lam, eps)
            )
    for name in fns:
        repeats[name] = max(3, args.repeats // 3) if name.startswith("naive") else args.repeats
    ms = _time_interleaved(fns, repeats, sync)
    base = ms["SGD(foreach=True)"]
    rows = [(name, ms[name], notes.get(name, "")) for name in fns]

    table = Table(title=f"one optimizer step, {n / 1e6:.1f}M parameters (AdaCoF tensors), {dtype}, {device}")
    table.add_column("update")
    table.add_column("ms / step", justify="right")
    table.add_column("x SGD", justify="right")
    table.add_column("note")
    for name, ms, note in rows:
        table.add_row(name, f"{ms:.2f}", f"{ms / base:.2f}", note)
    console.print(table)
    result = {
        "device": str(device), "dtype": args.dtype, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "params": n, "tensors": len(params),
        "rows": [{"update": name, "ms": ms, "x_sgd": ms / base, "note": note} for name, ms, note in rows],
    }
    if args.json:
        atomic_write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
