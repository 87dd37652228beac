"""How fast the AdaCoF sampling op is next to a straightforward per-tap gather version, in the same run.

Default problem: CDFI's, one 256×256 frame, F=11, d=2, 63 channels (a 3-channel frame and 60 feature
channels warped by one kernel set). Timed, median of ``--repeats`` runs after one warm-up:

- ``per-tap gather``: the op written plainly in torch (written here): for each of the F² taps compute the
  truncated coordinates and bilinear weights, gather the four corners of every channel with an index
  expanded over channels, accumulate; backward by autograd through the F²·4 gathers (each tap
  activation-checkpointed, or its graph would not fit in memory);
- ``compresskit_vfi.ops.adacof``: the custom op (CPU: embedding_bag / sampled_addmm kernels; CUDA: Triton).

The two are run alternately (baseline, op, baseline, op, ...) so that a change in machine load hits both.

Forward alone, and forward + backward (gradients of x, W, α, β). On CUDA the op's time is also set against
the memory-bandwidth floor: bytes it must touch (x, W, α, β read once, output written once) divided by the
bandwidth of a large device-to-device copy measured in the same run.

    OMP_NUM_THREADS=1 python benchmarks/adacof_op.py --threads 1
    python benchmarks/adacof_op.py --device cuda --json adacof_op.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
from compresskit_vfi.ops import adacof, adacof_padding
from rich.console import Console
from rich.table import Table
from torch.utils.checkpoint import checkpoint

from compresskit.io import atomic_write_json


def per_tap_gather(x: torch.Tensor, weight: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                   dilation: int) -> torch.Tensor:
    """The op as plain torch: one gather per tap and corner over every channel (the baseline).

    With autograd on, each tap is activation-checkpointed (kept whole, its graph needs ~18 GB here).
    """
    bsz, ch, hp, wp = x.shape
    taps, height, width = weight.shape[1:]
    f = int(round(taps**0.5))
    rows = torch.arange(height, device=x.device).view(1, 1, height, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, 1, width)
    flat = x.reshape(bsz, ch, hp * wp)

    def one_tap(flat: torch.Tensor, w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, t: int
                ) -> torch.Tensor:
        k, l = divmod(t, f)
        ia, ib = a.detach().trunc(), b.detach().trunc()
        fa, fb = a - ia, b - ib
        y0, x0 = rows + k * dilation + ia.long(), cols + l * dilation + ib.long()

        def corner(y: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
            index = (y.clamp(0, hp - 1) * wp + xx.clamp(0, wp - 1)).view(bsz, 1, -1).expand(bsz, ch, -1)
            return flat.gather(2, index).view(bsz, ch, height, width)

        sample = (corner(y0, x0) * (1 - fa) * (1 - fb) + corner(y0 + 1, x0) * fa * (1 - fb)
                  + corner(y0, x0 + 1) * (1 - fa) * fb + corner(y0 + 1, x0 + 1) * fa * fb)
        return w * sample

    out = x.new_zeros(bsz, ch, height, width)
    for t in range(taps):
        args = (flat, weight[:, t:t + 1], alpha[:, t:t + 1], beta[:, t:t + 1], t)
        if torch.is_grad_enabled() and any(v.requires_grad for v in (x, weight, alpha, beta)):
            out = out + checkpoint(one_tap, *args, use_reentrant=True)
        else:
            out = out + one_tap(*args)
    return out


def make_inputs(size: int, channels: int, f: int, dilation: int, device: str, dtype: torch.dtype,
                seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pad = adacof_padding(f, dilation)
    x = torch.rand(1, channels, size + pad, size + pad, generator=g, dtype=dtype)
    weight = torch.softmax(torch.randn(1, f * f, size, size, generator=g, dtype=dtype), 1)
    alpha = 1.5 * torch.randn(1, f * f, size, size, generator=g, dtype=dtype)
    beta = 1.5 * torch.randn(1, f * f, size, size, generator=g, dtype=dtype)
    return [t.to(device) for t in (x, weight, alpha, beta)]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _once(fn: Callable[[], object], device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def timed(fn: Callable[[], object], device: str, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    return statistics.median(_once(fn, device) for _ in range(repeats))


def timed_pair(base: Callable[[], object], ours: Callable[[], object], device: str, repeats: int,
               warmup: int = 1) -> tuple[float, float]:
    """Median seconds of both, their runs interleaved so that a change in machine load hits both alike."""
    for _ in range(warmup):
        base(), ours()
    runs = [(_once(base, device), _once(ours, device)) for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def copy_bandwidth(device: str) -> float:
    """Bytes per second of a large device-to-device copy (read + write counted)."""
    src = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = timed(lambda: dst.copy_(src), device, 10)
    return 2 * src.numel() * src.element_size() / seconds


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--channels", type=int, default=63)
    p.add_argument("--kernel-size", type=int, default=11)
    p.add_argument("--dilation", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    dev, dt = args.device, torch.float32
    x, w, a, b = make_inputs(args.size, args.channels, args.kernel_size, args.dilation, dev, dt)
    d = args.dilation

    ours_out, base_out = adacof(x, w, a, b, d), per_tap_gather(x, w, a, b, d)
    max_diff = float((ours_out - base_out).abs().max())

    def fwd_bwd(fn: Callable) -> Callable[[], object]:
        leaves = [t.clone().requires_grad_() for t in (x, w, a, b)]
        grad = torch.ones_like(ours_out)

        def run() -> object:
            for leaf in leaves:
                leaf.grad = None
            fn(*leaves, d).backward(grad)  # .backward(): the reentrant checkpoint refuses autograd.grad
            return [leaf.grad for leaf in leaves]

        return run

    rows = {}
    with torch.no_grad():
        rows["forward"] = timed_pair(lambda: per_tap_gather(x, w, a, b, d), lambda: adacof(x, w, a, b, d),
                                     dev, args.repeats, args.warmup)
    rows["forward + backward"] = timed_pair(fwd_bwd(per_tap_gather), fwd_bwd(adacof), dev, args.repeats,
                                            args.warmup)

    result: dict = {
        "problem": {"size": args.size, "channels": args.channels, "kernel_size": args.kernel_size,
                    "dilation": d, "dtype": "float32", "device": dev},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name() if dev == "cuda" else None},
        "max_abs_diff_vs_baseline": max_diff,
        "seconds": {k: {"per_tap_gather": v[0], "adacof_op": v[1], "speedup": v[0] / v[1]}
                    for k, v in rows.items()},
    }
    table = Table(title=f"AdaCoF op, {args.size}×{args.size}, F={args.kernel_size}, d={d}, "
                        f"{args.channels} channels, {dev}, {torch.get_num_threads()} thread(s)")
    for col in ("pass", "per-tap gather (s)", "adacof op (s)", "speed-up"):
        table.add_column(col, justify="right" if col != "pass" else "left")
    for k, (base, ours) in rows.items():
        table.add_row(k, f"{base:.4f}", f"{ours:.4f}", f"{base / ours:.1f}×")
    if dev == "cuda":
        bw = copy_bandwidth(dev)
        bytes_touched = sum(t.numel() * t.element_size() for t in (x, w, a, b, ours_out))
        floor = bytes_touched / bw
        result["bandwidth"] = {"copy_bytes_per_s": bw, "bytes_touched": bytes_touched, "floor_s": floor,
                               "forward_over_floor": rows["forward"][1] / floor}
        table.caption = (f"bandwidth floor {floor * 1e3:.3f} ms ({bytes_touched / 1e6:.1f} MB at "
                         f"{bw / 1e9:.0f} GB/s copy): forward at {rows['forward'][1] / floor:.1f}× the floor")
    Console().print(table)
    Console().print(f"max |op − baseline| = {max_diff:.2e}")
    if args.json:
        atomic_write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
