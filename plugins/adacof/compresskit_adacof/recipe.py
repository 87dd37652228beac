"""The CDFI recipe (Ding et al., CVPR 2021) on compresskit's pieces, resumable stage by stage.

Stage I  — compress AdaCoF: OBProx-SG (λ 1e-4, lr 1e-2, Np = 10 epochs of Prox-SG steps) on 1,000
           Vimeo-90K triplets (batch 8) → per-layer densities → ``plan_widths`` (CDFI's √d rule) →
           ``shrink`` → retrain the compressed AdaCoF (Adamax 1e-3, StepLR(20, 0.5)).
Stage II — train CDFI (Adamax 1e-3, batch 8, 100 epochs, StepLR(20, 0.5), full 448×256 frames, flips and
           temporal swap; Charbonnier + 0.01·g_Spatial + 0.005·VGG16 conv4_3), then evaluate on
           Middlebury, UCF101-DVF and Vimeo-90K with the CDFI conventions and write the paper-style table.

Every stage writes into ``out_dir/<stage>/``; a finished stage leaves ``done.pt`` (or ``.json``) and is
skipped on a rerun, an interrupted training stage continues from its last checkpoint (``ck.train``).
``smoke=True`` runs the same code path on the embedded sample clips with a few steps per stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from compresskit_vfi import recipe as common
from pydantic import Field
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import compresskit as ck
from compresskit.config import Config
from compresskit.io import atomic_torch_save, atomic_write_json
from compresskit.sparsify.obproxsg import l1_param_groups

from .losses import CDFILoss
from .models import CDFI, AdaCoF, widths_from_state_dict
from .models.adacof import DECODER, ENCODER

__all__ = ["CDFIRecipeConfig", "run", "published_densities", "PUBLISHED", "plan_published_widths"]

#: published scores, VFI_MODELS.md: {model: {dataset: (PSNR, SSIM or None, LPIPS or None)}}
PUBLISHED: dict[str, dict[str, tuple[float, float | None, float | None]]] = {
    "AdaCoF": {"vimeo": (34.35, 0.956, None), "middlebury": (35.72, 0.959, None),
               "ucf101_dvf": (35.16, 0.950, None)},
    "compressed AdaCoF": {"vimeo": (34.10, None, None), "middlebury": (35.43, None, None),
                          "ucf101_dvf": (35.10, None, None)},
    "CDFI": {"vimeo": (35.17, 0.964, 0.010), "middlebury": (37.14, 0.966, 0.007),
             "ucf101_dvf": (35.21, 0.950, 0.015)},
}
PUBLISHED_PARAMS = {"AdaCoF": 21_843_427, "compressed AdaCoF": 2_452_094, "CDFI": 4_976_718}

#: per-layer densities (conv weights) of the sparsified AdaCoF published with CDFI, in layer order
_PUBLISHED_DENSITIES = {
    "Conv1": (.858, .762, .761), "Conv2": (.762, .755, .751), "Conv3": (.781, .779, .762),
    "Conv4": (.698, .609, .554), "Conv5": (.372, .178, .140), "Deconv5": (.141, .192, .133),
    "Deconv4": (.234, .285, .321), "Deconv3": (.621, .647, .687), "Deconv2": (.739, .703, .735),
}


def published_densities() -> dict[str, float]:
    """``{module name: density}`` of the sparsified AdaCoF published with CDFI (encoder and decoder convs;
    the paper gives none for the Upsample convs and the heads, which ``plan_widths`` then keeps dense)."""
    out = {}
    for name in (*ENCODER, *DECODER):
        for index, d in zip((0, 2, 4), _PUBLISHED_DENSITIES[name]):
            out[f"get_kernel.module{name}.{index}"] = d
    return out


class CDFIRecipeConfig(Config):
    """Settings of the CDFI reproduction; defaults are the published ones."""

    out_dir: Path = Field(..., description="where every stage writes its checkpoints, reports and table")
    smoke: bool = Field(False, description="run on the embedded sample clips with `smoke_steps` per stage")
    smoke_steps: int = Field(4, ge=1, description="optimizer steps per training stage in smoke mode")
    smoke_size: int = Field(64, ge=32, description="crop size of the smoke run's training samples")
    smoke_eval_samples: int = Field(2, ge=1, description="samples per test set in smoke mode")
    smoke_batch: int = Field(2, ge=1, description="batch size of every training stage in smoke mode")
    smoke_lambda: float = Field(0.3, ge=0, description="OBProx-SG λ in smoke mode: large, so that a few "
                                "steps already zero whole weights and the plan has something to shrink")
    # data and weights (local paths; nothing is downloaded)
    vimeo_dir: Path | None = Field(None, description="Vimeo-90K triplet root (tri_trainlist.txt, sequences/)")
    middlebury_dir: Path | None = Field(None, description="Middlebury root (other-data/, other-gt-interp/)")
    ucf101_dvf_dir: Path | None = Field(None, description="UCF101-DVF root (<clip>/frame_00.png ...)")
    adacof_checkpoint: Path | None = Field(None, description="pretrained AdaCoF (F=5, d=1) to compress")
    vgg_weights: Path | None = Field(None, description="local ImageNet VGG16 state_dict (perceptual loss)")
    # stage I: sparsify AdaCoF, plan, shrink, retrain
    kernel_size: int = Field(5, ge=1, description="F of the AdaCoF compressed in stage I")
    dilation: int = Field(1, ge=1, description="d of the AdaCoF compressed in stage I")
    sparsify_lambda: float = Field(1e-4, ge=0, description="OBProx-SG λ")
    sparsify_lr: float = Field(1e-2, gt=0, description="OBProx-SG learning rate")
    sparsify_prox_epochs: int = Field(10, ge=0, description="Np: epochs of Prox-SG steps, then orthant steps")
    sparsify_epochs: int = Field(20, ge=1, description="total epochs of stage I sparsification")
    sparsify_triplets: int = Field(1000, ge=1, description="Vimeo-90K training triplets used in stage I")
    sparsify_batch: int = Field(8, ge=1, description="batch size of stage I")
    width_rule: Literal["linear", "sqrt"] = Field(
        "linear", description="'linear' C_in' = ceil(d·C_in) reproduces the published compressed AdaCoF "
        "widths from the published densities; 'sqrt' C' = floor(√d·C) is the CDFI code's rule")
    coupling: Literal["max", "min", "mean"] = Field("max", description="one width per coupled group")
    init: Literal["inherit", "reinit"] = Field("reinit", description="the compressed AdaCoF is retrained "
                                               "from scratch in CDFI ('reinit'), or keeps its weights")
    retrain_epochs: int = Field(50, ge=0, description="epochs retraining the compressed AdaCoF (AdaCoF's)")
    retrain_batch: int = Field(4, ge=1, description="batch size retraining the compressed AdaCoF")
    retrain_crop: int | None = Field(256, ge=32, description="random crop retraining it (None: full frames)")
    # stage II: CDFI
    cdfi_epochs: int = Field(100, ge=0, description="epochs training CDFI")
    cdfi_batch: int = Field(8, ge=1, description="batch size training CDFI")
    lr: float = Field(1e-3, gt=0, description="Adamax learning rate (retrain and CDFI)")
    step_size: int = Field(20, ge=1, description="StepLR period in epochs")
    gamma: float = Field(0.5, gt=0, description="StepLR factor")
    spatial_weight: float = Field(0.01, ge=0, description="weight of g_Spatial")
    perceptual_weight: float = Field(0.005, ge=0, description="weight of the VGG16 conv4_3 loss (needs "
                                     "vgg_weights; set 0 to train without it)")
    # evaluation
    lpips: bool = Field(False, description="also score LPIPS (needs the lpips package and local weights)")
    eval_limit: int | None = Field(None, ge=1, description="score only the first N samples of each test set")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', ...")
    seed: int = Field(0, ge=0, description="seed of the data order and the initialisations")
    progress: bool = Field(True, description="rich progress bars")


# ------------------------------------------------------------------------------------------------ data
def _train_sets(cfg: CDFIRecipeConfig) -> tuple[Dataset, Dataset, Dataset]:
    """(stage I sparsification set, retraining set, CDFI training set)."""
    if cfg.smoke:
        from compresskit_vfi.data.samples import sample_dataset

        ds = sample_dataset("triplet", "train", size=cfg.smoke_size, seed=cfg.seed)
        return Subset(ds, range(min(len(ds), cfg.smoke_batch * cfg.smoke_steps))), ds, ds
    if cfg.vimeo_dir is None:
        raise ValueError("vimeo_dir: the CDFI recipe trains on Vimeo-90K triplets; give its root folder "
                         "(or use smoke=True for the embedded sample clips)")
    from compresskit_vfi.data.datasets import Vimeo90KTriplet
    from compresskit_vfi.data.transforms import train_transform

    full = Vimeo90KTriplet(cfg.vimeo_dir, "train", transform=train_transform(None, seed=cfg.seed))
    gen = torch.Generator().manual_seed(cfg.seed)
    subset = Subset(full, torch.randperm(len(full), generator=gen)[: cfg.sparsify_triplets].tolist())
    crop = train_transform(cfg.retrain_crop, seed=cfg.seed)
    retrain = Vimeo90KTriplet(cfg.vimeo_dir, "train", transform=crop)
    return subset, retrain, full


def _test_sets(cfg: CDFIRecipeConfig) -> dict[str, Dataset]:
    if cfg.smoke:
        return common.smoke_test_sets(cfg, "triplet")
    from compresskit_vfi.data.datasets import UCF101DVF, MiddleburyOther, Vimeo90KTriplet

    sets: dict[str, Dataset] = {}
    if cfg.middlebury_dir is not None:
        sets["middlebury"] = MiddleburyOther(cfg.middlebury_dir)
    if cfg.ucf101_dvf_dir is not None:
        sets["ucf101_dvf"] = UCF101DVF(cfg.ucf101_dvf_dir)
    if cfg.vimeo_dir is not None:
        sets["vimeo"] = Vimeo90KTriplet(cfg.vimeo_dir, "test")
    if not sets:
        raise ValueError("no test set: give middlebury_dir, ucf101_dvf_dir and/or vimeo_dir")
    return sets


def _batch(cfg: CDFIRecipeConfig, batch: int) -> int:
    return cfg.smoke_batch if cfg.smoke else batch


def _loader(ds: Dataset, batch: int, cfg: CDFIRecipeConfig) -> DataLoader:
    return common.recipe_loader(ds, _batch(cfg, batch), cfg)


def _with_aux(batch: Any) -> tuple[Any, ...]:
    """Model inputs of a triplet batch, asking for the kernels (g_Spatial needs them)."""
    return (batch[0], batch[1], True)


class _LossTerms:
    """``loss(output, batch) -> {"loss", "charbonnier", "g_spatial", "perceptual"}`` for ck.train's log."""

    def __init__(self, loss: CDFILoss):
        self.loss = loss

    def __call__(self, output: Any, batch: Any) -> dict[str, torch.Tensor]:
        terms = self.loss.terms(output, batch)
        return {k: v if k == "loss" else v.detach() for k, v in terms.items()}


