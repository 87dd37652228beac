"""The CDFI recipe trains what the published code trained (issue 21): its resolved settings against the
published numbers, what stage I and the retraining hand to ck.train, the model selection, the widths."""

from __future__ import annotations

import json
import math

import pytest
import torch
from compresskit_adacof import recipe
from compresskit_adacof.losses import VGG16Conv43
from compresskit_adacof.models import AdaCoF, compressed_widths, widths_from_state_dict
from compresskit_adacof.recipe import CDFIRecipeConfig
from rich.console import Console
from torch.utils.data import TensorDataset

import compresskit as ck
from compresskit.pipeline import StageStore


def test_settings_are_the_published_ones():
    """VFI_MODELS.md, "Published training procedures": stage I OBProx-SG λ 1e-4, lr 1e-2, eps 0, Np 10,
    100 epochs (99 run), StepLR(20, 0.5), 1,000 triplets, batch 8, the full CDFI loss; the compressed
    AdaCoF retrained like CDFI (full frames, batch 8, 100 epochs, CDFI's loss); CDFI 100 epochs, batch 8,
    the best Middlebury epoch kept."""
    cfg = CDFIRecipeConfig(out_dir="x")
    assert (cfg.sparsify_lambda, cfg.sparsify_lr, cfg.sparsify_eps) == (1e-4, 1e-2, 0)
    assert cfg.sparsify_prox_epochs == 10
    assert (cfg.sparsify_epochs, cfg.sparsify_triplets, cfg.sparsify_batch) == (99, 1000, 8)
    assert (cfg.step_size, cfg.gamma, cfg.lr) == (20, 0.5, 1e-3)
    assert (cfg.spatial_weight, cfg.perceptual_weight) == (0.01, 0.005)
    assert (cfg.retrain_epochs, cfg.retrain_batch, cfg.retrain_crop) == (100, 8, None)
    assert cfg.retrain_loss == "cdfi"
    assert (cfg.cdfi_epochs, cfg.cdfi_batch, cfg.select) == (100, 8, "best_middlebury")


def _vgg(path):
    torch.manual_seed(0)
    torch.save({f"features.{k}": v for k, v in VGG16Conv43().features.state_dict().items()}, path)
    return path


def _state(cfg, sets):
    return recipe.RecipeState(cfg, Console(quiet=True), StageStore(cfg.out_dir), sets)


def test_stage_one_and_the_retraining_train_as_published(tmp_path, monkeypatch):
    """What the sparsify and retrain stages give ck.train at the published settings (ck.train replaced by a
    recorder): OBProx-SG (λ 1e-4, lr 1e-2, eps 0, Np = 10 epochs of 3 batches) with StepLR(20, 0.5) per
    epoch for 99 epochs; the retraining 100 epochs at batch 8; both with the VGG term; loaders keep the
    last partial batch (20 samples at batch 8: 8, 8, 4)."""
    vgg = _vgg(tmp_path / "vgg.pth")
    cfg = CDFIRecipeConfig(out_dir=tmp_path / "run", adacof_checkpoint=vgg, vgg_weights=vgg,
                           vimeo_dir=tmp_path, progress=False)
    seen = []
    monkeypatch.setattr(ck, "load_state_dict_strict", lambda model, path: None)
    monkeypatch.setattr(ck, "train", lambda model, loader, loss, **kw: seen.append((model, loader, loss, kw)))
    data = TensorDataset(torch.zeros(20, 1))
    state = _state(cfg, (data, data, data))
    state.fingerprints["sparsify"] = {}
    recipe.SparsifyStage().run(state)
    _, loader, loss, kw = seen[0]
    assert [len(b[0]) for b in loader] == [8, 8, 4]
    opt = kw["optimizer"]
    assert isinstance(opt, ck.OBProxSG)
    group = opt.param_groups[0]
    assert (group["lr"], group["lambda_"], group["eps"]) == (1e-2, 1e-4, 0.0)
    assert (opt.n_prox_steps, opt.n_orthant_steps) == (30, None)
    config = kw["config"]
    assert (config.epochs, config.scheduler, config.step_size, config.gamma, config.scheduler_interval) == (
        99, "step", 20, 0.5, "epoch")
    assert (loss.loss.spatial, loss.loss.perceptual_weight) == (0.01, 0.005)
    state.small = AdaCoF(5, 1, compressed_widths())
    state.fingerprints["retrain"] = {}
    recipe.RetrainStage().run(state)
    _, loader, loss, kw = seen[1]
    assert [len(b[0]) for b in loader] == [8, 8, 4]
    assert (kw["config"].epochs, kw["config"].lr, kw["config"].step_size) == (100, 1e-3, 20)
    assert (loss.loss.spatial, loss.loss.perceptual_weight, loss.loss.occlusion) == (0.01, 0.005, 0.0)


