"""The CDFI recipe's smoke path end to end (every stage, a step each), resume, and the paper table."""

from __future__ import annotations

import json
import math

import pytest
import torch
from compresskit_adacof.losses import VGG16Conv43
from compresskit_adacof.models import CDFI, AdaCoF, dense_widths, widths_from_state_dict
from compresskit_adacof.models.adacof import HEADS
from compresskit_adacof.recipe import PUBLISHED, CDFIRecipeConfig, paper_table, published_densities, run


def _vgg_file(path):
    """A random VGG16 conv4_3 state_dict in the torchvision key layout (features.N.*)."""
    torch.manual_seed(0)
    torch.save({f"features.{k}": v for k, v in VGG16Conv43().features.state_dict().items()}, path)
    return path


def _records(path):
    return [json.loads(line) for line in path.open()]


def test_smoke_recipe_runs_every_stage_resumes_and_redoes_only_changed_stages(tmp_path):
    out = tmp_path / "run"
    cfg = CDFIRecipeConfig(out_dir=out, smoke=True, smoke_steps=1, smoke_batch=1, smoke_size=32,
                           smoke_eval_samples=1, progress=False, vgg_weights=_vgg_file(tmp_path / "vgg.pth"))
    summary = run(cfg)
    for stage in ("sparsify", "shrink", "retrain", "cdfi", "evaluate"):
        assert (out / f"{stage}.pt").is_file(), stage
    # one optimizer step per training stage, logged by ck.train; every stage trains with CDFI's full loss
    # (Charbonnier + g_Spatial + VGG), as published
    for stage in ("sparsify", "retrain", "cdfi"):
        train = [r for r in _records(out / stage / "train" / "metrics.jsonl") if r["kind"] == "train"]
        assert [r["step"] for r in train] == [1]
        assert {"charbonnier", "g_spatial", "perceptual"} <= set(train[-1]), stage
    # the shrunk model is an AdaCoF whose widths the plan chose, smaller than the dense one (the smoke
    # run's large λ zeroes weights in one step)
    state = torch.load(out / "shrink.pt", weights_only=True)["state_dict"]
    small = AdaCoF(5, 1, widths_from_state_dict(state))
    small.load_state_dict(state)
    assert summary["params"]["compressed_adacof"] == sum(p.numel() for p in small.parameters())
    assert summary["params"]["compressed_adacof"] < summary["params"]["adacof"] == 21_843_427
    densities = json.loads((out / "sparsify" / "densities.json").read_text())
    _check_one_prox_step_densities(densities, lr=cfg.sparsify_lr, lambda_=cfg.smoke_lambda)
    assert widths_from_state_dict(state) == _linear_widths_by_hand(densities)
    saved = torch.load(out / "cdfi" / "cdfi.pth", weights_only=True)
    CDFI().load_state_dict(saved["state_dict"])
    assert saved["epoch"] == summary["selection"]["epoch"] == 1
    table = (out / "table.md").read_text()
    assert "| CDFI (published) | 4,976,718 | 35.17 / 0.964 / 0.010" in table
    assert "| CDFI (ours) |" in table and "| compressed AdaCoF (ours) |" in table
    assert "width_rule='linear'" in table and "CDFI kept at epoch 1" in table
    # a rerun with the same settings restores every stage and writes nothing
    artifacts = sorted(out.rglob("*.pt"))

    def stamps():
        return {p: p.stat().st_mtime_ns for p in artifacts}

    before = stamps()
    again = run(cfg)
    assert again["widths"] == summary["widths"]
    assert stamps() == before
    # another width rule: stage I's sparsification and CDFI (which reads neither) are kept; the shrink,
    # the retraining and the evaluation are redone
    logs = {s: (out / s / "train" / "metrics.jsonl").read_text() for s in ("sparsify", "cdfi")}
    changed = run(cfg.model_copy(update={"width_rule": "sqrt"}))
    after = stamps()
    redone = {p.name for p in artifacts if after[p] != before[p]}
    assert {"shrink.pt", "retrain.pt", "evaluate.pt"} <= redone
    assert not redone & {"sparsify.pt", "cdfi.pt"}
    assert {s: (out / s / "train" / "metrics.jsonl").read_text() for s in logs} == logs
    assert changed["widths"] != summary["widths"]
    assert "width_rule='sqrt'" in (out / "table.md").read_text()
    # and the same (new) settings resume without redoing anything
    before = stamps()
    run(cfg.model_copy(update={"width_rule": "sqrt"}))
    assert stamps() == before


def _check_one_prox_step_densities(densities, lr, lambda_):
    """One Prox-SG step from PyTorch's default conv init, w ~ U(−b, b) with b = 1/√fan_in: the soft
    threshold lr·λ zeroes the weights whose gradient-stepped value lies in [−lr·λ, lr·λ], a window of width
    2·lr·λ inside the support, so the expected density is 1 − lr·λ·√fan_in for every conv (±4 binomial
    standard deviations). With λ = 0.3, lr = 1e-2: 0.978 for Conv1.0 down to 0.796 for the 512-wide convs."""
    model = AdaCoF(5, 1)
    convs = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert set(densities) == convs
    for name, density in densities.items():
        weight = model.get_submodule(name).weight
        expected = 1 - lr * lambda_ * math.sqrt(weight[0].numel())
        sigma = math.sqrt(expected * (1 - expected) / weight.numel())
        assert abs(density - expected) <= 4 * sigma + 1e-4, (name, density, expected)


def _linear_widths_by_hand(densities):
    """The linear width rule on the dense AdaCoF (F=5) from every layer's density: an output width is
    ceil(d·C) for the largest density d among the convs that read it. Readers: the next conv of a stage;
    Conv_k's last output (tied to Upsample_k by the residual add) is read by Conv_{k+1} (Deconv5 for k=5)
    and Deconv_{k−1} (the seven heads for k=2); Deconv_k's last by Upsample_k; the heads' last convs keep
    their F² / 1 channels (read by meaning)."""
    dense = dense_widths(5)

    def width(name, i, readers):
        return max(math.ceil(densities[f"get_kernel.module{r}"] * dense[name][i]) for r in readers)

    w = {k: list(v) for k, v in dense.items()}
    for k in (1, 2, 3, 4, 5):
        w[f"Conv{k}"][:2] = [width(f"Conv{k}", i, [f"Conv{k}.{2 * i + 2}"]) for i in (0, 1)]
        readers = [f"Conv{k + 1}.0" if k < 5 else "Deconv5.0"]
        readers += [f"Deconv{k - 1}.0"] if k > 2 else [f"{h}.0" for h in HEADS] if k == 2 else []
        w[f"Conv{k}"][2] = width(f"Conv{k}", 2, readers)
        if k > 1:
            w[f"Upsample{k}"] = [w[f"Conv{k}"][2]]
    for k in (5, 4, 3, 2):
        w[f"Deconv{k}"] = [width(f"Deconv{k}", i, [r]) for i, r in
                           enumerate((f"Deconv{k}.2", f"Deconv{k}.4", f"Upsample{k}.1"))]
    for h in HEADS:
        w[h][:2] = [width(h, i, [f"{h}.{r}"]) for i, r in ((0, 2), (1, 4))]
        w[h][2] = width(h, 2, [f"{h}.7"])
    return {k: tuple(v) for k, v in w.items()}


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
