"""Reliability cases of issue 24: what a careless or hostile user tries, and what compresskit does.

Every case is a small scenario (an awkward model, a crafted file, two runs on one folder, a kill...) run in
a child process (one per issue item, or one per case where a case may crash the interpreter or hang), and
its outcome is sorted into one of

* ``ok``            - it works as a user would expect,
* ``clear error``   - refused with an error that names the argument or file and what is wrong,
* ``crash``         - an unexpected exception, an error naming nothing, a segfault or a hang,
* ``silent wrong``  - it "succeeds" with a wrong result (a broken or larger model, a file that does not
  load, code from a file that ran, a poisoned checkpoint named as good),
* ``data lost``     - files of a run were deleted or replaced unasked.

Usage::

    python benchmarks/reliability_cases.py               # every case, a markdown table (about 3 minutes)
    python benchmarks/reliability_cases.py --items 2,12  # some items only
    python benchmarks/reliability_cases.py --json out.json --verbose

Each case is described by its name and checked against what the issue asks; the table is what
docs/reliability.md shows. Single-threaded, CPU only, small models: the numbers do not depend on speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Callable
from pathlib import Path

OUTCOMES = ("ok", "clear error", "crash", "silent wrong", "data lost")
ITEMS = {
    1: "saved models load (fresh process)", 2: "tied weights", 3: "non-finite checkpoints",
    4: "two runs on one out_dir", 5: "crafted files vs ck.load", 6: "failures after training",
    7: "paths the trace never saw", 8: "loaded = saved", 9: "clear errors", 10: "stale recipe stages",
    11: "job files run code", 12: "VFI patterns in the graph",
}
CASES: dict[int, list[tuple[str, Callable[[Path], tuple[str, str]], bool]]] = {i: [] for i in ITEMS}


def case(item: int, name: str, isolate: bool = False) -> Callable:
    """Register ``fn(tmp) -> (outcome, detail)`` as a case of ``item`` (``isolate``: own process)."""

    def deco(fn: Callable[[Path], tuple[str, str]]) -> Callable[[Path], tuple[str, str]]:
        CASES[item].append((name, fn, isolate))
        return fn

    return deco


# ------------------------------------------------------------------------------------------ helpers
def _torch():  # noqa: ANN202
    import torch

    torch.set_num_threads(1)
    return torch


def _net(c: int = 8):  # noqa: ANN202
    torch = _torch()
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.m, self.b = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(
                c, 3, 3, padding=1)

        def forward(self, x):  # noqa: ANN001, ANN202
            return self.b(torch.relu(self.m(torch.relu(self.a(x)))))

    return Net


def _batches(n: int = 3, shape: tuple = (2, 3, 8, 8), seed: int = 0) -> list:
    torch = _torch()
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)) for _ in range(n)]


def _l1(out, batch):  # noqa: ANN001, ANN202
    import torch.nn.functional as F

    o = out["frame"] if isinstance(out, dict) else out[0] if isinstance(out, tuple | list) else out
    return F.l1_loss(o, batch[1])


def _compress(model, batches, out_dir=None, target="1.5x params", steps=0, inputs=None, **kw):  # noqa: ANN001, ANN202
    import compresskit as ck
    from compresskit.config import CompressConfig

    cfg = CompressConfig(**{"target": target, "sparsify": {"steps": steps}, "recover": {"steps": steps},
                            "measure_latency": False, "progress": False, "out_dir": out_dir, **kw})
    return ck.compress(model, batches, _l1, inputs if inputs is not None else (batches[0][0],), config=cfg)


def _params(m) -> int:  # noqa: ANN001
    return sum(p.numel() for p in m.parameters())


def _error(e: BaseException, *words: str) -> tuple[str, str]:
    """``clear error`` when the message names one of ``words`` (the argument, the file, the module),
    else ``crash``."""
    msg = f"{type(e).__name__}: {e}".replace("\n", " ")
    if isinstance(e, ValueError | TypeError | RuntimeError | FloatingPointError | OSError) and any(
            w.lower() in msg.lower() for w in words):
        return "clear error", msg[:160]
    return "crash", msg[:160]


def _child(code: str, timeout: float, cwd: Path | None = None, mem_gb: float = 3.0) -> tuple[int | None, str]:
    """Run ``code`` in a fresh Python process; ``(returncode or None on timeout, output tail)``."""
    pre = ("import resource\n"
           f"resource.setrlimit(resource.RLIMIT_AS, ({int(mem_gb * 2**30)}, {int(mem_gb * 2**30)}))\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        p = subprocess.run([sys.executable, "-c", pre + code], capture_output=True, text=True,
                           timeout=timeout, cwd=cwd, env=env)
    except subprocess.TimeoutExpired:
        return None, f"no answer after {timeout:.0f} s"
    return p.returncode, (p.stdout + p.stderr).strip()[-4000:]


def _save_and_load_fresh(model, batches, tmp: Path, inputs=None) -> tuple[str, str]:  # noqa: ANN001
    torch = _torch()
    result = _compress(model, batches, inputs=inputs)
    path = tmp / "small.pt"
    try:
        result.save(path)
    except Exception as e:  # noqa: BLE001
        return _error(e, "save", "export", str(path))
    x = inputs if inputs is not None else (batches[0][0][:1],)
    with torch.no_grad():
        want = result.model.eval()(*x)
    torch.save({"x": x, "want": want}, tmp / "io.pt")
    rc, out = _child(textwrap.dedent(f"""
        import torch, compresskit as ck
        m = ck.load({str(path)!r})
        io = torch.load({str(tmp / 'io.pt')!r})
        with torch.no_grad():
            got = m(*io["x"])
        print("SAME" if torch.allclose(got, io["want"], atol=1e-5) else "DIFFERENT")
    """), 120)
    if rc == 0 and "SAME" in out:
        return "ok", "saved, loaded in a fresh process, same outputs"
    if rc == 0:
        return "silent wrong", "loaded but computes something else"
    return "silent wrong", "save reported success, the file does not load: " + out.splitlines()[-1][:140]


# ---------------------------------------------------------------------------- 1: saved models load
@case(1, "plain conv net")
def _c1a(tmp: Path) -> tuple[str, str]:
    return _save_and_load_fresh(_net()(), _batches(), tmp)


@case(1, "net resizing by a float factor (F.interpolate scale 0.5 / 2)")
def _c1b(tmp: Path) -> tuple[str, str]:
    torch = _torch()
    from torch import nn

    class Resize(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3, 3, padding=1)

        def forward(self, x):  # noqa: ANN001, ANN202
            y = nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
            y = torch.relu(self.a(y))
            y = nn.functional.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
            return self.b(y)

    return _save_and_load_fresh(Resize(), _batches(shape=(2, 3, 16, 16)), tmp)


@case(1, "two-frame net padding to a multiple of 32 and cropping back")
def _c1c(tmp: Path) -> tuple[str, str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from zoo import build

    model, inputs = build("two_frame_vfi")
    torch = _torch()
    batches = [((*inputs, torch.rand_like(inputs[0]))) for _ in range(2)]

    def loss(out, b):  # noqa: ANN001, ANN202
        return (out - b[-1]).abs().mean()

    import compresskit as ck
    from compresskit.config import CompressConfig

    cfg = CompressConfig(target="1.5x params", sparsify={"steps": 0}, recover={"steps": 0},
                         measure_latency=False, progress=False)
    result = ck.compress(model, batches, loss, inputs, config=cfg, inputs_fn=lambda b: b[:2])
    path = tmp / "small.pt"
    try:
        result.save(path)
    except Exception as e:  # noqa: BLE001
        return _error(e, "save", "export")
    with torch.no_grad():
        want = result.model.eval()(*inputs)
    torch.save({"x": inputs, "want": want}, tmp / "io.pt")
    rc, out = _child(f"import torch, compresskit as ck\nm = ck.load({str(path)!r})\n"
                     f"io = torch.load({str(tmp / 'io.pt')!r})\n"
                     "print('SAME' if torch.allclose(m(*io['x']), io['want'], atol=1e-5) else 'DIFF')", 120)
    if rc == 0 and "SAME" in out:
        return "ok", "saved, loaded in a fresh process, same outputs"
    return "silent wrong", "save reported success, the file does not load: " + out.splitlines()[-1][:140]


# ------------------------------------------------------------------------------------ 2: tied weights
def _tied():  # noqa: ANN202
    torch = _torch()
    from torch import nn

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.s1, self.s2 = (nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1),
                                           nn.Conv2d(8, 8, 3, padding=1))
            self.s2.weight = self.s1.weight
            self.head = nn.Conv2d(8, 3, 1)

        def forward(self, x):  # noqa: ANN001, ANN202
            return self.head(torch.relu(self.s2(torch.relu(self.s1(torch.relu(self.stem(x)))))))

    return Tied()


@case(2, "two convs sharing one weight, plan.verify=False")
def _c2a(tmp: Path) -> tuple[str, str]:
    model = _tied()
    try:
        r = _compress(model, _batches(), plan={"verify": False})
    except Exception as e:  # noqa: BLE001
        return _error(e, "target", "tied", "shared")
    if r.model.s1.weight is not r.model.s2.weight or _params(r.model) >= _params(model):
        return "silent wrong", f"untied: {_params(r.model)} params vs {_params(model)} before"
    return "ok", f"one tensor kept, {_params(model)} -> {_params(r.model)} params"


@case(2, "embedding tied to the output head, shrunk")
def _c2b(tmp: Path) -> tuple[str, str]:
    torch = _torch()
    from torch import nn

    import compresskit as ck

    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.mid = nn.Embedding(40, 12), nn.Linear(12, 12)
            self.head = nn.Linear(12, 40, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, t):  # noqa: ANN001, ANN202
            return self.head(torch.relu(self.mid(self.emb(t))))

    model, t = LM().eval(), torch.randint(0, 40, (2, 7))
    g = ck.trace(model, t)
    keep = {grp.id: torch.arange(grp.size // 2) for grp in g.prunable_groups}
    try:
        small = ck.shrink(model, g, keep=keep)
        small(t)
    except Exception as e:  # noqa: BLE001
        return _error(e, "keep", "group")
    if small.emb.weight is not small.head.weight:
        return "silent wrong", "embedding and head come out at different widths"
    return "ok", f"one tensor {tuple(small.emb.weight.shape)}"


@case(2, "unreachable target message after a corrected budget")
def _c2c(tmp: Path) -> tuple[str, str]:
    import re

    torch = _torch()
    import compresskit as ck
    from compresskit.plan.cost import params_cost
    from compresskit.plan.planner import plan_for_target

    model = _tied().eval()
    g = ck.trace(model, torch.randn(1, 3, 8, 8))
    ones = {gr.id: torch.ones(gr.size, dtype=torch.float64) for gr in g.prunable_groups}
    try:
        plan_for_target(g, params_cost(model, g), ones, "1.2x params", budget=10.0)
    except ValueError as e:
        found = [float(v) for v in re.findall(r"([0-9.]+)x at most", str(e))]
        if any(v >= 1.2 for v in found):
            return "silent wrong", f"says 1.2x is unreachable and {found[0]}x at most"
        return "clear error", str(e)[:160]
    return "crash", "no error for an unreachable budget"


# ------------------------------------------------------------------------ 3: non-finite checkpoints
@case(3, "finite loss, NaN gradient: checkpoints and the 'last good' one")
def _c3a(tmp: Path) -> tuple[str, str]:
    torch = _torch()
    from torch import nn

    from compresskit.config import TrainConfig
    from compresskit.training import checkpoint as ckpt
    from compresskit.training.loop import train

    data = [(torch.randn(4, 3), torch.randn(4, 2), torch.tensor(0.0 if i == 3 else 1.0)) for i in range(6)]

    def loss(y, b):  # noqa: ANN001, ANN202
        return torch.sqrt(b[2] * ((y - b[1]) ** 2).sum())  # finite; its gradient at s=0 is 0*inf = NaN

    cfg = TrainConfig(steps=6, optimizer="adam", lr=1e-2, checkpoint_every=1, keep_last=10, progress=False)
    try:
        train(nn.Linear(3, 2), data, loss, config=cfg, out_dir=tmp, inputs_fn=lambda b: (b[0],))
    except FloatingPointError as e:
        bad = [p.name for p in ckpt.list_checkpoints(tmp)
               if any(not torch.isfinite(v).all() for v in ckpt.load_checkpoint(p)["model"].values())]
        if bad:
            return "data lost", f"NaN weights checkpointed ({', '.join(bad)}); every resume fails"
        return "clear error", str(e)[:160]
    return "silent wrong", "training finished on NaN gradients"


@case(3, "resume after the data is fixed")
def _c3b(tmp: Path) -> tuple[str, str]:
    torch = _torch()
    from torch import nn

    from compresskit.config import TrainConfig
    from compresskit.training.loop import train

    def loss(y, b):  # noqa: ANN001, ANN202
        return torch.sqrt(b[2] * ((y - b[1]) ** 2).sum())

    g = torch.Generator().manual_seed(0)
    raw = [(torch.randn(4, 3, generator=g), torch.randn(4, 2, generator=g)) for _ in range(6)]
    cfg = TrainConfig(steps=6, optimizer="adam", lr=1e-2, checkpoint_every=1, keep_last=10, progress=False)
    bad = [(x, t, torch.tensor(0.0 if i == 3 else 1.0)) for i, (x, t) in enumerate(raw)]
    good = [(x, t, torch.tensor(1.0)) for x, t in raw]
    with contextlib.suppress(FloatingPointError):
        train(nn.Linear(3, 2), bad, loss, config=cfg, out_dir=tmp, inputs_fn=lambda b: (b[0],))
    try:
        m = nn.Linear(3, 2)
        train(m, good, loss, config=cfg, out_dir=tmp, inputs_fn=lambda b: (b[0],))
    except FloatingPointError as e:
        return "data lost", "the resumed run fails again: " + str(e)[:120]
    if not all(torch.isfinite(p).all() for p in m.parameters()):
        return "silent wrong", "resumed to NaN weights"
    return "ok", "resumed from the last finite checkpoint"


# --------------------------------------------------------------------------- 4: two runs, one folder
_SLOW_RUN = textwrap.dedent("""
    import sys, time, torch
    from torch import nn
    import compresskit as ck
    torch.set_num_threads(1)
    data = [(torch.randn(4, 3), torch.randn(4, 2)) for _ in range(40)]
    def loss(y, b):
        time.sleep(0.25)
        return ((y - b[1]) ** 2).mean()
    ck.train(nn.Linear(3, 2), data, loss, config=ck.TrainConfig(steps=40, checkpoint_every=1, progress=False),
             out_dir=sys.argv[1])
    print("FIRST RUN DONE")
