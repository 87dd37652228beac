"""Why a pruned model's convolutions fall less than its MACs on CPU: time per convolution, by width.

Two parts, one thread, channels-last, CPU time (``time.process_time``, what a call costs alone on a
shared machine), minimum of ``--repeats`` calls after a warm-up:

1. ``--widths``: a 3×3 convolution ``c → c`` at ``--size``² for each width ``c``: ms and GMAC/s. On a CPU
   with AVX-512 the time steps with the output channels in units of 16 (49 costs what 64 costs).
2. ``--pair BIG SMALL``: every convolution of two registered models, timed alone at the input size it
   sees in a forward at ``--input``²: total conv time and conv MACs of both, and each layer's ratio.

    .venv/bin/python benchmarks/conv_width_speed.py --quick
    .venv/bin/python benchmarks/conv_width_speed.py --pair adacof compressed_adacof --input 256
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch
from torch import nn

import compresskit as ck

CL = torch.channels_last


def cpu_ms(module: nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        module(x)
        best = float("inf")
        for _ in range(repeats):
            start = time.process_time()
            module(x)
            best = min(best, time.process_time() - start)
    return best * 1e3


def conv_macs(mod: nn.Module, shape: torch.Size) -> int:
    """MACs of one call: weight elements × output pixels (Conv2d) or × input pixels (ConvTranspose2d)."""
    h, w = shape[-2:]
    if isinstance(mod, nn.ConvTranspose2d):
        return mod.weight.numel() * h * w
    oh = (h + 2 * mod.padding[0] - mod.dilation[0] * (mod.kernel_size[0] - 1) - 1) // mod.stride[0] + 1
    ow = (w + 2 * mod.padding[1] - mod.dilation[1] * (mod.kernel_size[1] - 1) - 1) // mod.stride[1] + 1
    return mod.weight.numel() * oh * ow


def layers(model: nn.Module, n_inputs: int, size: int) -> dict[str, tuple[nn.Module, torch.Size]]:
    seen: dict[str, tuple[nn.Module, torch.Size]] = {}
    def record(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            seen.setdefault(name, (module, inputs[0].shape))

        return hook

    hooks = [m.register_forward_hook(record(n))
             for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.inference_mode():
        model(*(torch.rand(1, 3, size, size) for _ in range(n_inputs)))
    for h in hooks:
        h.remove()
    return seen


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="widths 40..64 at 128², no pair")
    p.add_argument("--widths", type=int, nargs="*", default=None)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--pair", nargs=2, metavar=("BIG", "SMALL"))
    p.add_argument("--inputs", type=int, default=2, help="frames the pair's models take")
    p.add_argument("--input", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    widths = args.widths if args.widths is not None else (
        [40, 44, 47, 48, 49, 50, 51, 56, 60, 63, 64] if args.quick or not args.pair else [])
    for c in widths:
        conv = nn.Conv2d(c, c, 3, padding=1).to(memory_format=CL)
        x = torch.rand(1, c, args.size, args.size).contiguous(memory_format=CL)
        ms = cpu_ms(conv, x, args.repeats)
        print(f"conv 3x3 {c:3d} -> {c:3d} at {args.size}²: {ms:6.1f} CPU-ms, "
              f"{conv_macs(conv, x.shape) / ms / 1e6:5.1f} GMAC/s")
    if args.pair:
        res = {}
        for name in args.pair:
            model = ck.create_model(name).eval()
            res[name] = {n: (cpu_ms(copy.deepcopy(m).to(memory_format=CL),
                                    torch.rand(s).contiguous(memory_format=CL), args.repeats),
                             conv_macs(m, s), tuple(s), m.out_channels)
                         for n, (m, s) in layers(model, args.inputs, args.input).items()}
        big, small = (res[n] for n in args.pair)
        tb, ts = (sum(v[0] for v in r.values()) for r in (big, small))
        mb, ms_ = (sum(v[1] for v in r.values()) for r in (big, small))
        print(f"{args.pair[1]} vs {args.pair[0]} at {args.input}²: conv {tb:.0f} -> {ts:.0f} CPU-ms "
              f"({tb / ts:.2f}x) for {mb / 1e9:.2f} -> {ms_ / 1e9:.2f} GMACs ({mb / ms_:.2f}x)")
        for n, b in big.items():
            s = small.get(n)
            if s:
                print(f"  {n}: {b[2][1]}->{b[3]} {b[0]:.1f} ms {b[1] / b[0] / 1e6:.0f} GMAC/s | "
                      f"{s[2][1]}->{s[3]} {s[0]:.1f} ms {s[1] / s[0] / 1e6:.0f} GMAC/s | "
                      f"time {b[0] / s[0]:.2f}x, MACs {b[1] / s[1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
