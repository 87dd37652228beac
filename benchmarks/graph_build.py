"""Graph construction speed vs Torch-Pruning, and shrinking a 25M-parameter ResNet-50-like model.

    .venv/bin/pip install --no-deps torch-pruning   # optional: the side-by-side column
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/graph_build.py [--repeat 3] [--out benchmarks/results]

For each model: ``ck.trace`` (fx trace with concrete values + union-find groups) and Torch-Pruning's
``DependencyGraph().build_dependency`` on the same model and inputs, best of ``--repeat`` runs, in one
process. Then ``ck.shrink`` of the ResNet-50-like model with half of every prunable group kept.
Results print as a rich table and are saved as JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import compresskit as ck  # noqa: E402
from compresskit.io import atomic_write_json  # noqa: E402

try:
    import torch_pruning as tp
except ImportError:  # the column is skipped
    tp = None


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + idt)


class ResNet50Like(nn.Module):
    """The ResNet-50 layout (He et al. 2016): stages of 3, 4, 6, 3 bottlenecks, 25.6M parameters."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        layers, cin = [], 64
        for i, (n, w) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
            blocks = []
            for b in range(n):
                blocks.append(Bottleneck(cin, w, 2 if (b == 0 and i > 0) else 1))
                cin = w * 4
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def best_of(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--exact", action="store_true", help="also run assert_shrink_exact on every model")
    args = ap.parse_args()
    from zoo import build

    torch.manual_seed(0)
    models: dict[str, tuple[nn.Module, tuple]] = {
        "resnet50-like (224px)": (ResNet50Like().eval(), (torch.randn(1, 3, 224, 224),)),
    }
    for name in ("densenet", "mobilenet_v3", "regnet", "unet2d", "shufflenet_v2", "two_frame_vfi"):
        models[name] = build(name)
    console = Console(width=140)
    try:  # the published VFI models, when the plugins are installed
        ck.load_plugins()
        for name, n_frames in (("adacof", 2), ("cdfi", 2), ("stmfnet_mini", 4)):
            if name in ck.list_models():
                frames = tuple(torch.rand(1, 3, 128, 128) for _ in range(n_frames))
                models[f"{name} (128px)"] = (ck.create_model(name).eval(), frames)
    except Exception as e:  # report, do not hide
        console.print(f"[yellow]VFI plugin models skipped: {type(e).__name__}: {e}[/]")
    if tp is None:
        console.print(
            "[yellow]torch-pruning is not installed: skipping its column "
            "(.venv/bin/pip install --no-deps torch-pruning)[/]"
        )
    table = Table(
        title=f"channel graph construction, best of {args.repeat} (s), {torch.get_num_threads()} thread(s)"
    )
    cols = ("model", "params", "ck groups", "ck.trace", "TP build_dependency", "ratio", "TP + get_all_groups")
    for col in cols:
        table.add_column(col, justify="right" if col != "model" else "left")
    rows = []
    for name, (model, inputs) in models.items():
        params = sum(p.numel() for p in model.parameters())
        graph = ck.trace(model, inputs)
        t_ck = best_of(lambda m=model, x=inputs: ck.trace(m, x), args.repeat)
        t_tp = t_tp_groups = None
        if tp is not None:
            try:
                t_tp = best_of(
                    lambda m=model, x=inputs: tp.DependencyGraph().build_dependency(m, example_inputs=x),
                    args.repeat,
                )
            except Exception as e:  # report, do not hide
                console.print(
                    f"[red]Torch-Pruning build_dependency failed on {name}: {type(e).__name__}: {e}[/]"
                )
        if t_tp is not None:
            try:
                dg = tp.DependencyGraph().build_dependency(model, example_inputs=inputs)
                t_tp_groups = t_tp + best_of(lambda dg=dg: list(dg.get_all_groups()), args.repeat)
            except Exception as e:  # report, do not hide
                console.print(
                    f"[red]Torch-Pruning get_all_groups failed on {name}: {type(e).__name__}: {e}[/]"
                )
        exact = None
        if args.exact:
            check = ck.testing.assert_shrink_exact(model, inputs, graph=graph)
            exact = check.max_rel_error
            console.print(
                f"{name}: exact, {check.params_before} -> {check.params_after} params, "
                f"max relative error {exact:.1e} ({check.dtype})"
            )
        rows.append(
            {
                "max_rel_error": exact,
                "model": name,
                "params": params,
                "groups": len(graph.groups),
                "prunable": len(graph.prunable_groups),
                "ck_trace_s": t_ck,
                "tp_build_s": t_tp,
                "tp_build_and_groups_s": t_tp_groups,
            }
        )
        table.add_row(
            name,
            f"{params / 1e6:.2f}M",
            f"{len(graph.prunable_groups)}/{len(graph.groups)}",
            f"{t_ck:.3f}",
            "-" if t_tp is None else f"{t_tp:.3f}",
            "-" if t_tp is None else f"{t_tp / t_ck:.2f}",
            "-" if t_tp_groups is None else f"{t_tp_groups:.3f}",
        )
    console.print(table)

    model, inputs = models["resnet50-like (224px)"]
    graph = ck.trace(model, inputs)
    keep = ck.testing.random_keep(graph, 0.5, seed=0)
    t_shrink = best_of(lambda: ck.shrink(model, graph, keep=keep), args.repeat)
    small = ck.shrink(model, graph, keep=keep)
    before, after = (sum(p.numel() for p in m.parameters()) for m in (model, small))
    console.print(
        f"shrink resnet50-like ({before / 1e6:.1f}M -> {after / 1e6:.1f}M params, "
        f"{len(keep)} groups at 50%): [bold]{t_shrink:.3f} s[/] (goal < 1 s)"
    )
    out = Path(args.out) / "graph_build.json"
    atomic_write_json(
        {
            "threads": torch.get_num_threads(),
            "repeat": args.repeat,
            "trace": rows,
            "shrink_resnet50": {"seconds": t_shrink, "params_before": before, "params_after": after},
        },
        out,
    )
    console.print(f"saved {out}")


if __name__ == "__main__":
    main()
