"""The ST-MFNet Mini recipe trains what the published code trained (issue 21): the published student, the
Phase II length and loss, Phase I with the PWC-Net, the density as the paper counts it, the published
initialisation, the teacher's mode, the registered models' default loss."""

from __future__ import annotations

import json
import math

import pytest
import torch
from compresskit_stmfnet import recipe
from compresskit_stmfnet.models import STMFNET_MINI_WIDTHS, STMFNet
from compresskit_stmfnet.recipe import MiniRecipeConfig
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset

import compresskit as ck
from compresskit.pipeline import StageStore


def test_settings_are_the_published_ones():
    """VFI_MODELS.md: the published Mini as student; Phase II 70 epochs of StepLR(20, 0.5) per epoch (lr
    1e-3 down to 1.25e-4 in the last epochs), summed Laplacian losses; Phase I fine-tunes the PWC-Net."""
    cfg = MiniRecipeConfig(out_dir="x")
    assert (cfg.student, cfg.phase1_flow, cfg.teacher_mode) == ("published", "finetune", "eval")
    assert (cfg.distill_epochs, cfg.step_size, cfg.gamma, cfg.lr) == (70, 20, 0.5, 1e-3)
    assert (cfg.distill_reduction, cfg.sparsify_reduction) == ("sum", "sum")
    assert (cfg.batch, cfg.crop, cfg.alpha) == (2, 256, 0.1)
    opt = torch.optim.Adamax([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, cfg.step_size, cfg.gamma)
    for _ in range(cfg.distill_epochs - 1):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1.25e-4)


def test_the_published_student_is_the_published_mini(tmp_path):
    """student='published': fixed widths, no flow branch, 1,822,162 parameters, whatever Phase I found;
    the plan stage records it and both overall densities."""
    cfg = MiniRecipeConfig(out_dir=tmp_path, smoke=True, smoke_steps=1, progress=False)
    state = recipe.RecipeState(cfg, Console(quiet=True), StageStore(tmp_path), TensorDataset(torch.zeros(1)))
    torch.manual_seed(0)
    state.sparse = STMFNet(cfg.smoke_widths)  # what Phase I left (its densities do not matter here)
    state.fingerprints["plan"] = {}
    info = json.loads(recipe.PlanStage().run(state)["info"])
    assert json.loads((tmp_path / "plan" / "plan.json").read_text()) == info
    assert info["student"] == "published" and info["drop_flow"] is True
    assert info["params"]["student"] == 1_822_162
    assert info["widths"] == STMFNET_MINI_WIDTHS.to_dict()
    assert set(info["overall_density"]) == {"ours", "published_rule"}
    student = recipe.published_student()
    assert not student.flow and sum(p.numel() for p in student.parameters()) == 1_822_162
    assert recipe._label("published") == "ST-MFNet Mini"


def test_phase1_fine_tunes_the_pwcnet_under_the_l1_penalty(tmp_path, monkeypatch):
    """As published, every trainable parameter (the PWC-Net's included) is in OBProx-SG's λ group; the
    finished stage's PWC-Net moved (the smoke λ zeroes small weights in one prox step)."""
    cfg = MiniRecipeConfig(out_dir=tmp_path, smoke=True, smoke_steps=1, progress=False)
    seen = {}
    real_train = ck.train

    def record(model, loader, loss, **kw):
        seen.update(model=model, optimizer=kw["optimizer"])
        return real_train(model, loader, loss, **kw)

    monkeypatch.setattr(ck, "train", record)
    recipe.run(cfg, stop_after="sparsify")
    flow = {id(p) for p in seen["model"].flow_estimator.parameters()}
    group = seen["optimizer"].param_groups[0]
    assert group["lambda_"] == cfg.smoke_lambda and flow <= {id(p) for p in group["params"]}
    trained = torch.load(tmp_path / "sparsify.pt", weights_only=True)["state_dict"]
    pretrained = recipe.load_teacher(cfg).state_dict()
    moved = [k for k in pretrained
             if k.startswith("flow_estimator.") and not torch.equal(trained[k], pretrained[k])]
    assert moved
    # 'frozen' keeps it as loaded
    frozen = recipe.load_teacher(cfg)
    assert not any(p.requires_grad for p in frozen.flow_estimator.parameters())


def test_density_as_the_paper_counts_it():
    """Every parameter named '*weight*' (batch-norm weights included, biases not), by hand; ours counts the
    trainable weights of >= 2 dims."""
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([0.0, 1.0]).view(2, 1, 1, 1))  # 1 of 2 nonzero
        model[0].bias.zero_()  # not a weight: not counted
        model[1].weight.copy_(torch.tensor([0.0, 0.0]))  # 0 of 2 nonzero
    assert recipe.density_published_rule(model) == pytest.approx(1 / 4)
    assert recipe.density_ours(model) == pytest.approx(1 / 2)


