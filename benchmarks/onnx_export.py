"""Which models export to ONNX and match PyTorch in ONNX Runtime: the test zoo, the seven published VFI
models and a compressed version of each (every prunable channel group shrunk to a random half).

Each model goes through ``compresskit.deploy.export_onnx``: ``torch.export`` with dynamic batch and spatial
sizes where the model allows (falling back to batch-only, then static sizes, with the reason), custom ops
as standard ONNX ops (AdaCoF sampling as gathers, splatting as scatter-adds, correlation as shifted
products), then ONNX Runtime on the example inputs and on a second size, compared with PyTorch:
max |ONNX − PyTorch| ≤ 1e-4 + 1e-3 · max |PyTorch|. The table says, per model: exported or why not, the
ONNX input shape (names are dynamic dimensions), the largest error, the export time.

Quick mode (``--quick``): VFI models exported with static sizes (the dynamic export of the larger VFI
graphs takes minutes each on one CPU thread, in the exporter's symbolic shape analysis). Full mode: every
model dynamic. ``--part zoo|vfi|compressed`` runs one part (each under ~5 minutes in quick mode on a shared
2-core machine); ``--json`` merges the rows into a file.

    .venv/bin/python benchmarks/onnx_export.py --quick --part zoo --json docs/data/onnx_export.json
    .venv/bin/python benchmarks/onnx_export.py --quick --part vfi --json docs/data/onnx_export.json
    .venv/bin/python benchmarks/onnx_export.py --quick --part compressed --json docs/data/onnx_export.json
    .venv/bin/python benchmarks/onnx_export.py --json docs/data/onnx_export_full.json     # full
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import compresskit as ck
from compresskit.deploy.onnx import export_onnx, onnx_available
from compresskit.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
VFI = ("adacof", "adacof_plus", "cdfi", "compressed_adacof", "compressed_adacof_plus", "stmfnet",
       "stmfnet_mini")


def zoo_models():
    sys.path.insert(0, str(ROOT / "tests"))
    from zoo import ZOO, build

    for name in ZOO:
        yield f"zoo/{name}", (lambda name=name: build(name))


def vfi_inputs(name: str, size: int) -> tuple:
    gen = torch.Generator().manual_seed(0)
    n = 4 if name.startswith("stmfnet") else 2
    return tuple(torch.rand(1, 3, size, size, generator=gen) for _ in range(n))


def vfi_models(size: int):
    for name in VFI:
        yield name, (lambda name=name: (ck.create_model(name).eval(), vfi_inputs(name, size)))


def compressed(build):
    """The model with every prunable group shrunk to a random half of its units (as compress would)."""
    from compresskit.testing import random_keep

    model, inputs = build()
    graph = ck.trace(model, inputs)
    keep = random_keep(graph, 0.5, 0)
    return (ck.shrink(model, graph, keep=keep).eval() if keep else model), inputs


def run(rows: list[dict], name: str, build, dynamic: bool, console: Console) -> None:
    start = time.perf_counter()
    row = {"model": name, "dynamic_requested": dynamic}
    try:
        model, inputs = build()
        row["params"] = ck.report.count_params(model)
        with tempfile.TemporaryDirectory() as tmp:
            r = export_onnx(model, inputs, Path(tmp) / "m.onnx", dynamic=dynamic)
        row.update(ok=True, input_shape=r.input_shapes[0], checks=r.checks, notes=r.notes,
                   decomposed=r.decomposed,
                   max_abs_error=max((c["max_abs_error"] for c in r.checks if "ok" in c), default=None))
    except Exception as e:
        row.update(ok=False, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    row["seconds"] = round(time.perf_counter() - start, 1)
    rows.append(row)
    console.print(f"{name}: {'ok' if row['ok'] else row['error'][:200]} ({row['seconds']} s)")


def table(rows: list[dict]) -> Table:
    t = Table(title="ONNX export, checked in ONNX Runtime", title_justify="left")
    for col in ("model", "exports", "ONNX input", "max |error|", "s", "why not / notes"):
        t.add_column(col)
    for r in rows:
        shape = "×".join(map(str, r.get("input_shape", []))) or "-"
        err = "-" if r.get("max_abs_error") is None else f"{r['max_abs_error']:.1e}"
        why = r.get("error") or "; ".join(r.get("notes") or []) or ""
        t.add_row(r["model"], "yes" if r["ok"] else "no", shape, err, str(r["seconds"]), why[:160])
    return t


def markdown(rows: list[dict]) -> str:
    """The rows as the Markdown table of docs/deploy.md."""
    lines = ["| model | exports | ONNX input | max \\|error\\| | s | notes / why not |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        shape = "×".join(map(str, r.get("input_shape", []))) or "-"
        err = "-" if r.get("max_abs_error") is None else f"{r['max_abs_error']:.1e}"
        why = r.get("error") or "; ".join(r.get("notes") or [])
        if r.get("decomposed"):
            why = (why + "; " if why else "") + "as standard ops: " + ", ".join(r["decomposed"])
        if not r.get("dynamic_requested", True) and r["ok"]:
            why = (why + "; " if why else "") + "static sizes requested (quick mode)"
        lines.append(f"| {r['model']} | {'yes' if r['ok'] else 'no'} | {shape} | {err} | {r['seconds']} | "
                     f"{why.replace('|', '/')[:220]} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="VFI models with static sizes")
    p.add_argument("--part", choices=("zoo", "vfi", "compressed", "all"), default="all")
    p.add_argument("--size", type=int, default=64, help="VFI frame size (default 64)")
    p.add_argument("--only", action="append", help="only these models (exact: adacof, zoo/unet2d)")
    p.add_argument("--json", help="merge the rows into this JSON file")
    p.add_argument("--markdown", metavar="JSON", help="print this JSON file's rows as Markdown, exit")
    args = p.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())["rows"]))
        return 0
    if onnx_available():
        print(onnx_available())
        return 1
    torch.set_num_threads(1)
    console = Console()
    rows: list[dict] = []
    parts = ("zoo", "vfi", "compressed") if args.part == "all" else (args.part,)
    for part in parts:
        if part == "zoo":
            items = [(n, b, True) for n, b in zoo_models()]
        elif part == "vfi":
            items = [(n, b, not args.quick) for n, b in vfi_models(args.size)]
        else:
            items = [(f"{n} (compressed ½)", (lambda b=b: compressed(b)), not args.quick)
                     for n, b in vfi_models(args.size)]
        for name, build, dynamic in items:
            if args.only and name.removesuffix(" (compressed ½)") not in args.only:
                continue
            run(rows, name, build, dynamic, console)
    console.print(table(rows))
    if args.json:
        path = Path(args.json)
        old = json.loads(path.read_text()) if path.is_file() else {"rows": []}
        names = {r["model"] for r in rows}
        merged = [r for r in old.get("rows", []) if r["model"] not in names] + rows
        atomic_write_json({"torch": torch.__version__, "threads": 1, "rows": merged}, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