def test_cdfi_keeps_the_epoch_with_the_best_selection_psnr_and_says_which(tmp_path):
    """Selection by validation PSNR (smoke: the sample clips stand in for Middlebury, validated every step):
    the kept weights are those of the best validation, its step is recorded in cdfi.pth."""
    from compresskit_vfi.data.samples import sample_dataset

    cfg = CDFIRecipeConfig(out_dir=tmp_path, smoke=True, smoke_steps=3, smoke_batch=1, smoke_size=32,
                           smoke_eval_samples=1, progress=False)
    ds = sample_dataset("triplet", "train", size=32, seed=0)
    state = _state(cfg, (ds, ds, ds))
    stage = recipe.CDFIStage()
    state.fingerprints["cdfi"] = stage.fingerprint(state)
    payload = stage.run(state)
    selection = json.loads(payload["selection"])
    records = [json.loads(line) for line in (tmp_path / "cdfi" / "train" / "metrics.jsonl").open()]
    val = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in val] == [1, 2, 3]
    best = max(val, key=lambda r: r["psnr"])
    assert selection["step"] == best["step"] and selection["psnr"] == pytest.approx(best["psnr"])
    assert selection["epoch"] == 1  # 3 steps of an epoch of 347 one-sample batches
    best_weights = torch.load(tmp_path / "cdfi" / "train" / "best.pt", weights_only=True)["model"]
    saved = torch.load(tmp_path / "cdfi" / "cdfi.pth", weights_only=True)
    assert saved["epoch"] == selection["epoch"]
    for k, v in best_weights.items():
        assert torch.equal(saved["state_dict"][k], v), k
    # the selection metric is the 8-bit PSNR of the evaluation, computed by hand
    f0, f1, gt = sample_dataset("triplet", "val", size=32)[0]
    state.cdfi.eval()
    with torch.no_grad():
        pred = state.cdfi(f0[None], f1[None])
    q = (pred.clamp(0, 1) * 255).round()
    mse = float((q - (gt[None].clamp(0, 1) * 255).round()).pow(2).mean())
    assert best["psnr"] == pytest.approx(-10 * math.log10(mse / 255**2 + 1e-8), abs=1e-3)


def test_no_width_rule_reproduces_the_published_compressed_adacof_so_its_widths_are_data(tmp_path):
    """From the published densities, 'linear' gives 12 of the 52 published widths exactly (27 within ±1),
    'sqrt' none, whatever the coupling; width_rule='published' builds the published widths."""
    published = compressed_widths()
    assert sum(len(v) for v in published.values()) == 52

    def equal(widths):
        return sum(a == b for k in published for a, b in zip(widths[k], published[k]))

    assert equal(recipe.plan_published_widths("linear")[0]) == 12
    assert equal(recipe.plan_published_widths("sqrt")[0]) == 0
    cfg = CDFIRecipeConfig(out_dir=tmp_path, width_rule="published", progress=False)
    state = _state(cfg, (None, None, None))
    state.sparse = AdaCoF(5, 1)
    state.fingerprints["shrink"] = {}
    payload = recipe.ShrinkStage().run(state)
    assert widths_from_state_dict(payload["state_dict"]) == published
    assert json.loads(payload["info"])["params"] == 2_452_094
    state.cfg = cfg.model_copy(update={"init": "inherit"})
    with pytest.raises(ValueError, match="init"):
        recipe.ShrinkStage().run(state)