def test_phase2_losses_are_the_published_summed_laplacian():
    """α·Lap(S, GT) + Lap(S, T), each summed: a constant error c gives 16·c·B·C·(H/16)·(W/16) per term."""
    cfg = MiniRecipeConfig(out_dir="x")
    student, teacher = recipe.phase2_terms(cfg)
    assert (student.weight, student.against) == (0.1, "target")
    assert (teacher.weight, teacher.against) == (1.0, "teacher")
    c, b, h, w = 0.5, 2, 32, 64
    value = float(student.loss(torch.zeros(b, 3, h, w), torch.full((b, 3, h, w), c)))
    assert value == pytest.approx(16 * c * b * 3 * (h // 16) * (w // 16))
    smoke = recipe.phase2_terms(cfg.model_copy(update={"smoke": True}))  # random teacher: mean, labelled
    assert smoke[0].loss.reduction == "mean"


def test_phase2_hands_ck_distill_the_published_schedule_and_losses(tmp_path, monkeypatch):
    cfg = MiniRecipeConfig(out_dir=tmp_path, smoke=True, progress=False)
    cfg = cfg.model_copy(update={"smoke": False})  # the full settings, with the smoke model and no files
    monkeypatch.setattr(recipe, "load_teacher", lambda cfg: STMFNet(cfg.smoke_widths))
    seen = {}
    monkeypatch.setattr(ck, "distill", lambda s, teacher, loader, **kw: seen.update(teacher=teacher, **kw))
    data = TensorDataset(torch.zeros(5, 1))
    state = recipe.RecipeState(cfg, Console(quiet=True), StageStore(tmp_path), data)
    state.student = nn.Linear(1, 1)
    state.fingerprints["distill"] = {}
    recipe.DistillStage().run(state)
    config = seen["config"]
    assert (config.epochs, config.scheduler, config.step_size, config.gamma, config.scheduler_interval,
            config.optimizer, config.lr) == (70, "step", 20, 0.5, "epoch", "adamax", 1e-3)
    assert [t.loss.reduction for t in seen["losses"]] == ["sum", "sum"]
    assert isinstance(seen["teacher"], STMFNet)  # eval mode inside ck.distill (ours)
    state.cfg = cfg.model_copy(update={"teacher_mode": "train"})
    recipe.DistillStage().run(state)
    assert isinstance(seen["teacher"], recipe._TrainModeTeacher)


def test_a_train_mode_teacher_uses_batch_statistics_inside_distill():
    """teacher_mode='train' (the published script): even under ck.distill's frozen eval-mode teacher, the
    BatchNorm normalises with the batch's own statistics."""
    from compresskit.distillation.engine import frozen

    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3)
    bn.running_mean.fill_(5.0)
    x = torch.randn(8, 3) * 2 + 1
    wrapped = recipe._TrainModeTeacher(bn)
    with frozen(wrapped), torch.no_grad():
        out = wrapped(x)
    expected = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + bn.eps)
    torch.testing.assert_close(out, expected)
    with frozen(bn), torch.no_grad():  # the default: running statistics
        torch.testing.assert_close(bn(x), (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps))


def test_students_get_the_published_initialisation():
    """The 3-D U-Net encoder: Conv3d kaiming_normal(fan_out, relu) — std √(2/fan_out) — with zero biases
    (SE gates included), BatchNorm 1/0; paramScale back to −1 in a re-initialised student that keeps the
    flow branch (it had moved in Phase I)."""
    student = recipe.published_student(seed=0)
    enc = student.dyntex_generator.encoder
    conv = enc.layer3[0].conv2[0]  # 3×3×3, 32 → 32: fan_out = 32·27
    std = float(conv.weight.detach().std())
    assert std == pytest.approx(math.sqrt(2 / (32 * 27)), rel=0.1)
    for m in enc.modules():
        if isinstance(m, nn.Conv3d) and m.bias is not None:
            assert not m.bias.any()
        if isinstance(m, nn.BatchNorm3d):
            assert bool((m.weight == 1).all()) and not m.bias.any()
    assert any(isinstance(m, nn.Conv3d) and m.bias is not None for m in enc.modules())  # the SE gates
    cfg = MiniRecipeConfig(out_dir="x", smoke=True)
    torch.manual_seed(1)
    sparse = STMFNet(cfg.smoke_widths)
    with torch.no_grad():
        sparse.metric.paramScale.fill_(0.3)
    example = tuple(torch.zeros(1, 3, 64, 64) for _ in range(4))
    small = recipe.build_student(sparse, recipe.plan_student(sparse, example), False, example, "plan")
    assert small.metric.paramScale.item() == -1.0


def test_registered_stmfnet_models_default_to_the_published_laplacian_loss():
    from compresskit_vfi import task

    for name in ("stmfnet", "stmfnet_mini"):
        assert ck.model_info(name).default_loss is task.laplacian_loss
    c, b, h, w = 0.25, 1, 32, 48
    batch = (torch.zeros(b, 3, h, w),) * 4 + (torch.full((b, 3, h, w), c),)
    value = float(task.laplacian_loss(torch.zeros(b, 3, h, w), batch))
    assert value == pytest.approx(16 * c * b * 3 * (h // 16) * (w // 16))
