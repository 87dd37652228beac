"""What ``result.save`` writes, ``ck.load`` opens in a fresh process (untrusted), reproducing the outputs:
every model of the test zoo plus networks that resize by float factors, pad to multiples and crop back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from vfi_like import VFI_LIKE
from zoo import ZOO, ItemBranchNet, NumpyForwardNet, build

import compresskit as ck
from compresskit.api import CompressResult
from compresskit.report import CompressReport, ModelStats
from compresskit.saving import SaveError
from compresskit.testing import random_keep

ROOT = Path(__file__).resolve().parents[1]


def _result(model: nn.Module, inputs: tuple, keep_fraction: float = 0.5) -> tuple[CompressResult, dict]:
    """A compressed result without training: every prunable group shrunk to a random half; and the kept
    units (group id -> indices)."""
    graph = ck.trace(model, inputs)
    keep = random_keep(graph, keep_fraction, seed=0)
    small = ck.shrink(model, graph, keep=keep).eval() if keep else model
    report = CompressReport(model=type(model).__name__, loss="", inputs="", before=ModelStats(0, 0),
                            example_input_shapes=[list(x.shape) for x in inputs])
    dtypes = [str(x.dtype).removeprefix("torch.") for x in inputs]
    return CompressResult(small, None, report, None, dtypes), keep


#: zoo models torch.export cannot capture (numpy inside forward; a Python branch on ``.item()``): save
#: refuses them naming the fix (SaveError naming model_name=), and they are saved with a registered rebuild
#: recipe instead
_NEEDS_RECIPE = {"zoo_numpy_forward": ("roundtrip_numpy_forward", NumpyForwardNet),
                 "zoo_item_branch": ("roundtrip_item_branch", ItemBranchNet)}

_LOAD_ALL = "RECIPES = %r\n" % [(n, c.__name__) for n, c in _NEEDS_RECIPE.values()] + textwrap.dedent(
    """
    import json, sys
    import torch
    import compresskit as ck
    from tests import zoo

    for name, cls in RECIPES:  # the recipes, registered again here
        ck.register_model(name)(getattr(zoo, cls))
    out, report = sys.argv[1], {}
    for name in json.loads(open(out + "/names.json").read()):
        try:
            model = ck.load(f"{out}/{name}.pt")  # untrusted: nothing is unpickled
            exp = torch.load(f"{out}/{name}.expected.pt", weights_only=True)
            diffs = []
            with torch.no_grad():
                for inputs, want in exp["cases"]:
                    try:
                        got = model(*inputs)
                    except Exception as e:  # a size the saved program fixed: refused by name
                        diffs.append(str(e))
                        continue
                    diffs.append(float((got - want).abs().max()))
            report[name] = {"diffs": diffs, "training": model.training}
        except Exception as e:
            report[name] = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(report))
    """
)


#: the models in groups, one test (and one fresh process) per group: each stays short, and pytest -n 2 runs
#: them side by side; test_the_groups_hold_every_model_once checks that together they are every model
_ZOO_GROUPS = 2
_ZOO_NAMES = [f"zoo_{n}" for n in ZOO]
GROUPS: dict[str, list[str]] = {
    **{f"zoo{i}": _ZOO_NAMES[i::_ZOO_GROUPS] for i in range(_ZOO_GROUPS)},
    "vfi_like": [f"vfi_{n}" for n in VFI_LIKE],
}


def _entries() -> dict[str, tuple]:
    """name -> (() -> (model, example inputs), other inputs the loaded model must also take, or None)."""
    entries = {f"zoo_{n}": (lambda n=n: build(n), None) for n in ZOO}
    for n, (factory, example, other) in VFI_LIKE.items():
        entries[f"vfi_{n}"] = ((lambda f=factory, e=example: (_seeded(f).eval(), e())), other)
    return entries


def test_the_groups_hold_every_model_once() -> None:
    grouped = [n for names in GROUPS.values() for n in names]
    assert len(grouped) == len(set(grouped)) == len(ZOO) + len(VFI_LIKE)
    assert set(grouped) == set(_entries())


@pytest.mark.slow
@pytest.mark.parametrize("group", list(GROUPS))
def test_every_zoo_model_and_float_resizing_nets_reload_in_a_fresh_process(group: str,
                                                                           tmp_path: Path) -> None:
    torch.set_num_threads(1)
    names, fixed_notes = [], {}
    from compresskit import models as model_registry

    all_entries = _entries()
    with model_registry.MODELS.snapshot(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for recipe_name, cls in _NEEDS_RECIPE.values():
            ck.register_model(recipe_name)(cls)
        entries = {name: all_entries[name] for name in GROUPS[group]}
        for name, (make, other) in entries.items():
            model, inputs = make()
            result, keep = _result(model, inputs)
            if name in _NEEDS_RECIPE:  # export cannot describe it: the registered recipe instead
                with pytest.raises(SaveError, match="model_name="):
                    result.save(tmp_path / f"{name}.pt")
                assert not (tmp_path / f"{name}.pt").exists()
                _recipe_result(result, keep).save(tmp_path / f"{name}.pt",
                                                           model_name=_NEEDS_RECIPE[name][0])
            else:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    result.save(tmp_path / f"{name}.pt")
                fixed_notes[name] = [str(w.message) for w in caught]
            cases = [inputs] + ([other()] if other is not None else [])
            with torch.no_grad():
                cases = [(list(c), result.model(*c)) for c in cases]
            torch.save({"cases": cases}, tmp_path / f"{name}.expected.pt")
            names.append(name)
    (tmp_path / "names.json").write_text(json.dumps(names))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", _LOAD_ALL, str(tmp_path)], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(got) == set(names) == set(GROUPS[group]) and names
    failed = {n: v for n, v in got.items() if "error" in v or v["training"]
              or not isinstance(v["diffs"][0], float) or v["diffs"][0] > 1e-4}
    assert not failed, failed  # every file loads and reproduces the outputs on the example inputs
    if group != "vfi_like":
        return
    other = {n: got[f"vfi_{n}"]["diffs"][1] for n in VFI_LIKE}  # inputs of other sizes than the example's
    refused = {n: d for n, d in other.items() if not isinstance(d, float)}
    assert all(d <= 1e-4 for d in other.values() if isinstance(d, float)), other
    # torch.export fixes the flow pyramid's sizes (they must divide by 4 at every level) and records the
    # truncated pyramid sizes as conditions: the save says so, and the loaded model refuses other sizes by
    # name instead of computing something else; the padding and 1/16-scale networks take any size
    assert set(refused) <= {"pyramid_flow", "recursive_pyramid"}, refused
    assert all("Expected input at" in d or "outside what the saved program" in d for d in refused.values())
    for n in refused:
        assert any("accepts only" in w or "refuses inputs of other sizes" in w
                   for w in fixed_notes[f"vfi_{n}"]), fixed_notes[f"vfi_{n}"]


def _seeded(factory):  # noqa: ANN001, ANN202
    torch.manual_seed(0)
    return factory()


def _recipe_result(result: CompressResult, keep: dict) -> CompressResult:
    """The same result with the plan a recipe needs (``plan.widths``: group id -> kept width), from the
    units ``_result`` kept (a second trace of a model whose forward fills a cache would differ)."""
    plan = type("Plan", (), {"widths": {gid: len(idx) for gid, idx in keep.items()}})()
    return CompressResult(result.model, plan, result.report, None, result.input_dtypes)