# ---------------------------------------------------------------------------------------------- stages
def _train_config(cfg: CDFIRecipeConfig, epochs: int, lr: float, **kw: Any) -> ck.TrainConfig:
    return ck.TrainConfig(**common.train_settings(cfg, epochs, lr, **kw))


def stage_sparsify(cfg: CDFIRecipeConfig, data: Dataset, console: Console) -> AdaCoF:
    """OBProx-SG on AdaCoF; writes ``sparsify/done.pt`` and ``sparsify/densities.json``."""
    out = cfg.out_dir / "sparsify"
    torch.manual_seed(cfg.seed)
    model = AdaCoF(cfg.kernel_size, cfg.dilation)
    if common.load_done(out, model, console, "stage I sparsify"):
        return model
    if cfg.adacof_checkpoint is not None:
        ck.load_state_dict_strict(model, cfg.adacof_checkpoint)
    elif not cfg.smoke:
        raise ValueError("adacof_checkpoint: stage I compresses a pretrained AdaCoF (F=5, d=1); give the "
                         "official checkpoint file")
    loader = _loader(data, cfg.sparsify_batch, cfg)
    schedule = common.obproxsg_schedule(cfg, cfg.sparsify_prox_epochs, len(loader))
    n_prox = schedule["n_prox_steps"]
    lambda_ = cfg.smoke_lambda if cfg.smoke else cfg.sparsify_lambda
    console.print(f"[bold]stage I sparsify[/]: OBProx-SG λ={lambda_}, lr={cfg.sparsify_lr}, "
                  f"{n_prox} Prox-SG steps then orthant steps, {len(data)} triplets")
    # the papers put the l1 penalty on every parameter
    opt = ck.OBProxSG(l1_param_groups(model, lambda_), lr=cfg.sparsify_lr, lambda_=lambda_, **schedule)
    loss = CDFILoss(spatial=cfg.spatial_weight, perceptual=0.0)
    ck.train(model, loader, _LossTerms(loss), optimizer=opt, inputs_fn=_with_aux,
             config=_train_config(cfg, cfg.sparsify_epochs, cfg.sparsify_lr, scheduler="none"),
             out_dir=out / "train", resume=True)
    densities = ck.layer_densities(model)
    atomic_write_json(densities, out / "densities.json")
    common.mark_done(out, model)
    return model


