"""ck.load runs nothing from a file unless trusted=True, and reloads models whose class it never saw."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import compresskit as ck
from compresskit.saving import FILE_FORMAT, UnsafeFileError

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:the plan keeps")

_SAVE = textwrap.dedent(
    """
    import sys
    import torch
    from torch import nn
    import compresskit as ck

    class MainOnlyNet(nn.Module):  # exists only in this script's __main__
        def __init__(self):
            super().__init__()
            self.c1, self.bn = nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12)
            self.c2 = nn.Conv2d(12, 3, 3, padding=1)

        def forward(self, x):
            return x + self.c2(torch.relu(self.bn(self.c1(x))))

    torch.manual_seed(0)
    data = [(torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)) for _ in range(3)]
    result = ck.compress(MainOnlyNet(), data, config=dict(sparsify=dict(steps=20, lambda_=2.0, lr=0.05),
                         recover=dict(steps=2), measure_latency=False, progress=False))
    out = sys.argv[1]
    result.save(out + "/small.pt")
    x = torch.randn(2, 3, 12, 10)  # another size than the one it was compressed at
    with torch.no_grad():
        torch.save({"x": x, "y": result.model.eval()(x), "c1": result.model.c1.out_channels,
                    "params": sum(p.numel() for p in result.model.parameters())}, out + "/expected.pt")
    """
)

_LOAD = textwrap.dedent(
    """
    import json, sys, warnings
    import torch
    import compresskit as ck

    out = sys.argv[1]
    exp = torch.load(out + "/expected.pt", weights_only=True)
    model = ck.load(out + "/small.pt")
    with torch.no_grad():
        same = torch.equal(model(exp["x"]), exp["y"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fallback = ck.load(out + "/small.pt", trusted=True)  # the class is not importable here
    print(json.dumps(dict(same=same, params=sum(p.numel() for p in model.parameters()),
                          expected_params=exp["params"], c1=exp["c1"], training=model.training,
                          main_has_class=hasattr(sys.modules["__main__"], "MainOnlyNet"),
                          warned=[str(w.message) for w in caught],
                          fallback_same=torch.equal(fallback(exp["x"]), exp["y"]))))
    """
)


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    path = cwd / f"script_{abs(hash(script))}.py"
    path.write_text(script)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_a_class_only_in_main_reloads_in_a_fresh_process(tmp_path: Path) -> None:
    r = _run(_SAVE, str(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run(_LOAD, str(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert not got["main_has_class"]
    assert got["same"], "the reloaded model computes something else"
    assert got["params"] == got["expected_params"] and got["c1"] < 12  # the compressed widths
    assert got["training"] is False
    assert got["fallback_same"] and any("cannot be imported" in w for w in got["warned"])


class _Payload:
    """Unpickling this runs ``os.system``: the attack the loader must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_runs_nothing_unless_trusted(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": FILE_FORMAT, "registered": None, "state_dict": {}, "x": _Payload(marker)}, path)
    with pytest.raises(UnsafeFileError, match=r"trusted=True") as err:
        ck.load(path)
    assert not marker.exists(), "loading ran code from the file"
    assert "system" in str(err.value)  # names what it would have imported
    with pytest.raises(ValueError):  # the opt-in does unpickle (and so runs the payload)
        ck.load(path, trusted=True)
    assert marker.exists()


def _small_file(tmp_path: Path) -> tuple[Path, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 1)).eval()
    data = [(torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8))]
    result = ck.compress(model, data, config=dict(sparsify=dict(steps=0), recover=dict(steps=0),
                                                   measure_latency=False, progress=False))
    path = result.save(tmp_path / "small.pt")
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        return path, x, result.model(x)


def _edit_program(path: Path, edit) -> Path:  # noqa: ANN001
    data = torch.load(path, weights_only=True)
    doc = json.loads(data["program"]["json"])
    edit(doc)
    data["program"]["json"] = json.dumps(doc).encode()
    out = path.with_name("edited.pt")
    torch.save(data, out)
    return out


def test_a_plain_model_file_needs_no_unpickling(tmp_path: Path) -> None:
    path, x, y = _small_file(tmp_path)
    data = torch.load(path, weights_only=True)  # the whole file reads with the safe unpickler
    assert data["format"] == FILE_FORMAT and data["program"] is not None
    loaded = ck.load(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), y)
    assert type(ck.load(path, trusted=True)) is nn.Sequential  # the original class, on request


