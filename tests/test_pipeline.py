"""compresskit.pipeline: the one stage runner of ck.compress and the recipes."""

from __future__ import annotations

from types import SimpleNamespace

import torch

import compresskit.stages as core_stages
from compresskit.pipeline import Stage, StageStore, run_stages


class _Add(Stage):
    """``value = upstream value + settings[name]``; counts its runs in ``state.ran``."""

    def __init__(self, name: str, upstream: str | None):
        self.name, self.artifact, self.upstream = name, f"{name}.pt", upstream

    def fingerprint(self, state):
        return {"setting": state.settings[self.name],
                "upstream": state.fingerprints[self.upstream] if self.upstream else None}

    def run(self, state):
        state.ran.append(self.name)
        base = state.values[self.upstream] if self.upstream else 0
        state.values[self.name] = base + state.settings[self.name]
        return {"value": torch.tensor(state.values[self.name])}

    def restore(self, state, payload):
        state.values[self.name] = int(payload["value"])


STAGES = (_Add("a", None), _Add("b", "a"), _Add("c", "b"))


def _run(tmp_path, resume=True, stop_after=None, **settings):
    state = SimpleNamespace(settings={"a": 1, "b": 10, "c": 100, **settings}, values={}, ran=[],
                            fingerprints={})
    timings: dict[str, float] = {}
    run_stages(STAGES, state, StageStore(tmp_path, resume), fingerprints=state.fingerprints, timings=timings,
               stop_after=stop_after)
    return state, timings


def test_a_changed_setting_redoes_its_stage_and_the_later_ones_only(tmp_path):
    state, timings = _run(tmp_path)
    assert state.ran == ["a", "b", "c"] and state.values == {"a": 1, "b": 11, "c": 111}
    assert set(timings) == {"a", "b", "c"}
    state, _ = _run(tmp_path)  # same settings: everything restored
    assert state.ran == [] and state.values["c"] == 111
    state, _ = _run(tmp_path, b=20)  # b changed: a kept, b and c redone (c's upstream changed)
    assert state.ran == ["b", "c"] and state.values == {"a": 1, "b": 21, "c": 121}
    state, _ = _run(tmp_path, b=20)
    assert state.ran == []
    state, _ = _run(tmp_path, resume=False, b=20)
    assert state.ran == ["a", "b", "c"]


def test_stop_after_and_no_folder(tmp_path):
    state, _ = _run(tmp_path, stop_after="b")
    assert state.ran == ["a", "b"] and not (tmp_path / "c.pt").exists()
    state, _ = _run(None)
    assert state.ran == ["a", "b", "c"]


def test_train_dir_is_emptied_for_other_settings(tmp_path):
    store = StageStore(tmp_path)
    folder = store.train_dir("x/train", {"lr": 1})
    (folder / "ckpt.pt").write_text("old")
    assert (store.train_dir("x/train", {"lr": 1}) / "ckpt.pt").is_file()  # same settings: resumes
    assert not (store.train_dir("x/train", {"lr": 2}) / "ckpt.pt").exists()


def test_the_core_stages_run_on_the_public_pipeline():
    assert issubclass(core_stages.TraceStage, Stage)
    assert core_stages._Stages is StageStore and core_stages.Stage is Stage