def density_table(densities: Mapping[str, float], title: str = "per-layer density") -> Table:
    table = Table(title=title)
    table.add_column("layer")
    table.add_column("density", justify="right")
    published = published_densities()
    table.add_column("published", justify="right")
    for name, d in densities.items():
        p = published.get(name)
        table.add_row(name, f"{d:.3f}", f"{p:.3f}" if p is not None else "-")
    return table


def _example() -> tuple[torch.Tensor, torch.Tensor]:
    """Frames to trace with: the graph does not depend on the size (64×64 keeps tracing fast)."""
    return torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64)


def stage_shrink(cfg: CDFIRecipeConfig, sparse: AdaCoF, console: Console) -> AdaCoF:
    """Trace, plan widths from the densities, shrink; writes ``shrink/plan.json`` and ``shrink/done.pt``."""
    out = cfg.out_dir / "shrink"
    state = common.read_done(out, console, "stage I shrink")
    if state is not None:
        model = AdaCoF(cfg.kernel_size, cfg.dilation, widths_from_state_dict(state))
        model.load_state_dict(state)
        return model
    densities = ck.layer_densities(sparse)
    console.print(density_table(densities))
    graph = ck.trace(sparse, _example())
    plan = ck.plan_widths(graph, densities, rule=cfg.width_rule, coupling=cfg.coupling)
    torch.manual_seed(cfg.seed)
    small = ck.shrink(sparse, graph, plan=plan, init=cfg.init)
    widths = widths_from_state_dict(small.state_dict())
    atomic_write_json({"widths": widths, "densities": densities, "plan": plan.to_dict(),
                       "params": common.count_params(small)}, out / "plan.json")
    common.mark_done(out, small)
    console.print(f"[bold]stage I shrink[/]: {common.count_params(sparse):,} → "
                  f"{common.count_params(small):,} parameters")
    return small


