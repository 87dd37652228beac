"""`make demo` runs examples/demo.py; this runs the same code path with tiny settings."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("compresskit_adacof")
pytest.importorskip("compresskit_vfi")


def _demo():
    spec = importlib.util.spec_from_file_location("demo", ROOT / "examples" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    import compresskit as ck

    demo = _demo()
    args = ["--out", str(tmp_path), "--teacher-steps", "2", "--sparsify-steps", "2", "--finetune-steps", "2",
            "--max-frames", "30", "--val-samples", "2", "--crop", "32", "--batch-size", "2",
            "--width-scale", "0.125"]
    assert demo.main(args) == 0
    for name in ("compressed_model.pt", "side_by_side.png", "results.json", "compress/report.json",
                 "compress/densities.png"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "side_by_side.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((tmp_path / "compress" / "report.json").read_text())
    assert report["after"]["params"] <= report["before"]["params"]
    small = ck.load(tmp_path / "compressed_model.pt")
    assert sum(p.numel() for p in small.parameters()) == report["after"]["params"]
    out = capsys.readouterr().out
    assert "reproduce_cdfi.py" in out and "reproduce_stmfnet_mini.py" in out
    # a rerun finds every stage's checkpoint and finishes again
    assert demo.main(args) == 0
