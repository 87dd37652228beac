"""Code a tracer meets in the wild: custom autograd.Functions, torch.fft, numpy inside forward.

The custom Function used to kill the interpreter (signal 11: the tracer's proxy reached functorch's C
code through ``Function.apply``), so that case runs in a subprocess whose exit status is checked.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from zoo import RoundSTE, build

import compresskit as ck

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from torch import nn
    import compresskit as ck

    class Scale(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, s):
            ctx.s = s
            return x * s

        @staticmethod
        def backward(ctx, g):
            return g * ctx.s, None

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 3, padding=1)
            self.c = nn.Conv2d(6, 3, 1)

        def forward(self, x):
            y = Scale.apply(torch.relu(self.a(x)), 2.0)
            return self.c(torch.relu(self.b(y)))

    torch.manual_seed(0)
    model = Net().eval()
    graph = ck.trace(model, torch.randn(1, 3, 8, 8))
    groups = [dict(producers=g.producers, size=g.size, prunable=g.prunable, reasons=g.reasons)
              for g in graph.groups]
    data = [(torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)) for _ in range(2)]
    result = ck.compress(model, data, config=dict(sparsify=dict(steps=2), recover=dict(steps=1),
                                                  measure_latency=False, progress=False))
    print(json.dumps(dict(method=graph.method, groups=groups, after=result.report.after.params)))
    """
)


def test_custom_function_traces_and_compresses_in_a_fresh_process(tmp_path: Path) -> None:
    script = tmp_path / "custom_function.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                       timeout=300, env=env)
    assert r.returncode == 0, f"rc={r.returncode} (139 is the old segfault)\n{r.stderr[-3000:]}"
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["method"] == "fx"
    by_producer = {tuple(g["producers"]): g for g in out["groups"]}
    # a's 8 output channels enter the opaque Function: frozen, and the reason names the Function
    a = by_producer[("a",)]
    assert (a["size"], a["prunable"]) == (8, False)
    assert any("Scale" in r and "autograd.Function" in r for r in a["reasons"]), a["reasons"]
    # b's 6 channels only meet relu and c: prunable
    assert (by_producer[("b",)]["size"], by_producer[("b",)]["prunable"]) == (6, True)
    assert by_producer[("c",)]["prunable"] is False  # the graph output


def test_function_apply_is_restored_after_tracing() -> None:
    before = inspect.getattr_static(torch.autograd.Function, "apply")
    model, inputs = build("custom_function")
    ck.trace(model, inputs)
    assert inspect.getattr_static(torch.autograd.Function, "apply") is before
    # the straight-through gradient still works on the real model
    x = inputs[0].clone().requires_grad_()
    y = RoundSTE.apply(x, 0.5)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))
    torch.testing.assert_close(y, torch.round(x.detach() * 2) / 2)


def test_a_rule_registered_for_the_function_unfreezes_it(isolated_registries: None) -> None:
    model, inputs = build("custom_function")
    frozen = {tuple(g.producers): g.prunable for g in ck.trace(model, inputs).groups}
    assert frozen[("conv1.0",)] is False
    for key in (RoundSTE, RoundSTE.apply):  # the class or its apply
        # the second key is the same Function, so it replaces the first registration
        ck.register_rule(key, passthrough={0: 0}, reason="rounding reads the step by meaning",
                         replace=key is not RoundSTE)
        graph = ck.trace(model, inputs)
        groups = {tuple(g.producers): g for g in graph.groups}
        assert groups[("conv1.0",)].prunable, graph.explain(groups[("conv1.0",)].id)
        # rounding is element-wise, so dropping conv1's channels is exact
        ck.testing.assert_shrink_exact(model, inputs, keep_fraction=0.5, seed=0, graph=graph)


def test_numpy_reading_data_freezes_but_numpy_from_shapes_does_not() -> None:
    model, inputs = build("numpy_forward")
    groups = {tuple(g.producers): g for g in ck.trace(model, inputs).groups}
    conv1 = groups[("conv1.0",)]
    assert not conv1.prunable and any(".numpy()" in r for r in conv1.reasons), conv1.reasons
    assert groups[("conv2.0",)].prunable  # multiplied by a Hann window built with numpy from its size
    assert groups[("conv3.0",)].prunable


def test_fft_freezes_only_the_filtered_channels() -> None:
    model, inputs = build("fft_global_filter")
    groups = {tuple(g.producers): g for g in ck.trace(model, inputs).groups}
    stem = groups[("stem.0",)]
    assert not stem.prunable and any("fft_rfft2" in r for r in stem.reasons), stem.reasons
    assert groups[("mix.0",)].prunable and groups[("mlp.0",)].prunable


def test_tracing_leaves_no_constants_on_the_model() -> None:
    model, inputs = build("two_frame_vfi")  # torch.tensor(...) in the forward: fx stows such constants
    names = set(vars(model))
    ck.trace(model, inputs)
    assert set(vars(model)) == names