""")


def _start_slow_run(folder: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _SLOW_RUN, str(folder)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.monotonic() + 60
    while not list(folder.glob("ckpt-step*.pt")) and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.1)
    return p


@case(4, "a second ck.train on the folder of a live run")
def _c4a(tmp: Path) -> tuple[str, str]:
    torch = _torch()
    from torch import nn

    import compresskit as ck

    p = _start_slow_run(tmp)
    try:
        data = [(torch.randn(4, 3), torch.randn(4, 2)) for _ in range(3)]
        ck.train(nn.Linear(3, 2), data, lambda y, b: ((y - b[1]) ** 2).mean(),
                 config=ck.TrainConfig(steps=3, checkpoint_every=1, progress=False), out_dir=tmp)
    except Exception as e:  # noqa: BLE001
        return _error(e, "in use", "lock", str(tmp))
    finally:
        p.kill()
        out = p.communicate()[0]
    return "data lost", "both runs wrote into one folder (the second deleted the first's checkpoints)" + (
        "; the first run failed" if "Error" in out else "")


@case(4, "start-up clean-up next to a live run's temp file")
def _c4b(tmp: Path) -> tuple[str, str]:
    from compresskit.io import remove_stale_temps

    p = _start_slow_run(tmp)
    try:
        temp = tmp / ".ckpt-step00000099.pt.abcd1234.tmp"  # a write of the live run, in flight
        temp.write_bytes(b"half")
        remove_stale_temps(tmp)
        if not temp.exists():
            return "data lost", "the live run's in-flight temp file was deleted"
        return "ok", "left alone (the folder is held by a live run)"
    finally:
        p.kill()
        p.communicate()


@case(4, "rerun in a used folder with another target")
def _c4c(tmp: Path) -> tuple[str, str]:
    Net = _net()
    _compress(Net(), _batches(), out_dir=tmp, target="2x params")
    before = (tmp / "compressed.pt").read_bytes()
    try:
        _compress(Net(), _batches(), out_dir=tmp, target="1.5x params")
    except Exception as e:  # noqa: BLE001
        return _error(e, "target", "out_dir")
    if (tmp / "compressed.pt").read_bytes() != before:
        return "data lost", "compressed.pt and the report replaced without a word"
    return "ok", "kept"


@case(4, "rerun with another target and resume=False (asked for)")
def _c4d(tmp: Path) -> tuple[str, str]:
    Net = _net()
    _compress(Net(), _batches(), out_dir=tmp, target="2x params")
    try:
        r = _compress(Net(), _batches(), out_dir=tmp, target="1.5x params", resume=False)
    except Exception as e:  # noqa: BLE001
        return _error(e, "target")
    return ("ok", "started afresh") if "1.5" in str(r.report.target) else ("silent wrong", "old target kept")


# --------------------------------------------------------------------------------- 5: crafted files
def _crafted_program(tmp: Path, expr: str) -> Path:
    torch = _torch()
    Net = _net()
    r = _compress(Net(), _batches())
    path = r.save(tmp / "ok.pt")
    data = torch.load(path, weights_only=True)
    if "program" not in data:
        raise RuntimeError("no program in the file")
    doc = json.loads(bytes(data["program"]["json"]).decode())
    done = []

    def walk(o):  # noqa: ANN001, ANN202
        if isinstance(o, dict):
            for k, v in o.items():
                if k == "expr_str" and isinstance(v, str) and not done:
                    o[k] = expr
                    done.append(k)
                else:
                    walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(doc)
    if not done:
        raise RuntimeError("no size expression in the program")
    data["program"]["json"] = json.dumps(doc).encode()
    out = tmp / "crafted.pt"
    torch.save(data, out)
    return out


def _load_crafted(tmp: Path, expr: str) -> tuple[str, str]:
    try:
        path = _crafted_program(tmp, expr)
    except Exception as e:  # noqa: BLE001
        return "ok", f"could not craft the file here ({e})"
    t0 = time.monotonic()
    rc, out = _child(f"import compresskit as ck\nck.load({str(path)!r})\nprint('LOADED')", 30, mem_gb=2.0)
    if rc is None:
        return "crash", "ck.load still busy after 30 s"
    if rc == 0:
        return "silent wrong", "the crafted file loaded"
    last = out.splitlines()[-1] if out else ""
    if "UnsafeFileError" in out or "ValueError: load:" in out:
        return "clear error", f"{last[:140]} ({time.monotonic() - t0:.0f} s)"
    return "crash", last[:160]


@case(5, "size expression 10**10**12 in a program file", isolate=True)
def _c5a(tmp: Path) -> tuple[str, str]:
    return _load_crafted(tmp, "10**10**12")


@case(5, "size expression nested 3000 deep", isolate=True)
def _c5b(tmp: Path) -> tuple[str, str]:
    return _load_crafted(tmp, "Add(" * 3000 + "Symbol('s0')" + ", Integer(1))" * 3000)


# --------------------------------------------------------------------------- 6: after the training
def _two_heads(kind: str):  # noqa: ANN202
    torch = _torch()
    Net = _net()

    class Heads(Net):
        def __init__(self) -> None:
            super().__init__()
            self.flow = torch.nn.Conv2d(8, 2, 3, padding=1)

        def forward(self, x):  # noqa: ANN001, ANN202
            h = torch.relu(self.m(torch.relu(self.a(x))))
            if kind == "dict":
                return {"frame": self.b(h), "flow": self.flow(h)}
            return self.b(h), [self.flow(h)]

    return Heads()


@case(6, "model returning a dict, through recovery")
def _c6a(tmp: Path) -> tuple[str, str]:
    try:
        r = _compress(_two_heads("dict"), _batches(), steps=2)
    except Exception as e:  # noqa: BLE001
        return _error(e, "model", "output")
    return "ok", f"{type(r.model(_batches()[0][0])).__name__} output"


@case(6, "model returning a tuple with a list, through recovery")
def _c6b(tmp: Path) -> tuple[str, str]:
    try:
        _compress(_two_heads("tuple"), _batches(), steps=2)
    except Exception as e:  # noqa: BLE001
        return _error(e, "model", "output")
    return "ok", "compressed"


@case(6, "forward taking a dict")
def _c6c(tmp: Path) -> tuple[str, str]:
    import compresskit as ck
    from compresskit.config import CompressConfig

    Net = _net()

    class DictIn(Net):
        def forward(self, d):  # noqa: ANN001, ANN202
            return super().forward(d["x"])

    batches = [({"x": x}, t) for x, t in _batches()]
    cfg = CompressConfig(target="1.5x params", sparsify={"steps": 2}, recover={"steps": 2},
                         measure_latency=False, progress=False)
    trained = []

    def loss(o, b):  # noqa: ANN001, ANN202
        trained.append(1)
        return _l1(o, b)

    try:
        ck.compress(DictIn(), batches, loss, (batches[0][0],), config=cfg, inputs_fn=lambda b: (b[0],))
    except Exception as e:  # noqa: BLE001
        if trained:
            return "data lost", f"failed after training ({type(e).__name__}: {str(e)[:100]})"
        return _error(e, "example_inputs", "dict", "inputs")
    return "ok", "compressed"


def _train_only(kind: str = "aux"):  # noqa: ANN202
    torch = _torch()
    Net = _net()

    class TrainOnly(Net):
        def __init__(self) -> None:
            super().__init__()
            self.aux, self.n = torch.nn.Conv2d(8, 3, 1), torch.nn.Conv2d(8, 8, 3, padding=1)
            self.register_buffer("ema", torch.zeros(8))

        def forward(self, x):  # noqa: ANN001, ANN202
            h1 = torch.relu(self.a(x))
            h2 = torch.relu(self.m(h1))
            out = self.b(torch.relu(self.n(h2)))
            if self.training and kind == "aux":
                out = out + 0.1 * self.aux(h1)
            if self.training and kind == "ema":
                with torch.no_grad():
                    self.ema.mul_(0.9).add_(0.1 * h2.mean((0, 2, 3)))
            return out

    return TrainOnly()


@case(6, "auxiliary head used only in train mode")
def _c6d(tmp: Path) -> tuple[str, str]:
    try:
        r = _compress(_train_only("aux"), _batches(), steps=2, target="1.1x params")
        r.model.train()(_batches()[0][0])
    except Exception as e:  # noqa: BLE001
        return _error(e, "train mode", "aux")
    return "ok", "compressed; the channels the head reads kept"


@case(6, "EMA buffer updated only in train mode")
def _c6e(tmp: Path) -> tuple[str, str]:
    torch = _torch()
    Net = _net()

    class Ema(Net):  # a, m, b and an EMA of m's channels, updated in train mode
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("ema", torch.zeros(8))

        def forward(self, x):  # noqa: ANN001, ANN202
            h = torch.relu(self.m(torch.relu(self.a(x))))
            if self.training:
                with torch.no_grad():
                    self.ema.mul_(0.9).add_(0.1 * h.mean((0, 2, 3)))
            return self.b(h)

    try:
        r = _compress(Ema(), _batches(), steps=2, target="2x params")
        r.model.train()(_batches()[0][0])  # fine-tuning it later runs train mode too
    except Exception as e:  # noqa: BLE001
        return _error(e, "train mode", "ema")
    return "ok", "compressed; the channels the buffer follows kept"


# ------------------------------------------------------------------- 7: paths the trace never saw
@case(7, "data-dependent branch, every batch on one side")
def _c7a(tmp: Path) -> tuple[str, str]:
    torch = _torch()
    Net = _net()

    class Branch(Net):
        def __init__(self) -> None:
            super().__init__()
            self.alt = torch.nn.Conv2d(8, 3, 3, padding=1)

        def forward(self, x):  # noqa: ANN001, ANN202
            h = torch.relu(self.m(torch.relu(self.a(x))))
            return self.b(h) if x.mean().item() > -5 else self.alt(h)

    r = _compress(Branch(), _batches(), target="1.3x params")
    noted = [n for n in r.report.notes if "data-dependent" in n]
    try:
        r.model(torch.full((1, 3, 8, 8), -10.0))
        other = "the other branch runs"
    except Exception:  # noqa: BLE001
        other = "the other branch fails"
    if noted:
        return "ok", f"{other}; the report says so: {noted[0][:90]}"
    return "silent wrong", f"{other}, and the report says nothing"


# -------------------------------------------------------------------------------- 8: loaded = saved
@case(8, "weights of the wrong shape in a saved file")
def _c8a(tmp: Path) -> tuple[str, str]:
    torch = _torch()
    import compresskit as ck

    r = _compress(_net()(), _batches())
    path = r.save(tmp / "m.pt")
    data = torch.load(path, weights_only=True)
    key = next(k for k in data["state_dict"] if k.endswith("weight"))
    data["state_dict"][key] = torch.zeros(1, 1)
    torch.save(data, tmp / "bad.pt")
    try:
        m = ck.load(tmp / "bad.pt")
    except Exception as e:  # noqa: BLE001
        return _error(e, "shape", key, "bad.pt")
    try:
        m(_batches()[0][0])
    except Exception as e:  # noqa: BLE001
        return "crash", f"loaded, failed at the first call: {type(e).__name__}"
    return "silent wrong", "loaded and ran with a wrong weight"


@case(8, "saved file mode under umask 022")
def _c8b(tmp: Path) -> tuple[str, str]:
    r = _compress(_net()(), _batches())
    old = os.umask(0o022)
    try:
        path = r.save(tmp / "m.pt")
    finally:
        os.umask(old)
    mode = path.stat().st_mode & 0o777
    return ("ok", "0644") if mode == 0o644 else ("silent wrong", f"mode {oct(mode)} ignores the umask")


@case(8, "loaded LSTM on another sequence length")
def _c8c(tmp: Path) -> tuple[str, str]:
    torch = _torch()
    from torch import nn

    import compresskit as ck
    from compresskit.config import CompressConfig

    class Seq(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.mid = nn.Linear(4, 16), nn.Linear(16, 8)
            self.lstm, self.out = nn.LSTM(8, 8, batch_first=True), nn.Linear(8, 4)

        def forward(self, x):  # noqa: ANN001, ANN202
            return self.out(self.lstm(self.mid(torch.relu(self.inp(x))))[0])

    data = [(torch.randn(2, 5, 4), torch.randn(2, 5, 4)) for _ in range(2)]
    cfg = CompressConfig(target="1.2x params", sparsify={"steps": 0}, recover={"steps": 0},
                         measure_latency=False, progress=False)
    try:
        r = ck.compress(Seq(), data, _l1, (data[0][0],), config=cfg)
        m = ck.load(r.save(tmp / "s.pt"))
    except Exception as e:  # noqa: BLE001
        return _error(e, "lstm", "save", "export", "target")
    try:
        m(torch.randn(1, 9, 4))
    except Exception as e:  # noqa: BLE001
        outcome, detail = _error(e, "outside what", "exported for")  # saying so is the least (item 8)
        return outcome, f"only the example length loads: {detail}"
    return "ok", "other lengths run"


# ------------------------------------------------------------------------------------ 9: errors
@case(9, "model on the meta device")
def _c9a(tmp: Path) -> tuple[str, str]:
    model = _net()().to("meta")
    try:
        _compress(model, _batches())
    except Exception as e:  # noqa: BLE001
        return _error(e, "model")  # names the argument (the raw torch message names a tensor)
    return "silent wrong", "compressed a model without weights"


@case(9, "integer example inputs to a conv net")
def _c9b(tmp: Path) -> tuple[str, str]:
    torch = _torch()
    batches = [(torch.randint(0, 255, (2, 3, 8, 8)), torch.randn(2, 3, 8, 8)) for _ in range(2)]
    try:
        _compress(_net()(), batches)
    except Exception as e:  # noqa: BLE001
        return _error(e, "example_inputs", "train_loader", "integer")
    return "ok", "converted"


@case(9, "ck.load of an empty file")
def _c9c(tmp: Path) -> tuple[str, str]:
    import compresskit as ck

    (tmp / "empty.pt").write_bytes(b"")
    try:
        ck.load(tmp / "empty.pt")
    except Exception as e:  # noqa: BLE001
        return _error(e, "empty.pt", "empty")
    return "silent wrong", "loaded nothing"


@case(9, "model with the old torch.nn.utils.weight_norm")
def _c9d(tmp: Path) -> tuple[str, str]:
    import warnings

    from torch import nn

    model = _net()()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.m = nn.utils.weight_norm(model.m)
    try:
        _compress(model, _batches())
    except Exception as e:  # noqa: BLE001
        return _error(e, "model:", "model ")  # (torch's own message says "module")
    return "ok", "compressed"


@case(9, "the command an error message points to exists")
def _c9e(tmp: Path) -> tuple[str, str]:
    exe = Path(sys.executable).parent / "compresskit"
    if not exe.exists():
        return "ok", "no console script here"
    p = subprocess.run([str(exe), "list-models"], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        return "crash", "`compresskit list-models` (named by compresskit-vfi's errors) does not exist"
    return "ok", "exists"


# ------------------------------------------------------------------------------ 10: recipe stages
@case(10, "recipe stage rerun with another learning rate")
def _c10a(tmp: Path) -> tuple[str, str]:
    import inspect
    from types import SimpleNamespace

    try:
        from compresskit_vfi import recipe
    except ImportError:
        return "ok", "compresskit-vfi not installed"
    base = getattr(recipe, "RecipeStage", None)
    if base is None:  # the old markers: done.pt with no fingerprint
        read = getattr(recipe, "read_done", None)
        if read is not None and "fingerprint" not in inspect.signature(read).parameters:
            return "silent wrong", "done.pt holds no fingerprint: a rerun with another lr reuses the stage"
        return "ok", "no stage markers"
    from compresskit.pipeline import StageStore, run_stages

    runs = []

    class Train(base):  # a recipe stage that reads the learning rate, as the CDFI/Mini ones declare
        name, fields = "train", ("lr",)

        def run(self, state):  # noqa: ANN001, ANN202
            runs.append(state.cfg.lr)
            return {"lr": state.cfg.lr}

        def restore(self, state, payload):  # noqa: ANN001, ANN202
            pass

    for lr in (1e-3, 1e-3, 2e-3):
        cfg = SimpleNamespace(lr=lr, smoke=False, model_dump=lambda mode="json", lr=lr: {"lr": lr})
        state = SimpleNamespace(cfg=cfg, fingerprints={})
        run_stages([Train()], state, StageStore(tmp))
    if runs == [1e-3, 2e-3]:
        return "ok", "same settings restored, a changed lr redoes the stage"
    return "silent wrong", f"stage runs for lr 1e-3, 1e-3, 2e-3: {runs}"


# ---------------------------------------------------------------------------------- 11: job files
@case(11, "job file naming os:system as the model factory")
def _c11a(tmp: Path) -> tuple[str, str]:
    exe = Path(sys.executable).parent / "compresskit"
    marker = tmp / "PWNED"
    job = {"model": {"name": "os:system", "kwargs": {"command": f"touch {marker}"}},
           "data": {"factory": "os:getcwd"}}
    (tmp / "job.json").write_text(json.dumps(job))
    p = subprocess.run([str(exe), "compress", str(tmp / "job.json"), "--out", str(tmp / "out")],
                       capture_output=True, text=True, timeout=120)
    if marker.exists():
        return "silent wrong", "the shell command ran"
    if p.returncode != 0 and "trusted" in (p.stdout + p.stderr):
        return "clear error", (p.stdout + p.stderr).strip().splitlines()[-1][:160]
    return "crash", (p.stdout + p.stderr).strip()[-160:]


# -------------------------------------------------------------------------------- 12: VFI patterns
def _zoo(name: str):  # noqa: ANN202
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import zoo

    if name not in zoo.ZOO:
        return None
    return zoo.build(name)


def _exact(name: str, method: str = "auto") -> tuple[str, str]:
    built = _zoo(name)
    if built is None:
        return "crash", f"no zoo model {name}"
    import compresskit as ck

    model, inputs = built
    try:
        g = ck.trace(model, inputs, method=method)
        keep = {grp.id: list(range(max(1, grp.size // 2))) for grp in g.prunable_groups if grp.size > 1}
        small = ck.shrink(model, g, keep=keep)
        small(*inputs)
        ck.testing.assert_shrink_exact(model, inputs, graph=g)
    except AssertionError as e:
        return "silent wrong", str(e).splitlines()[0][:160]
    except Exception as e:  # noqa: BLE001
        return "crash", f"{type(e).__name__}: {str(e)[:140]}"
    return "ok", f"{len(g.prunable_groups)} prunable groups, exact ({g.method})"


@case(12, "UPR-Net-like layer shared by a tracked and an untracked input")
def _c12a(tmp: Path) -> tuple[str, str]:
    torch = _torch()
    from torch import nn

    import compresskit as ck

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pre0, self.pre1 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
            self.shared, self.out = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(16, 3, 3, padding=1)

        def forward(self, a, b):  # noqa: ANN001, ANN202
            f1 = torch.fft.ifft2(torch.fft.fft2(self.pre1(b))).real
            return self.out(torch.cat([self.shared(torch.relu(self.pre0(a))), self.shared(f1)], 1))

    model, x = Shared().eval(), (torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8))
    g = ck.trace(model, x)
    keep = {grp.id: list(range(grp.size // 2)) for grp in g.prunable_groups}
    try:
        ck.shrink(model, g, keep=keep)(*x)
    except Exception as e:  # noqa: BLE001
        return "silent wrong", f"ck.shrink built a broken model: {type(e).__name__}"
    return "ok", "the shared layer's inputs kept"


@case(12, "XVFI-like torch.autograd.Variable(x) in forward", isolate=True)
def _c12b(tmp: Path) -> tuple[str, str]:
    code = textwrap.dedent("""
        import torch, compresskit as ck
        from torch import nn
        class V(nn.Module):
            def __init__(self):
                super().__init__(); self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3, 1)
            def forward(self, x):
                return self.b(torch.autograd.Variable(self.a(x)))
        g = ck.trace(V(), torch.randn(1, 3, 8, 8))
        print("TRACED", g.method, len(g.prunable_groups))
    """)
    rc, out = _child(code, 120)
    if rc is not None and rc < 0:
        return "crash", f"the process died (signal {-rc})"
    if rc == 0:
        return "ok", out.splitlines()[-1]
    return "crash", out.splitlines()[-1][:160] if out else f"exit {rc}"


@case(12, "in-place slice assignment x[..., a:b] = y (fx)")
def _c12c(tmp: Path) -> tuple[str, str]:
    return _exact("inplace_write", "fx") if _zoo("inplace_write") else ("crash", "no fx path")


@case(12, "torch.tensor(<a size>) in forward (fx)")
def _c12d(tmp: Path) -> tuple[str, str]:
    torch = _torch()
    from torch import nn

    import compresskit as ck

    class T(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3, 1)

        def forward(self, x):  # noqa: ANN001, ANN202
            return self.b(torch.relu(self.a(x))) * torch.tensor(x.shape[-2:]).float().mean()

    try:
        g = ck.trace(T(), torch.randn(1, 3, 8, 8), method="fx")
    except Exception as e:  # noqa: BLE001
        return "crash", f"fx: {type(e).__name__}: {str(e)[:120]}"
    return "ok", f"{len(g.prunable_groups)} prunable groups"


@case(12, "EMA-VFI-like branch on .item(): said in the graph")
def _c12e(tmp: Path) -> tuple[str, str]:
    built = _zoo("item_branch")
    if built is None:
        return "silent wrong", "no model"
    import compresskit as ck

    g = ck.trace(*built)
    branches = getattr(g, "data_branches", [])
    return ("ok", branches[0][:120]) if branches else ("silent wrong", "the decision is not reported")


@case(12, "F.instance_norm and copy_ have channel rules")
def _c12f(tmp: Path) -> tuple[str, str]:
    torch = _torch()
    from torch import nn

    import compresskit as ck

    class N(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.m = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 3, 1)

        def forward(self, x):  # noqa: ANN001, ANN202
            y = nn.functional.instance_norm(self.a(x))
            z = torch.empty_like(y)
            z.copy_(y)
            return self.b(torch.relu(self.m(z)))

    g = ck.trace(N(), torch.randn(1, 3, 8, 8))
    frozen = [r for grp in g.groups for r in grp.reasons if "no channel rule" in r]
    if frozen:
        return "silent wrong", f"{len(frozen)} groups frozen without a rule: {frozen[0][:80]}"
    return _exact("instance_norm_copy") if _zoo("instance_norm_copy") else ("ok", "rules exist")


@case(12, "tracing leaves no tracer objects in shape-keyed caches")
def _c12g(tmp: Path) -> tuple[str, str]:
    torch = _torch()
    from torch import nn

    import compresskit as ck

    class C(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.grid = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3, 1), {}

        def forward(self, x):  # noqa: ANN001, ANN202
            k = tuple(x.shape[-2:])
            if k not in self.grid:
                self.grid[k] = torch.zeros(1, 1, *k)
            return self.b(torch.relu(self.a(x))) + self.grid[k]

    m = C()
    ck.trace(m, torch.randn(1, 3, 8, 8), method="fx")
    left = [type(v).__name__ for v in m.grid.values() if type(v) is not torch.Tensor]
    if left:
        return "silent wrong", f"the model's cache holds {left[0]} after tracing"
    return "ok", "cache untouched"


# ------------------------------------------------------------------------------------------ runner
def run_case(item: int, index: int) -> dict:
    name, fn, _ = CASES[item][index]
    with tempfile.TemporaryDirectory() as d:
        try:
            outcome, detail = fn(Path(d))
        except Exception as e:  # noqa: BLE001
            outcome, detail = "crash", f"{type(e).__name__}: {e}".replace("\n", " ")[:160]
            if os.environ.get("RELIABILITY_DEBUG"):
                traceback.print_exc()
    return {"item": item, "case": name, "outcome": outcome, "detail": detail}


def _run_child(args: list[str], timeout: float) -> tuple[list[dict], str | None]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        p = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout,
                           env=env)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        rows = [json.loads(x[5:]) for x in out.splitlines() if x.startswith("CASE ")]
        return rows, f"hang ({timeout:.0f} s)"
    rows = [json.loads(x[5:]) for x in p.stdout.splitlines() if x.startswith("CASE ")]
    died = None if p.returncode == 0 else (f"signal {-p.returncode}" if p.returncode < 0 else
                                           (p.stderr.strip().splitlines() or ["exit"])[-1][:120])
    return rows, died


def run_item(item: int, timeout: float) -> list[dict]:
    rows: list[dict] = []
    plain = [k for k, (_, _, iso) in enumerate(CASES[item]) if not iso]
    if plain:
        got, died = _run_child(["--child", f"{item}:" + ",".join(map(str, plain))], timeout)
        rows += got
        for k in plain[len(got):]:
            rows.append({"item": item, "case": CASES[item][k][0], "outcome": "crash",
                         "detail": f"the process running it ended: {died}"})
    for k, (name, _, iso) in enumerate(CASES[item]):
        if iso:
            got, died = _run_child(["--child", f"{item}:{k}"], timeout)
            rows += got or [{"item": item, "case": name, "outcome": "crash",
                             "detail": f"process ended: {died}"}]
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| item | what | cases | ok | clear errors | crashes | silent wrong | data lost |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    total = dict.fromkeys(OUTCOMES, 0)
    n_all = 0
    for item in sorted({r["item"] for r in rows}):
        mine = [r for r in rows if r["item"] == item]
        counts = {o: sum(r["outcome"] == o for r in mine) for o in OUTCOMES}
        for o in OUTCOMES:
            total[o] += counts[o]
        n_all += len(mine)
        cells = " | ".join(str(counts[o]) for o in OUTCOMES)
        lines.append(f"| {item} | {ITEMS[item]} | {len(mine)} | {cells} |")
    lines.append("| | **all** | **" + str(n_all) + "** | " + " | ".join(f"**{total[o]}**" for o in OUTCOMES)
                 + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", help="comma-separated item numbers (default: all 12)")
    ap.add_argument("--json", help="also write every case's outcome to this JSON file")
    ap.add_argument("--verbose", action="store_true", help="print every case with its outcome")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per child process")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        item, idx = args.child.split(":")
        for k in map(int, idx.split(",")):
            print("CASE " + json.dumps(run_case(int(item), k)), flush=True)
        return
    items = [int(i) for i in args.items.split(",")] if args.items else sorted(ITEMS)
    rows = []
    for item in items:
        t0 = time.monotonic()
        got = run_item(item, args.timeout)
        rows += got
        if args.verbose:
            for r in got:
                print(f"[{item:2d}] {r['outcome']:12s} {r['case']}: {r['detail']}", flush=True)
            print(f"     ({time.monotonic() - t0:.0f} s)", flush=True)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
