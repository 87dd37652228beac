"""The CDFI recipe's smoke path end to end (every stage, a step each), resume, and the paper table."""

from __future__ import annotations

import json

import pytest
import torch
from compresskit_adacof.models import CDFI, AdaCoF, widths_from_state_dict
from compresskit_adacof.recipe import PUBLISHED, CDFIRecipeConfig, paper_table, published_densities, run


def test_smoke_recipe_runs_every_stage_and_resumes(tmp_path):
    cfg = CDFIRecipeConfig(out_dir=tmp_path, smoke=True, smoke_steps=1, smoke_batch=1, smoke_size=32,
                           smoke_eval_samples=1, progress=False)
    summary = run(cfg)
    for stage in ("sparsify", "shrink", "retrain", "cdfi"):
        assert (tmp_path / stage / "done.pt").is_file(), stage
    # one optimizer step per training stage, logged by ck.train
    for stage in ("sparsify", "retrain", "cdfi"):
        records = [json.loads(line) for line in (tmp_path / stage / "train" / "metrics.jsonl").open()]
        assert [r["step"] for r in records if r["kind"] == "train"] == [1]
        assert {"charbonnier", "g_spatial"} <= set(records[-1])
    # the shrunk model is an AdaCoF whose widths the plan chose, smaller than the dense one (the smoke
    # run's large λ zeroes weights in one step)
    state = torch.load(tmp_path / "shrink" / "done.pt", weights_only=True)
    small = AdaCoF(5, 1, widths_from_state_dict(state))
    small.load_state_dict(state)
    assert summary["params"]["compressed_adacof"] == sum(p.numel() for p in small.parameters())
    assert summary["params"]["compressed_adacof"] < summary["params"]["adacof"] == 21_843_427
    densities = json.loads((tmp_path / "sparsify" / "densities.json").read_text())
    assert min(densities.values()) < 1.0
    CDFI().load_state_dict(torch.load(tmp_path / "cdfi" / "cdfi.pth", weights_only=True)["state_dict"])
    table = (tmp_path / "table.md").read_text()
    assert "| CDFI (published) | 4,976,718 | 35.17 / 0.964 / 0.010" in table
    assert "| CDFI (ours) |" in table and "| compressed AdaCoF (ours) |" in table
    # a rerun finds every stage done and changes nothing
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.pt")}
    again = run(cfg)
    assert again["widths"] == summary["widths"]
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.pt")} == before


def test_full_recipe_asks_for_its_data_and_weights(tmp_path):
    with pytest.raises(ValueError, match="vimeo_dir"):
        run(CDFIRecipeConfig(out_dir=tmp_path, progress=False))


def test_published_densities_cover_the_encoder_and_decoder_convs():
    densities = published_densities()
    assert len(densities) == 27
    assert densities["get_kernel.moduleConv1.0"] == 0.858
    assert densities["get_kernel.moduleDeconv2.4"] == 0.735
    model = AdaCoF(5, 1)
    for name in densities:
        assert isinstance(model.get_submodule(name), torch.nn.Conv2d)


def test_paper_table_puts_published_and_measured_rows_side_by_side():
    results = {"models": {"CDFI": {"params": 4_976_718}},
               "scores": {"CDFI": {"middlebury": {"psnr": 36.5, "ssim": 0.96, "n": 12}}}}
    table = paper_table(results)
    lines = table.strip().split("\n")
    assert len(lines) == 2 + len(PUBLISHED) + 1
    assert lines[-1] == "| CDFI (ours) | 4,976,718 | - | 36.50 / 0.960 / - | - |"
    published = ("| compressed AdaCoF (published) | 2,452,094 | 34.10 / - / - | 35.43 / - / - "
                 "| 35.10 / - / - |")
    assert published in lines
