"""docs/plugins.md builds a real plugin: write its files from the page, install its entry point, run it.

The page's ```toml and ```py blocks whose first line is ``# <path>`` are the package's files; the other
```py blocks are the user's session, run in order in one namespace in a fresh Python process (an op
namespace and model name can be registered once per process). The entry point is installed the way pip
would: a ``.dist-info`` folder with ``entry_points.txt`` taken from the page's pyproject.toml, next to
the package on ``sys.path``, so compresskit's own discovery finds and loads the plugin.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "plugins.md"
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.M | re.S)
PATH_LINE = re.compile(r"^# ([\w./-]+\.(?:py|toml))\n")


def _page() -> tuple[dict[str, str], list[tuple[str, str | None]]]:
    """(files by path, [(session block, the ```text block right after it or None)])."""
    files: dict[str, str] = {}
    session: list[tuple[str, str | None]] = []
    blocks = [(m.group(1), m.group(2)) for m in FENCE.finditer(PAGE.read_text())]
    for i, (lang, body) in enumerate(blocks):
        head = PATH_LINE.match(body)
        if lang in ("py", "toml") and head:
            files[head.group(1)] = body[head.end():] if lang == "toml" else body
        elif lang == "py":
            nxt = blocks[i + 1] if i + 1 < len(blocks) else None
            session.append((body, nxt[1] if nxt and nxt[0] == "text" else None))
    return files, session


def _toml_table(text: str, header: str) -> dict[str, str]:
    """The ``key = "string"`` entries of one table of a TOML file (tomllib needs Python 3.11)."""
    body = text.split(f"[{header}]\n", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^"?([\w.-]+)"?\s*=\s*"([^"]*)"\s*$', body, re.M))


def _install(files: dict[str, str], root: Path) -> dict[str, str]:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    project = _toml_table(files["pyproject.toml"], "project")
    eps = _toml_table(files["pyproject.toml"], 'project.entry-points."compresskit.plugins"')
    dist = root / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: "
                                   f"{project['version']}\n")
    (dist / "entry_points.txt").write_text("[compresskit.plugins]\n"
                                           + "".join(f"{k} = {v}\n" for k, v in eps.items()))
    return eps


# Runs in the child after the session; independent checks written here, not taken from the page.
CHECKS = textwrap.dedent('''
    import torch
    import compresskit as ck
    from compresskit.plugins import load_plugins
    from compresskit.models import CheckpointMismatchError

    res["plugins"] = load_plugins()  # already loaded by the session: {name: "ok" | error}
    res["models"] = ck.list_models()
    info = ck.model_info("gatenet")
    from compresskit_gatenet import data, losses, models, ops
    res["task"] = info.task
    res["default_loss_is_plugins"] = info.default_loss is models.l1_loss
    a, b = torch.zeros(1), torch.ones(1)
    res["inputs_from_batch"] = [t.item() for t in info.inputs_from_batch((a, b))]

    # checkpoint: strict load of the same width, a clear error for another width
    m = ck.create_model("gatenet", width=16)
    m2 = ck.create_model("gatenet", width=16, checkpoint={"state_dict": m.state_dict()})
    res["checkpoint_equal"] = all(torch.equal(m.state_dict()[k], v) for k, v in m2.state_dict().items())
    try:
        ck.create_model("gatenet", width=8, checkpoint=m.state_dict())
        res["mismatch"] = None
    except CheckpointMismatchError as e:
        res["mismatch"] = str(e)

    # the op: forward against the formula, float64 gradcheck of the registered autograd
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    z = torch.randn(2, 1, 4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    ref = x.detach() / (1 + torch.exp(-z.detach()))
    res["op_forward_max_err"] = (torch.ops.compresskit_gatenet.gate(x, z) - ref).abs().max().item()
    res["gradcheck"] = bool(torch.autograd.gradcheck(torch.ops.compresskit_gatenet.gate, (x, z)))
    try:
        ops.gate(x, torch.zeros(2, 2, 4, 3, dtype=torch.float64))
        res["gate_check"] = None
    except ValueError as e:
        res["gate_check"] = str(e)

    # tracing: one node for the op, groups as the rule says, by fx and by the torch.export fallback
    inp = torch.rand(1, 3, 16, 16)
    for method in ("fx", "export"):
        graph = ck.trace(m, (inp,), method=method)
        calls = [n for n in graph.fx_graph.nodes if n.op == "call_function"]
        logit = [gr for gr in graph.groups if gr.producers == ["to_logit"]]
        through = [gr for gr in graph.groups if gr.producers == ["body.1"]]
        res[method] = {
            "gate_nodes": sum("gate" in str(getattr(n.target, "__name__", n.target)) for n in calls),
            "sigmoid_nodes": sum("sigmoid" in str(n.target) for n in calls),
            "logit_frozen": [(gr.prunable, gr.size, gr.reasons) for gr in logit],
            "through": [(gr.prunable, gr.size, sorted(gr.consumers)) for gr in through],
        }
    ck.testing.assert_shrink_exact(m, (inp,), keep_fraction=0.5, seed=1)

    # the loss, against the definition written out with torch.diff
    p, t = torch.rand(2, 3, 5, 6, generator=g), torch.rand(2, 3, 5, 6, generator=g)
    naive = (p - t).abs().mean() + sum((torch.diff(p, dim=d) - torch.diff(t, dim=d)).abs().mean()
                                       for d in (-2, -1))
    res["losses"] = ck.list_losses()
    res["loss_err"] = abs(ck.get_loss("edge_l1")(p, t).item() - naive.item())

    # the dataset: deterministic per index, crops of the given images, noise of about sigma
    images = torch.rand(2, 3, 40, 50, generator=g)
    ds = data.NoisyCrops(images, length=6, crop=32, sigma=0.1)
    n1, c1 = ds[3]
    n2, c2 = ds[3]
    res["data_deterministic"] = bool(torch.equal(n1, n2) and torch.equal(c1, c2))
    img = images[3 % 2]
    res["clean_is_crop"] = any(torch.equal(img[:, y:y + 32, x:x + 32], c1)
                               for y in range(40 - 31) for x in range(50 - 31))
    res["noise_std"] = (n1 - c1).std().item()
    res["data_shapes"] = [list(n1.shape), list(c1.shape), len(ds)]

    # the session's compressed model: smaller, and ck.load rebuilt the same function
    result, small = ns["result"], ns["small"]
    res["params"] = [result.report.before.params, result.report.after.params]
    q = torch.rand(1, 3, 32, 32)
    res["load_equal"] = bool(torch.equal(small(q), result.model.eval()(q)))
''')

CHILD = textwrap.dedent('''
    import contextlib, io, json, os, sys
    root, work, blocks_file, out_file = sys.argv[1:5]
    sys.path.insert(0, root)
    os.chdir(work)
    blocks = json.load(open(blocks_file))
    ns = {"__name__": "__session__"}
    outputs = []
    for i, block in enumerate(blocks):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(compile(block, f"plugins.md[session block {i}]", "exec"), ns)
        outputs.append(buf.getvalue())
    res = {"outputs": outputs}
''')


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    files, session = _page()
    root = tmp_path_factory.mktemp("plugin")
    work = tmp_path_factory.mktemp("work")
    eps = _install(files, root)
    (root / "blocks.json").write_text(json.dumps([b for b, _ in session]))
    script = root / "child.py"
    script.write_text(CHILD + CHECKS + "\njson.dump(res, open(out_file, 'w'))\n")
    out = root / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = [str(script), str(root), str(work), str(root / "blocks.json"), str(out)]
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, f"the plugin example failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return {"files": files, "session": session, "eps": eps, **json.loads(out.read_text())}


def test_page_has_the_plugin_files(run: dict) -> None:
    assert {"pyproject.toml", "compresskit_gatenet/plugin.py", "compresskit_gatenet/ops.py",
            "compresskit_gatenet/models.py", "compresskit_gatenet/losses.py",
            "compresskit_gatenet/data.py"} <= set(run["files"])
    assert run["eps"] == {"gatenet": "compresskit_gatenet.plugin:register"}


def test_entry_point_registers_the_model(run: dict) -> None:
    assert run["plugins"].get("gatenet") == "ok"
    assert "gatenet" in run["models"]
    assert run["task"] == "denoising" and run["default_loss_is_plugins"]
    assert run["inputs_from_batch"] == [0.0]
    assert run["checkpoint_equal"]
    assert run["mismatch"] is not None and "shape mismatches" in run["mismatch"]
    assert "head.weight: checkpoint (16, 3, 3, 3) vs model (8, 3, 3, 3)" in run["mismatch"]


def test_custom_op_matches_its_formula_and_gradients(run: dict) -> None:
    assert run["op_forward_max_err"] < 1e-12
    assert run["gradcheck"]
    assert run["gate_check"] is not None and "logit must have shape (B, 1, H, W)" in run["gate_check"]


@pytest.mark.parametrize("method", ["fx", "export"])
def test_op_is_one_node_with_its_rule(run: dict, method: str) -> None:
    r = run[method]
    assert r["gate_nodes"] == 1 and r["sigmoid_nodes"] == 0  # not traced into
    # the logit conv's single output channel is frozen with the rule's reason
    assert len(r["logit_frozen"]) == 1
    prunable, size, reasons = r["logit_frozen"][0]
    assert not prunable and size == 1
    assert any("one value per pixel, shared by every channel" in why for why in reasons)
    # body.1's channels pass through the gate into tail (and feed to_logit): one prunable group of 16
    assert r["through"] == [[True, 16, ["tail", "to_logit"]]]


def test_loss_and_dataset(run: dict) -> None:
    assert "edge_l1" in run["losses"]
    assert run["loss_err"] < 1e-6
    assert run["data_deterministic"] and run["clean_is_crop"]
    assert run["data_shapes"] == [[3, 32, 32], [3, 32, 32], 6]
    assert 0.05 < run["noise_std"] < 0.12  # σ = 0.1, a little less where clamping to [0, 1] cuts it


def test_session_output_is_what_the_page_shows(run: dict) -> None:
    assert run["params"][1] < run["params"][0]
    assert run["load_equal"]
    for (block, shown), printed in zip(run["session"], run["outputs"]):
        if shown is None:
            continue
        if "ck.compress(" in block:  # trained numbers: the shape of the lines, not their values
            lines, got = shown.strip().splitlines(), printed.strip().splitlines()
            assert got[0] == lines[0]
            assert re.fullmatch(r"\d+ -> \d+", got[1]), got
        else:
            assert printed.strip() == shown.strip(), (
                f"the page shows\n{shown}\nbut the code prints\n{printed}")
