"""VFI task helpers (batch → inputs, default loss) and the plugin entry point."""

from __future__ import annotations

import pytest
import torch
from compresskit_vfi import task

import compresskit as ck
from compresskit.graph.rules import lookup_rule


def frames(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(2, 3, 8, 8, generator=g) for _ in range(n))


def test_inputs_and_target_of_triplets_and_quintuplets():
    for n in (3, 5):
        batch = frames(n)
        inputs = task.inputs_from_batch(batch)
        assert len(inputs) == n - 1 and all(a is b for a, b in zip(inputs, batch))
        assert task.target_from_batch(list(batch)) is batch[-1]


def test_default_loss_is_charbonnier_to_the_last_frame():
    f0, f1, gt = frames(3)
    out = (0.5 * (f0 + f1)).requires_grad_()
    expected = torch.sqrt((out.detach() - gt) ** 2 + 1e-6).mean()
    loss = task.default_loss(out, (f0, f1, gt))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert out.grad is not None and out.grad.abs().sum() > 0
    # models with return_aux give (frame, aux): the frame is scored
    torch.testing.assert_close(task.default_loss((out, {"weight1": None}), (f0, f1, gt)), expected)


@pytest.mark.parametrize(
    "batch, message",
    [
        (torch.zeros(2, 3, 8, 8), "tuple/list"),
        ((torch.zeros(2, 3, 8, 8),), "at least 2"),
        ((torch.zeros(2, 3, 8, 8), torch.zeros(3, 8, 8)), r"batch\[1\]"),
    ],
)
def test_bad_batches_are_named(batch, message):
    with pytest.raises(TypeError, match=message):
        task.inputs_from_batch(batch)


def test_loss_shape_mismatch_is_explained():
    f0, f1, gt = frames(3)
    with pytest.raises(ValueError, match="differ in shape"):
        task.default_loss(f0[:, :, :4], (f0, f1, gt))


def test_plugin_is_discovered_and_registers_the_op_rule():
    status = ck.load_plugins()
    assert status.get("vfi") == "ok", status
    assert lookup_rule("call_function", torch.ops.compresskit_vfi.adacof.default) is not None


def test_op_rule_is_registered_by_the_hook_not_by_import():
    """Importing the ops defines the op only; the plugin's register() hook adds its rule and leaf."""
    import subprocess
    import sys

    code = (
        "import torch, compresskit.plugins as p\n"
        "p._done = True  # no discovery: only what this script registers\n"
        "from compresskit.graph.rules import lookup_rule\n"
        "from compresskit.graph.trace import leaf_functions\n"
        "import compresskit_vfi.ops as ops\n"
        "op = torch.ops.compresskit_vfi.adacof.default\n"
        "print(lookup_rule('call_function', op) is None, ops.adacof in leaf_functions())\n"
        "from compresskit_vfi import plugin\n"
        "plugin.register()\n"
        "print(lookup_rule('call_function', op) is not None, ops.adacof in leaf_functions())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "False", "True", "True"]
