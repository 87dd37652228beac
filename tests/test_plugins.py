"""Plugin discovery: entry points are loaded lazily and once; a broken plugin is reported, not fatal."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch

import compresskit as ck
from compresskit import models, plugins

CORE = Path(ck.__file__).parent


@pytest.fixture()
def fake_plugins(tmp_path, monkeypatch):
    """Three plugins on a private entry-point list: one good, one failing at import, one failing in
    register(); fresh discovery state and a private model registry."""
    (tmp_path / "ck_fake_good.py").write_text(textwrap.dedent("""
        import compresskit as ck
        from torch import nn
        CALLS = []

        def register():
            CALLS.append(1)
            ck.register_model("fake_good_net", task="toy")(lambda: nn.Linear(2, 2))
            ck.register_rule(Recentre, passthrough=0, reason="fake plugin rule")

        class Recentre(nn.Module):
            # subtracts a constant: channels stay independent (a valid pass-through)
            def forward(self, x):
                return x - 0.5
    """))
    (tmp_path / "ck_fake_import_error.py").write_text("import a_module_that_does_not_exist\n")
    (tmp_path / "ck_fake_register_error.py").write_text(
        "def register():\n    raise RuntimeError('register exploded')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [
        EntryPoint("good", "ck_fake_good:register", plugins.GROUP),
        EntryPoint("bad_import", "ck_fake_import_error:register", plugins.GROUP),
        EntryPoint("bad_register", "ck_fake_register_error:register", plugins.GROUP),
    ]
    monkeypatch.setattr(plugins, "entry_points", lambda group: [e for e in eps if e.group == group])
    monkeypatch.setattr(plugins, "_loaded", {})
    monkeypatch.setattr(plugins, "_errors", {})
    monkeypatch.setattr(plugins, "_done", False)
    from compresskit.graph.rules import RULES

    with models.MODELS.snapshot(), RULES.snapshot():
        models.MODELS.clear()
        yield
    for name in ("ck_fake_good", "ck_fake_import_error", "ck_fake_register_error"):
        sys.modules.pop(name, None)


def test_broken_plugins_are_reported_not_fatal(fake_plugins):
    with pytest.warns(UserWarning, match="failed to load") as caught:
        status = ck.load_plugins()
    assert status["good"] == "ok"
    assert "ModuleNotFoundError" in status["bad_import"]
    assert "a_module_that_does_not_exist" in status["bad_import"]
    assert status["bad_register"] == "RuntimeError: register exploded"
    assert {str(w.message).split("'")[1] for w in caught} == {"bad_import", "bad_register"}
    assert set(plugins.plugin_errors()) == {"bad_import", "bad_register"}
    # the good plugin's model works; an unknown name points at the broken plugins
    assert ck.list_models() == ["fake_good_net"]
    assert ck.create_model("fake_good_net").in_features == 2
    with pytest.raises(KeyError, match="plugins that failed to load.*bad_import"):
        ck.create_model("model_of_the_broken_plugin")


def test_discovery_is_lazy_and_runs_once(fake_plugins):
    import warnings

    assert "ck_fake_good" not in sys.modules  # nothing imported before first use
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ck.list_models()
        ck.list_models()
        ck.model_info("fake_good_net")
    assert sys.modules["ck_fake_good"].CALLS == [1]


def test_trace_discovers_the_plugins_first(fake_plugins):
    """A plugin registers its channel rules in register(): a trace (with no model or loss lookup before)
    runs discovery, so the rule applies and the module is a leaf."""
    import warnings

    from torch import nn

    from compresskit.graph.rules import RULES

    fake = __import__("ck_fake_good")
    assert fake.CALLS == [] and RULES.unregister(fake.Recentre) is None  # importing registered nothing

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.r, self.b = nn.Conv2d(3, 4, 1), fake.Recentre(), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.b(self.r(self.a(x)))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = ck.trace(Net(), torch.randn(1, 3, 5, 5))
    assert fake.CALLS == [1]
    assert any(n.op == "call_module" and n.target == "r" for n in graph.fx_graph.nodes)  # a leaf now
    group = next(g for g in graph.groups if any(m.qualname == "a.weight" and m.dim == 0 for m in g.members))
    assert group.prunable


def test_installed_vfi_plugins_load():
    status = ck.load_plugins()
    for name in ("vfi", "adacof", "stmfnet"):
        if name in status:
            assert status[name] == "ok", f"plugin {name!r} failed: {status[name]}"


def test_core_never_imports_a_plugin():
    offenders = [
        str(p.relative_to(CORE.parent))
        for p in CORE.rglob("*.py")
        if any(line.lstrip().startswith(("import compresskit_", "from compresskit_"))
               for line in p.read_text().splitlines())
    ]
    assert offenders == []
    # importing the whole public API pulls in no plugin package either
    code = ("import sys, compresskit as ck\n"
            "[getattr(ck, n) for n in ck.__all__ if n not in ('load_plugins',)]\n"
            "print(sorted(m for m in sys.modules if m.startswith('compresskit_')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