def stage_retrain(cfg: CDFIRecipeConfig, small: AdaCoF, data: Dataset, console: Console) -> AdaCoF:
    out = cfg.out_dir / "retrain"
    if common.load_done(out, small, console, "stage I retrain"):
        return small
    console.print(f"[bold]stage I retrain[/]: compressed AdaCoF, Adamax {cfg.lr}, "
                  f"batch {_batch(cfg, cfg.retrain_batch)}")
    loss = CDFILoss(spatial=cfg.spatial_weight, perceptual=0.0)
    ck.train(small, _loader(data, cfg.retrain_batch, cfg), _LossTerms(loss), inputs_fn=_with_aux,
             config=_train_config(cfg, cfg.retrain_epochs, cfg.lr), out_dir=out / "train", resume=True)
    common.mark_done(out, small)
    return small


def _cdfi_loss(cfg: CDFIRecipeConfig) -> CDFILoss:
    perceptual = cfg.perceptual_weight
    if perceptual > 0 and cfg.vgg_weights is None:
        if not cfg.smoke:
            raise ValueError("vgg_weights: CDFI's loss has a VGG16 conv4_3 term (weight 0.005); give a local "
                             "ImageNet VGG16 state_dict, or set perceptual_weight=0 to train without it")
        perceptual = 0.0  # smoke runs need no weights file
    return CDFILoss(spatial=cfg.spatial_weight, perceptual=perceptual, vgg_weights=cfg.vgg_weights)


