"""The ST-MFNet Mini recipe end to end on the sample clips (one step per stage), its resume, the plugin."""

from __future__ import annotations

import json

import torch
from compresskit_stmfnet.models import STMFNET_MINI_WIDTHS, STMFNet
from compresskit_stmfnet.models.stmfnet import drop_flow_branch, flow_branch_density, summarize_widths
from compresskit_stmfnet.recipe import PUBLISHED, MiniRecipeConfig, run

import compresskit as ck


def test_smoke_recipe_runs_both_phases_writes_the_table_and_resumes(tmp_path):
    cfg = MiniRecipeConfig(out_dir=tmp_path, smoke=True, smoke_steps=1, smoke_eval_samples=1,
                           drop_flow="always", progress=False)
    summary = run(cfg)
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert plan["drop_flow"] is True
    assert plan["params"]["student"] < plan["params"]["stmfnet"]
    teacher_widths = STMFNet(cfg.smoke_widths).widths.to_dict()
    for part in ("heads", "grid", "unet"):  # the plan never widens a part
        assert all(s <= t for s, t in zip(plan["widths"][part], teacher_widths[part]))
    table = (tmp_path / "table.md").read_text()
    for name in PUBLISHED:
        assert f"| {name} (published) |" in table
    assert "| ST-MFNet Mini (ours) |" in table and "sample_val" in table
    scores = summary["evaluation"]["scores"]["ST-MFNet Mini"]["sample_val"]
    assert 0 < scores["psnr"] < 100 and 0 <= scores["ssim"] <= 1
    student = torch.load(tmp_path / "distill" / "stmfnet_mini.pth", weights_only=True)["state_dict"]
    assert not any(k.startswith(("flow_estimator.", "metric.")) for k in student)
    # a rerun finds every stage done: no training step is repeated
    logs = [tmp_path / s / "train" / "metrics.jsonl" for s in ("sparsify", "distill")]
    before = [p.read_text() for p in logs]
    run(cfg, stop_after="distill")
    assert [p.read_text() for p in logs] == before


def test_dropping_a_collapsed_flow_branch_is_exact():
    torch.manual_seed(5)
    model = STMFNet(STMFNET_MINI_WIDTHS, flow=True).eval()
    assert flow_branch_density(model) == 1.0
    with torch.no_grad():  # what OBProx-SG leaves when the branch collapses
        model.scale_synthesis.lateral_1_0.f[1].weight[:, 6:] = 0
        model.scale_synthesis.lateral_1_0.conv.weight[:, 6:] = 0
    assert flow_branch_density(model) == 0.0
    small = drop_flow_branch(model)
    assert [k for k in small.state_dict()] == list(STMFNet(STMFNET_MINI_WIDTHS, flow=False).state_dict())
    assert summarize_widths(small) == STMFNET_MINI_WIDTHS
    g = torch.Generator().manual_seed(6)
    frames = [torch.rand(1, 3, 48, 64, generator=g) for _ in range(4)]
    with torch.no_grad():
        torch.testing.assert_close(small(*frames), model(*frames))


def test_registered_models_load_checkpoints_strictly(tmp_path):
    assert {"stmfnet", "stmfnet_mini"} <= set(ck.list_models())
    torch.manual_seed(7)
    mini = ck.create_model("stmfnet_mini")
    assert sum(p.numel() for p in mini.parameters()) == 1_822_162
    torch.save({"state_dict": mini.state_dict()}, tmp_path / "mini.pth")
    again = ck.create_model("stmfnet_mini", checkpoint=tmp_path / "mini.pth")
    for (k, a), b in zip(mini.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    full = ck.create_model("stmfnet")
    assert not any(p.requires_grad for p in full.flow_estimator.parameters())
