"""compresskit.stages: the run's frozen inputs and the stages' artifacts, and the one stage vocabulary.

The fingerprints of a small run are compared with the ones the code before the State split wrote
(``tests/data/stage_fingerprints.json``, made by :func:`fingerprints` on that code): a run folder made
before resumes without redoing a stage. Folders and artifacts of the recover stage written under the old
names (``finetune/``, ``finetuned.pt``) are still found."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import compresskit as ck
from compresskit.pipeline import StageStore
from compresskit.stages import STAGES, Artifacts, RecoverStage, RunInputs

DATA = Path(__file__).parent / "data" / "stage_fingerprints.json"


def _loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    y = x @ torch.randn(4, 2, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)


def _net() -> nn.Module:
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    with torch.no_grad():  # weights independent of torch's initialisation: the checksums stay put
        for i, p in enumerate(net.parameters()):
            p.copy_(torch.linspace(-1, 1, p.numel()).reshape(p.shape) * (0.5 + 0.1 * i))
    return net


def _run(out: Path, plan: dict | None = None, **kw):
    torch.manual_seed(0)
    return ck.compress(_net(), _loader(), target="2x params",
                       config={"sparsify": {"steps": 3}, "recover": {"steps": 2}, "out_dir": str(out),
                               "progress": False, "seed": 0, **({"plan": plan} if plan else {})}, **kw)


def fingerprints(out: Path, plan: dict | None = None) -> dict:
    """Every stage artifact's fingerprint and every training folder's stamp, by file name."""
    _run(out, plan)
    found = {}
    for p in sorted(out.rglob("*")):
        if p.suffix == ".pt" and p.parent == out and p.name != "compressed.pt":
            found[p.name] = torch.load(p, map_location="cpu", weights_only=True)["fingerprint"]
        elif p.name == "fingerprint.json":
            found[f"{p.parent.name}/"] = json.loads(p.read_text())
    return json.loads(json.dumps(found))


_RENAMED = {"recovered.pt": "finetuned.pt", "recover/": "finetune/"}  # the new name: the old one


def _without_added_settings(fp):
    """The fingerprint less the settings added after the recording (PlanConfig.min_keep, issue 20): a
    setting a run did not have changes its fingerprints, and nothing else may."""
    if isinstance(fp, dict):
        return {k: _without_added_settings(v) for k, v in fp.items()
                if not (k == "min_keep" and "importance" in fp)}
    if isinstance(fp, list):
        return [_without_added_settings(v) for v in fp]
    return fp


def test_fingerprints_are_those_of_the_code_before_the_split(tmp_path):
    before = json.loads(DATA.read_text())
    raw = fingerprints(tmp_path)
    assert '"min_keep": "auto"' in json.dumps(raw)  # the added setting is part of the plan's fingerprint
    now = {name: _without_added_settings(fp) for name, fp in raw.items()}
    assert {_RENAMED.get(k, k) for k in now} == set(before)
    for name, fp in now.items():
        assert fp == before[_RENAMED.get(name, name)], name


def _stamps(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.glob("*.pt") if p.name != "compressed.pt"}


def test_a_run_folder_with_the_old_names_resumes_without_redoing_a_stage(tmp_path):
    first = _run(tmp_path).model
    (tmp_path / "recovered.pt").rename(tmp_path / "finetuned.pt")
    (tmp_path / "recover").rename(tmp_path / "finetune")
    stamps = _stamps(tmp_path)
    again = _run(tmp_path).model
    assert _stamps(tmp_path) == stamps
    assert not (tmp_path / "recovered.pt").exists() and not (tmp_path / "recover").exists()
    for k, v in first.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_train_dir_uses_the_old_folder_only_when_the_new_one_is_absent(tmp_path):
    store = StageStore(tmp_path)
    old = tmp_path / "finetune"
    old.mkdir()
    (old / "fingerprint.json").write_text(json.dumps({"a": 1}))
    (old / "ckpt.pt").write_text("x")
    assert store.train_dir("recover", {"a": 1}, old_names=("finetune",)) == old
    assert (old / "ckpt.pt").is_file()  # same settings: its checkpoints are kept for resuming
    (tmp_path / "recover").mkdir()
    assert store.train_dir("recover", {"a": 1}, old_names=("finetune",)) == tmp_path / "recover"
    assert StageStore(None).train_dir("recover", {}, old_names=("finetune",)) is None


def test_one_name_per_stage():
    names = [s.name for s in STAGES]
    assert names == ["trace", "sparsify", "plan", "shrink", "recover"]
    assert RecoverStage.artifact == "recovered.pt" and RecoverStage.old_artifacts == ("finetuned.pt",)
    from compresskit.stages import STOPS

    assert set(STOPS) == set(names[1:])


def test_inputs_are_frozen_and_artifacts_start_empty():
    assert dataclasses.is_dataclass(RunInputs) and RunInputs.__dataclass_params__.frozen
    inputs = RunInputs(model=nn.Linear(1, 1), config=None, target=None, train_loader=[], loss_fn=None,
                       inputs_fn=None, loss_how="", inputs_how="", example_inputs=(), store=None,
                       console=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        inputs.model = nn.Linear(2, 2)
    art = Artifacts()
    assert art.work is None and art.plan is None and art.small is None and art.reached == "traced"
    given = {f.name for f in dataclasses.fields(RunInputs)}
    assert given.isdisjoint(f.name for f in dataclasses.fields(Artifacts))


def test_stop_after_recover_is_the_whole_run(tmp_path):
    result = _run(tmp_path, stop_after="recover")
    assert (tmp_path / "compressed.pt").is_file() and (tmp_path / "report.json").is_file()
    assert "recover" in result.report.stages


if __name__ == "__main__":  # python tests/test_stage_state.py OUT: write the fixture (run on the old code)
    DATA.write_text(json.dumps(fingerprints(Path(sys.argv[1])), indent=1, sort_keys=True) + "\n")


def test_no_width_floor_fingerprints_as_before_the_setting_existed(tmp_path):
    """``plan.min_keep=0`` plans as the code before the setting did, so its fingerprints are the
    recorded ones as they are (a run folder of that code resumes)."""
    before = json.loads(DATA.read_text())
    now = fingerprints(tmp_path, plan={"min_keep": 0.0})
    for name, fp in now.items():
        assert fp == before[_RENAMED.get(name, name)], name