def test_a_crafted_program_is_refused(tmp_path: Path) -> None:
    path, x, y = _small_file(tmp_path)
    marker = tmp_path / "pwned"

    def call_os_system(doc: dict) -> None:
        node = next(n for n in doc["graph_module"]["graph"]["nodes"] if "conv2d" in n["target"])
        node["target"] = "torch.os.system"  # torch imports os: a getattr chain reaches it

    with pytest.raises(UnsafeFileError, match="torch.os.system"):
        ck.load(_edit_program(path, call_os_system))

    def eval_in_size(doc: dict) -> None:
        values = doc["graph_module"]["graph"]["tensor_values"]
        meta = next(iter(values.values()))
        code = f"eval(chr(95)+'import os; os.system(\"touch {marker}\")')"
        meta["sizes"][0] = {"as_expr": {"expr_str": code, "hint": None}}

    with pytest.raises(UnsafeFileError, match="not arithmetic on sizes"):
        ck.load(_edit_program(path, eval_in_size))

    def guard_code(doc: dict) -> None:
        doc["guards_code"] = [f"__import__('os').system('touch {marker}') == 0"]

    with pytest.raises(UnsafeFileError, match="guard"):  # guards are Python source: parsed, never run
        ck.load(_edit_program(path, guard_code))
    assert not marker.exists()

    def size_guard(doc: dict) -> None:  # what torch.export writes: checked by compresskit, not by Python
        doc["guards_code"] = ["L['input'].size()[2] % 8 == 0"]

    loaded = ck.load(_edit_program(path, size_guard))
    with torch.no_grad():
        assert torch.equal(loaded(x), y)  # 8 rows
        with pytest.raises(ValueError, match=r"outside what the saved program.*% 8 == 0"):
            loaded(torch.randn(1, 3, 12, 8))


def test_load_errors_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match="is a directory"):
        ck.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ck.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="could not be read") as err:
        ck.load(tmp_path / "junk.pt")
    assert not isinstance(err.value, UnsafeFileError)
    buf = io.BytesIO()
    torch.save({"state_dict": {}}, buf)
    (tmp_path / "other.pt").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="not a file written by CompressResult.save"):
        ck.load(tmp_path / "other.pt")


class _TokenNet(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.emb, self.l1, self.l2 = nn.Embedding(20, 16), nn.Linear(16, width), nn.Linear(width, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.relu(self.l1(self.emb(ids))))


_NO_STEPS = dict(sparsify={"steps": 0}, recover={"steps": 0}, measure_latency=False, progress=False)


def test_a_model_with_token_id_inputs_saves_a_safe_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = [(torch.randint(0, 20, (4, 5)), torch.randn(4, 5, 8)) for _ in range(2)]
    result = ck.compress(_TokenNet(), data, config=_NO_STEPS)
    path = result.save(tmp_path / "tokens.pt")  # float inputs into an Embedding could not be exported
    assert torch.load(path, weights_only=True)["program"] is not None
    loaded = ck.load(path)  # without trusted=True
    x = torch.tensor([[0, 19, 3], [7, 7, 1]])
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model.eval()(x))


def test_registered_model_with_non_plain_kwargs_saves_a_safe_file(tmp_path: Path) -> None:
    from compresskit import models as model_registry

    with model_registry.MODELS.snapshot():
        @ck.register_model("test_token_net_path")
        def token_net(where: Path = Path("."), width: int = 32) -> nn.Module:  # noqa: ARG001
            return _TokenNet(width)

        torch.manual_seed(0)
        model = ck.create_model("test_token_net_path", where=tmp_path, width=24)
        data = [(torch.randint(0, 20, (4, 5)), torch.randn(4, 5, 8))]
        result = ck.compress(model, data, config=_NO_STEPS)
        assert result.rebuild is not None and isinstance(result.rebuild["kwargs"]["where"], Path)
        with pytest.warns(UserWarning, match="not plain values"):
            path = result.save(tmp_path / "reg.pt")
        data = torch.load(path, weights_only=True)  # the whole file reads with the safe unpickler
        assert data["registered"] is None and data["program"] is not None
        loaded = ck.load(path)
        x = torch.randint(0, 20, (2, 6))
        with torch.no_grad():
            assert torch.equal(loaded(x), result.model.eval()(x))


def test_a_crafted_input_dtype_is_a_clear_error(tmp_path: Path) -> None:
    from compresskit import models as model_registry

    with model_registry.MODELS.snapshot():
        @ck.register_model("test_token_net_plain")
        def token_net(width: int = 32) -> nn.Module:
            return _TokenNet(width)

        data = [(torch.randint(0, 20, (4, 5)), torch.randn(4, 5, 8))]
        result = ck.compress(ck.create_model("test_token_net_plain"), data, config=_NO_STEPS)
        path = result.save(tmp_path / "reg.pt")
        saved = torch.load(path, weights_only=True)
        assert saved["registered"]["inputs"] == [([4, 5], "int64")]
        assert isinstance(ck.load(path), _TokenNet)
        for bad in ("load", "save", "nn", 3):
            saved["registered"]["inputs"] = [([4, 5], bad)]
            torch.save(saved, tmp_path / "bad.pt")
            with pytest.raises(ValueError, match=r"bad\.pt.*not a torch dtype"):
                ck.load(tmp_path / "bad.pt")
