"""The ST-MFNet Mini recipe end to end on the sample clips (one step per stage), its resume, the plugin."""

from __future__ import annotations

import json
import math

import pytest
import torch
from compresskit_stmfnet.models import STMFNET_MINI_WIDTHS, STMFNet
from compresskit_stmfnet.models.stmfnet import drop_flow_branch, flow_branch_density, summarize_widths
from compresskit_stmfnet.recipe import (
    PUBLISHED,
    MiniRecipeConfig,
    build_student,
    load_teacher,
    phase1_loss,
    plan_student,
    run,
)

import compresskit as ck


def test_smoke_recipe_runs_both_phases_writes_the_table_resumes_and_redoes_changed_stages(tmp_path):
    cfg = MiniRecipeConfig(out_dir=tmp_path, smoke=True, smoke_steps=1, smoke_eval_samples=1,
                           student="plan", drop_flow="always", progress=False)
    summary = run(cfg)
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert plan["drop_flow"] is True and plan["student"] == "plan"
    assert plan["params"]["student"] < plan["params"]["stmfnet"]
    teacher_widths = STMFNet(cfg.smoke_widths).widths.to_dict()
    for part in ("heads", "grid", "unet"):  # the plan never widens a part
        assert all(s <= t for s, t in zip(plan["widths"][part], teacher_widths[part]))
    table = (tmp_path / "table.md").read_text()
    for name in PUBLISHED:
        assert f"| {name} (published) |" in table
    # the row says what was trained: compresskit's plan, not the published Mini
    assert "| ST-MFNet Mini (compresskit plan) (ours) |" in table and "sample_val" in table
    assert "| ST-MFNet Mini (ours) |" not in table
    scores = summary["evaluation"]["scores"]["ST-MFNet Mini (compresskit plan)"]["sample_val"]
    assert 0 <= scores["ssim"] <= 1
    student = torch.load(tmp_path / "distill" / "stmfnet_mini.pth", weights_only=True)["state_dict"]
    assert not any(k.startswith(("flow_estimator.", "metric.")) for k in student)
    # the table's PSNR is the saved student's, computed here by hand: 10·log10(255² / MSE) on 8-bit frames
    sparse = load_teacher(cfg)
    sparse.load_state_dict(torch.load(tmp_path / "sparsify.pt", weights_only=True)["state_dict"])
    example = tuple(torch.zeros(1, 3, cfg.smoke_size, cfg.smoke_size) for _ in range(4))
    model = build_student(sparse, plan["plan"], plan["drop_flow"], example, cfg.student, cfg.seed)
    model.load_state_dict(student)
    from compresskit_vfi.data.samples import sample_dataset

    *frames, gt = sample_dataset("quintuplet", "val", size=cfg.smoke_size)[0]
    with torch.no_grad():
        pred = model.eval()(*(f[None] for f in frames))[0]
    q = (pred.clamp(0, 1) * 255).round()
    mse = float((q - (gt.clamp(0, 1) * 255).round()).pow(2).mean())
    assert scores["psnr"] == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-3)
    # a rerun finds every stage done: no training step is repeated, no artifact rewritten
    logs = {s: tmp_path / s / "train" / "metrics.jsonl" for s in ("sparsify", "distill")}
    before = {s: p.read_text() for s, p in logs.items()}
    artifacts = [tmp_path / f"{s}.pt" for s in ("sparsify", "plan", "distill", "evaluate")]
    stamps = [p.stat().st_mtime_ns for p in artifacts]
    run(cfg)
    assert {s: p.read_text() for s, p in logs.items()} == before
    assert [p.stat().st_mtime_ns for p in artifacts] == stamps
    # another α: Phase I and the plan are kept, the distillation and the evaluation are redone
    run(cfg.model_copy(update={"alpha": 0.5}))
    after = [p.stat().st_mtime_ns for p in artifacts]
    assert after[:2] == stamps[:2] and after[2] != stamps[2] and after[3] != stamps[3]
    assert logs["sparsify"].read_text() == before["sparsify"]
    assert logs["distill"].read_text() != before["distill"]


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


def test_a_kept_flow_branch_keeps_the_pretrained_frozen_pwcnet(tmp_path):
    """Mini has no flow branch: a kept one must keep the pretrained PWC-Net (frozen in Phase I) at full
    width and frozen, never re-initialised, in both student modes."""
    cfg = MiniRecipeConfig(out_dir=tmp_path, smoke=True)
    torch.manual_seed(2)
    sparse = STMFNet(cfg.smoke_widths)  # the flow branch and its frozen "pretrained" PWC-Net
    refiner = sparse.flow_estimator.netRefiner.netMain
    with torch.no_grad():  # exact zeros in the pretrained PWC-Net (half the inputs of a refiner conv, the
        refiner[2].weight[:, :64] = 0  # only reader of netMain[0]'s 128 channels); Phase I sparsity in a head
        sparse.get_kernel.moduleWeight1[2].weight[:, :8] = 0  # reads 8 of moduleWeight1[0]'s 16 channels
    example = tuple(torch.zeros(1, 3, 64, 64) for _ in range(4))
    plan = plan_student(sparse, example)
    pretrained = sparse.flow_estimator.state_dict()
    for mode in ("plan", "uniform"):
        student = build_student(sparse, plan, False, example, mode=mode, seed=3)
        assert student.flow
        own = student.flow_estimator.state_dict()
        assert list(own) == list(pretrained)
        for k, v in pretrained.items():
            assert torch.equal(own[k], v), (mode, k)
        assert not any(p.requires_grad for p in student.flow_estimator.parameters())
        assert student.metric.paramScale.requires_grad
        # the rest is trained from scratch: re-initialised, not copied
        assert not torch.equal(student.get_kernel.moduleWeight1[0].weight,
                               sparse.get_kernel.moduleWeight1[0].weight)
    # the trained parts were planned: the sparse head shrank (ceil(0.5 · 16)), the frozen PWC-Net did not
    student = build_student(sparse, plan, False, example)
    assert student.get_kernel.moduleWeight1[0].out_channels == 8
    assert student.flow_estimator.netRefiner.netMain[0].out_channels == 128


def test_phase1_loss_is_the_published_summed_laplacian_loss():
    """Published LaplacianLoss: Σ_i 2^i · L1(reduction="sum") over 5 levels. For a constant error c every
    band is 0 but the low-pass one (H/16 × W/16, weight 2^4): loss = 16 · c · B·C·(H/16)·(W/16)."""
    c, b, h, w = 0.25, 2, 64, 96
    out, target = torch.zeros(b, 3, h, w), torch.full((b, 3, h, w), c)
    batch = (torch.zeros(1), target)
    expected = 16 * c * b * 3 * (h // 16) * (w // 16)
    cfg = MiniRecipeConfig(out_dir="x")
    assert cfg.sparsify_reduction == "sum" and cfg.smoke_reduction == "mean"  # the smoke teacher is random
    assert float(phase1_loss()(out, batch)) == pytest.approx(expected)
    assert float(phase1_loss("mean")(out, batch)) == pytest.approx(expected / (b * 3 * h * w))
    # the summed loss grows with the batch (published), the mean does not
    assert float(phase1_loss()(torch.zeros(2 * b, 3, h, w), (0, target.repeat(2, 1, 1, 1)))) == \
        pytest.approx(2 * expected)