def stage_cdfi(cfg: CDFIRecipeConfig, data: Dataset, console: Console) -> CDFI:
    out = cfg.out_dir / "cdfi"
    torch.manual_seed(cfg.seed)
    model = CDFI()
    if common.load_done(out, model, console, "stage II CDFI"):
        return model
    loss = _cdfi_loss(cfg)
    console.print(f"[bold]stage II CDFI[/]: Adamax {cfg.lr}, batch {_batch(cfg, cfg.cdfi_batch)}, "
                  f"loss Charbonnier + "
                  f"{loss.spatial}·g_Spatial + {loss.perceptual_weight}·VGG16 conv4_3")
    ck.train(model, _loader(data, cfg.cdfi_batch, cfg), _LossTerms(loss), inputs_fn=_with_aux,
             config=_train_config(cfg, cfg.cdfi_epochs, cfg.lr), out_dir=out / "train", resume=True)
    atomic_torch_save({"state_dict": model.state_dict(), "epoch": cfg.cdfi_epochs}, out / "cdfi.pth")
    common.mark_done(out, model)
    return model


def stage_evaluate(cfg: CDFIRecipeConfig, models: Mapping[str, nn.Module], console: Console) -> dict:
    """Score the models with the CDFI conventions; writes ``evaluate/results.json`` and ``table.md``."""
    return common.cached_evaluation(cfg, models, lambda: _test_sets(cfg), paper_table, console,
                                    convention="cdfi", lpips=cfg.lpips, runtime=False, macs=not cfg.smoke)


def paper_table(results: Mapping[str, Any]) -> str:
    """Markdown table like CDFI's Table 2: published rows, then ours, PSNR / SSIM / LPIPS per test set."""
    return common.paper_table(results, PUBLISHED, PUBLISHED_PARAMS, ("vimeo", "middlebury", "ucf101_dvf"),
                              (("psnr", 2), ("ssim", 3), ("lpips", 3)))


def run(cfg: CDFIRecipeConfig, console: Console | None = None,
        stop_after: Literal["sparsify", "shrink", "retrain", "cdfi", "evaluate"] = "evaluate") -> dict:
    """Run (or resume) the whole recipe; returns ``{"widths", "params", "evaluation"}``."""
    console = common.start_run(cfg, console)
    sparse_set, retrain_set, cdfi_set = _train_sets(cfg)
    summary: dict[str, Any] = {}
    sparse = stage_sparsify(cfg, sparse_set, console)
    if stop_after == "sparsify":
        return summary
    small = stage_shrink(cfg, sparse, console)
    summary["widths"] = widths_from_state_dict(small.state_dict())
    summary["params"] = {"adacof": common.count_params(sparse),
                         "compressed_adacof": common.count_params(small)}
    if stop_after == "shrink":
        return summary
    small = stage_retrain(cfg, small, retrain_set, console)
    if stop_after == "retrain":
        return summary
    cdfi = stage_cdfi(cfg, cdfi_set, console)
    if stop_after == "cdfi":
        return summary
    summary["evaluation"] = stage_evaluate(cfg, {"compressed AdaCoF": small.eval(), "CDFI": cdfi.eval()},
                                           console)
    atomic_write_json(summary, cfg.out_dir / "summary.json")
    return summary


def plan_published_widths(rule: Literal["linear", "sqrt"] = "linear", coupling: str = "max",
                          kernel_size: int = 5, dilation: int = 1) -> tuple[dict[str, tuple[int, ...]], int]:
    """Feed the published densities to ``ck.plan_widths`` on the dense AdaCoF; returns (widths, params)."""
    model = AdaCoF(kernel_size, dilation)
    graph = ck.trace(model, (torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32)))
    plan = ck.plan_widths(graph, published_densities(), rule=rule, coupling=coupling)
    small = ck.shrink(model, graph, plan=plan, init="reinit")
    return widths_from_state_dict(small.state_dict()), common.count_params(small)
