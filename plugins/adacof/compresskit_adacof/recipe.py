"""The CDFI recipe (Ding et al., CVPR 2021) on compresskit's pieces, resumable stage by stage.

Stage I  — compress AdaCoF: OBProx-SG (λ 1e-4, lr 1e-2, eps 0, Np = 10 epochs of Prox-SG steps, 99
           epochs, StepLR(20, 0.5)) on 1,000 Vimeo-90K triplets (batch 8) with CDFI's full loss → per-layer
           densities → ``plan_widths`` → ``shrink`` → retrain the compressed AdaCoF with CDFI's loss and
           settings (full 448×256 frames, batch 8, 100 epochs, Adamax 1e-3, StepLR(20, 0.5)).
Stage II — train CDFI (Adamax 1e-3, batch 8, 100 epochs, StepLR(20, 0.5), full 448×256 frames, flips and
           temporal swap; Charbonnier + 0.01·g_Spatial + 0.005·VGG16 conv4_3), keeping the epoch with the
           best Middlebury PSNR as published; then evaluate on Middlebury, UCF101-DVF and Vimeo-90K with
           the CDFI conventions and write the paper-style table.

The stages run on :func:`compresskit.pipeline.run_stages`: each leaves ``out_dir/<stage>.pt`` stamped
with the fingerprint of the settings it read, so a rerun restores what is still valid and redoes a stage
whose settings (or upstream) changed; an interrupted training stage continues from its last checkpoint
(``ck.train``). ``smoke=True`` runs the same code path on the embedded sample clips with a few steps per
stage. docs/reproduce_cdfi.md lists every setting with its published value and source.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from compresskit_vfi import recipe as common
from pydantic import Field
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Dataset, Subset

import compresskit as ck
from compresskit.config import Config
from compresskit.io import atomic_torch_save, atomic_write_json
from compresskit.pipeline import StageStore, run_stages
from compresskit.sparsify.obproxsg import l1_param_groups
from compresskit.sparsify.progress import DensityProgress

from .losses import CDFILoss
from .models import CDFI, AdaCoF, compressed_widths, widths_from_state_dict
from .models.adacof import DECODER, ENCODER

__all__ = ["CDFIRecipeConfig", "run", "published_densities", "PUBLISHED", "plan_published_widths", "STAGES",
           "cdfi_loss", "retrain_loss", "paper_table"]

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
    sparsify_lr: float = Field(1e-2, gt=0, description="OBProx-SG learning rate (StepLR(step_size, gamma) "
                               "per epoch, as published)")
    sparsify_eps: float = Field(0.0, ge=0, description="OBProx-SG orthant threshold: 0 in the published "
                                "extended code (its README says 1e-4)")
    sparsify_prox_epochs: int = Field(10, ge=0, description="Np: epochs of Prox-SG steps, then orthant steps")
    sparsify_epochs: int = Field(99, ge=1, description="epochs of stage I sparsification: the published "
                                 "script's loop is nominally 100 epochs and runs 99")
    sparsify_triplets: int = Field(1000, ge=1, description="Vimeo-90K training triplets used in stage I")
    sparsify_batch: int = Field(8, ge=1, description="batch size of stage I (125 batches per epoch)")
    width_rule: Literal["linear", "sqrt", "published"] = Field(
        "linear", description="'linear' C_in' = ceil(d·C_in) back to front (the Mini paper's rule; from the "
        "published densities 12 of the 52 published widths come out equal, 27 within ±1), 'sqrt' "
        "C' = floor(√d·C) (the CDFI code's rule), 'published': the published compressed AdaCoF widths "
        "as data (no rule reproduces all of them)")
    coupling: Literal["max", "min", "mean"] = Field("max", description="one width per coupled group")
    init: Literal["inherit", "reinit"] = Field("reinit", description="the compressed AdaCoF is retrained "
                                               "from scratch in CDFI ('reinit'), or keeps its weights")
    retrain_epochs: int = Field(100, ge=0, description="epochs retraining the compressed AdaCoF (as CDFI)")
    retrain_batch: int = Field(8, ge=1, description="batch size retraining the compressed AdaCoF (as CDFI)")
    retrain_crop: int | None = Field(None, ge=32, description="random crop retraining it (None: the full "
                                     "448×256 frames, as CDFI)")
    retrain_loss: Literal["cdfi", "adacof"] = Field(
        "cdfi", description="'cdfi': Charbonnier + 0.01·g_Spatial + 0.005·VGG (what the CDFI authors used); "
        "'adacof': AdaCoF's own Charbonnier + 0.01·g_Spatial + 0.005·g_Occlusion")
    # stage II: CDFI
    cdfi_epochs: int = Field(100, ge=0, description="epochs training CDFI")
    cdfi_batch: int = Field(8, ge=1, description="batch size training CDFI")
    select: Literal["best_middlebury", "last"] = Field(
        "best_middlebury", description="which CDFI epoch to keep: the best Middlebury PSNR (published; "
        "needs middlebury_dir, else the last) or the last")
    lr: float = Field(1e-3, gt=0, description="Adamax learning rate (retrain and CDFI)")
    step_size: int = Field(20, ge=1, description="StepLR period in epochs (every training stage)")
    gamma: float = Field(0.5, gt=0, description="StepLR factor")
    spatial_weight: float = Field(0.01, ge=0, description="weight of g_Spatial")
    perceptual_weight: float = Field(0.005, ge=0, description="weight of the VGG16 conv4_3 loss (needs "
                                     "vgg_weights; set 0 to train without it)")
    occlusion_weight: float = Field(0.005, ge=0,
                                    description="weight of g_Occlusion with retrain_loss='adacof'")
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
    """``loss(output, batch) -> {"loss", "charbonnier", "g_spatial", ...}`` for ck.train's log."""

    def __init__(self, loss: CDFILoss):
        self.loss = loss

    def __call__(self, output: Any, batch: Any) -> dict[str, torch.Tensor]:
        terms = self.loss.terms(output, batch)
        return {k: v if k == "loss" else v.detach() for k, v in terms.items()}


def _psnr(output: Any, batch: Any) -> torch.Tensor:
    """PSNR (dB, 8-bit quantised) of the output frame against ``batch[-1]``: the model selection metric."""
    from compresskit_vfi.metrics import psnr

    frame = output[0] if isinstance(output, (tuple, list)) else output
    return psnr(frame, batch[-1])


def cdfi_loss(cfg: CDFIRecipeConfig) -> CDFILoss:
    """CDFI's loss ``Charbonnier + spatial·g_Spatial + perceptual·VGG16 conv4_3``; the smoke run (random
    weights, no files) drops the VGG term when no ``vgg_weights`` is given."""
    perceptual = cfg.perceptual_weight
    if perceptual > 0 and cfg.vgg_weights is None:
        if not cfg.smoke:
            raise ValueError("vgg_weights: CDFI's loss has a VGG16 conv4_3 term (weight 0.005); give a local "
                             "ImageNet VGG16 state_dict, or set perceptual_weight=0 to train without it")
        perceptual = 0.0  # smoke runs need no weights file
    return CDFILoss(spatial=cfg.spatial_weight, perceptual=perceptual, vgg_weights=cfg.vgg_weights)


def retrain_loss(cfg: CDFIRecipeConfig) -> CDFILoss:
    """The compressed AdaCoF's retraining loss: CDFI's (published) or AdaCoF's own (with g_Occlusion)."""
    if cfg.retrain_loss == "adacof":
        return CDFILoss(spatial=cfg.spatial_weight, perceptual=0.0, occlusion=cfg.occlusion_weight)
    return cdfi_loss(cfg)


def _train_config(cfg: CDFIRecipeConfig, epochs: int, lr: float, **kw: Any) -> ck.TrainConfig:
    return ck.TrainConfig(**common.train_settings(cfg, epochs, lr, **kw))


# ---------------------------------------------------------------------------------------------- stages
@dataclass
class RecipeState:
    """What the CDFI stages share."""

    cfg: CDFIRecipeConfig
    console: Console
    store: StageStore
    sets: tuple[Dataset, Dataset, Dataset]
    fingerprints: dict[str, dict[str, Any]] = field(default_factory=dict)
    sparse: AdaCoF | None = None
    small: AdaCoF | None = None
    cdfi: CDFI | None = None
    shrink_info: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)


_SMOKE = (*common.COMMON_FIELDS, "smoke_batch")
_LOSS = ("spatial_weight", "perceptual_weight")


class SparsifyStage(common.RecipeStage):
    """OBProx-SG on the pretrained AdaCoF with CDFI's full loss; writes ``sparsify/densities.json``."""

    name = "sparsify"
    fields = (*_SMOKE, "smoke_lambda", "kernel_size", "dilation", "sparsify_lambda", "sparsify_lr",
              "sparsify_eps", "sparsify_prox_epochs", "sparsify_epochs", "sparsify_triplets",
              "sparsify_batch", "step_size", "gamma", *_LOSS, "vimeo_dir")
    files = ("adacof_checkpoint", "vgg_weights")

    def _model(self, cfg: CDFIRecipeConfig) -> AdaCoF:
        torch.manual_seed(cfg.seed)
        return AdaCoF(cfg.kernel_size, cfg.dilation)

    def run(self, state: RecipeState) -> dict[str, Any]:
        cfg, console = state.cfg, state.console
        model = self._model(cfg)
        if cfg.adacof_checkpoint is not None:
            ck.load_state_dict_strict(model, cfg.adacof_checkpoint)
        elif not cfg.smoke:
            raise ValueError("adacof_checkpoint: stage I compresses a pretrained AdaCoF (F=5, d=1); give the "
                             "official checkpoint file")
        data = state.sets[0]
        loader = _loader(data, cfg.sparsify_batch, cfg)
        schedule = common.obproxsg_schedule(cfg, cfg.sparsify_prox_epochs, len(loader))
        lambda_ = cfg.smoke_lambda if cfg.smoke else cfg.sparsify_lambda
        loss = cdfi_loss(cfg)
        console.print(f"[bold]stage I sparsify[/]: OBProx-SG λ={lambda_}, lr={cfg.sparsify_lr} with "
                      f"StepLR({cfg.step_size}, {cfg.gamma}), eps={cfg.sparsify_eps}, "
                      f"{schedule['n_prox_steps']} Prox-SG steps then orthant steps, {len(data)} triplets, "
                      f"Charbonnier + {loss.spatial}·g_Spatial + {loss.perceptual_weight}·VGG")
        # the papers put the l1 penalty on every parameter
        opt = ck.OBProxSG(l1_param_groups(model, lambda_), lr=cfg.sparsify_lr, lambda_=lambda_,
                          eps=cfg.sparsify_eps, **schedule)
        ck.train(model, loader, _LossTerms(loss), optimizer=opt, inputs_fn=_with_aux,
                 config=_train_config(cfg, cfg.sparsify_epochs, cfg.sparsify_lr, scheduler="step",
                                      scheduler_interval="epoch"),
                 out_dir=self.train_dir(state), resume=True, stage="sparsify",
                 callbacks=[DensityProgress()])
        densities = ck.layer_densities(model)
        atomic_write_json(densities, cfg.out_dir / "sparsify" / "densities.json")
        state.sparse = model
        return {"state_dict": model.state_dict()}

    def restore(self, state: RecipeState, payload: dict[str, Any]) -> None:
        self.done(state)
        state.sparse = self._model(state.cfg)
        state.sparse.load_state_dict(payload["state_dict"])


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


class ShrinkStage(common.RecipeStage):
    """Trace, plan widths from the densities (or take the published ones), shrink; ``shrink/plan.json``."""

    name = "shrink"
    fields = ("width_rule", "coupling", "init", "seed", "kernel_size", "dilation")
    upstream = ("sparsify",)

    def run(self, state: RecipeState) -> dict[str, Any]:
        cfg, sparse = state.cfg, state.sparse
        densities = ck.layer_densities(sparse)
        state.console.print(density_table(densities))
        torch.manual_seed(cfg.seed)
        if cfg.width_rule == "published":
            if cfg.init != "reinit":
                raise ValueError("init: width_rule='published' builds the published compressed AdaCoF "
                                 "afresh; use init='reinit' (or a density rule, 'linear' / 'sqrt', to "
                                 "inherit weights)")
            small, plan = AdaCoF(cfg.kernel_size, cfg.dilation, compressed_widths()), None
        else:
            graph = ck.trace(sparse, _example())
            plan = ck.plan_widths(graph, densities, rule=cfg.width_rule, coupling=cfg.coupling)
            small = ck.shrink(sparse, graph, plan=plan, init=cfg.init)
        info = {"rule": cfg.width_rule, "widths": widths_from_state_dict(small.state_dict()),
                "densities": densities, "plan": plan.to_dict() if plan is not None else None,
                "params": common.count_params(small)}
        atomic_write_json(info, cfg.out_dir / "shrink" / "plan.json")
        state.console.print(f"[bold]stage I shrink[/] ({cfg.width_rule}): {common.count_params(sparse):,} → "
                            f"{common.count_params(small):,} parameters")
        state.small, state.shrink_info = small, info
        return {"state_dict": small.state_dict(), "info": json.dumps(info)}

    def restore(self, state: RecipeState, payload: dict[str, Any]) -> None:
        self.done(state)
        sd = payload["state_dict"]
        state.small = AdaCoF(state.cfg.kernel_size, state.cfg.dilation, widths_from_state_dict(sd))
        state.small.load_state_dict(sd)
        state.shrink_info = json.loads(payload["info"])


class RetrainStage(common.RecipeStage):
    """Retrain the compressed AdaCoF (from scratch with ``init='reinit'``) with CDFI's loss and settings."""

    name = "retrain"
    fields = (*_SMOKE, "retrain_epochs", "retrain_batch", "retrain_crop", "retrain_loss", "lr", "step_size",
              "gamma", *_LOSS, "occlusion_weight", "vimeo_dir")
    files = ("vgg_weights",)
    upstream = ("shrink",)

    def run(self, state: RecipeState) -> dict[str, Any]:
        cfg = state.cfg
        loss = retrain_loss(cfg)
        state.console.print(f"[bold]stage I retrain[/]: compressed AdaCoF, Adamax {cfg.lr}, "
                            f"batch {_batch(cfg, cfg.retrain_batch)}, {cfg.retrain_loss} loss")
        ck.train(state.small, _loader(state.sets[1], cfg.retrain_batch, cfg), _LossTerms(loss),
                 inputs_fn=_with_aux, config=_train_config(cfg, cfg.retrain_epochs, cfg.lr),
                 out_dir=self.train_dir(state), resume=True, stage="retrain")
        return {"state_dict": state.small.state_dict()}

    def restore(self, state: RecipeState, payload: dict[str, Any]) -> None:
        self.done(state)
        state.small.load_state_dict(payload["state_dict"])


def _selection_set(cfg: CDFIRecipeConfig) -> Dataset | None:
    """Where CDFI's epochs are compared: Middlebury (published), the smoke samples in smoke mode."""
    if cfg.select != "best_middlebury":
        return None
    if cfg.smoke:
        return common.smoke_test_sets(cfg, "triplet")["sample_val"]
    if cfg.middlebury_dir is None:
        return None
    from compresskit_vfi.data.datasets import MiddleburyOther

    return MiddleburyOther(cfg.middlebury_dir)


class CDFIStage(common.RecipeStage):
    """Train CDFI; keep the epoch with the best Middlebury PSNR (published) and say which it was."""

    name = "cdfi"
    fields = (*_SMOKE, "smoke_eval_samples", "cdfi_epochs", "cdfi_batch", "select", "lr", "step_size",
              "gamma", *_LOSS, "vimeo_dir", "middlebury_dir")
    files = ("vgg_weights",)

    def _model(self, cfg: CDFIRecipeConfig) -> CDFI:
        torch.manual_seed(cfg.seed)
        return CDFI()

    def run(self, state: RecipeState) -> dict[str, Any]:
        cfg, console = state.cfg, state.console
        model = self._model(cfg)
        loss = cdfi_loss(cfg)
        data = state.sets[2]
        loader = _loader(data, cfg.cdfi_batch, cfg)
        val = _selection_set(cfg)
        kw: dict[str, Any] = {}
        if val is not None:  # validate each epoch end (each step in smoke mode); load the best at the end
            kw = dict(monitor="psnr", mode="max", load_best=True, val_every=1 if cfg.smoke else None)
        console.print(f"[bold]stage II CDFI[/]: Adamax {cfg.lr}, batch {_batch(cfg, cfg.cdfi_batch)}, "
                      f"loss Charbonnier + {loss.spatial}·g_Spatial + {loss.perceptual_weight}·VGG16, "
                      f"keeping {'the best Middlebury PSNR' if val is not None else 'the last epoch'}")
        result = ck.train(model, loader, _LossTerms(loss), inputs_fn=_with_aux,
                          config=_train_config(cfg, cfg.cdfi_epochs, cfg.lr, **kw),
                          val_loader=DataLoader(val, batch_size=1) if val is not None else None,
                          metrics={"psnr": _psnr} if val is not None else None,
                          out_dir=self.train_dir(state), resume=True, stage="cdfi")
        steps_per_epoch = max(1, len(loader))
        if val is not None and result.best_step is not None:
            step = result.best_step
            selection = {"rule": "best Middlebury PSNR" if not cfg.smoke else "best sample PSNR",
                         "psnr": result.best, "step": step, "epoch": math.ceil(step / steps_per_epoch)}
        else:
            selection = {"rule": "last", "psnr": None, "step": result.step, "epoch": result.epoch}
        console.print(f"stage II CDFI: kept step {selection['step']} (epoch {selection['epoch']}, "
                      f"{selection['rule']})")
        atomic_torch_save({"state_dict": model.state_dict(), "epoch": selection["epoch"]},
                          cfg.out_dir / "cdfi" / "cdfi.pth")
        state.cdfi, state.selection = model, selection
        return {"state_dict": model.state_dict(), "selection": json.dumps(selection)}

    def restore(self, state: RecipeState, payload: dict[str, Any]) -> None:
        self.done(state)
        state.cdfi = self._model(state.cfg)
        state.cdfi.load_state_dict(payload["state_dict"])
        state.selection = json.loads(payload["selection"])


class EvaluateStage(common.RecipeStage):
    """Score the compressed AdaCoF and CDFI with the CDFI conventions (``evaluate/results.json``)."""

    name = "evaluate"
    fields = ("smoke", "smoke_size", "smoke_eval_samples", "eval_limit", "lpips", "middlebury_dir",
              "ucf101_dvf_dir", "vimeo_dir")
    upstream = ("retrain", "cdfi")

    def run(self, state: RecipeState) -> dict[str, Any]:
        cfg = state.cfg
        models = {"compressed AdaCoF": state.small.eval(), "CDFI": state.cdfi.eval()}
        state.results = common.evaluate_models(cfg, models, lambda: _test_sets(cfg), state.console,
                                               convention="cdfi", lpips=cfg.lpips, runtime=False,
                                               macs=not cfg.smoke)
        return {"results": json.dumps(state.results)}

    def restore(self, state: RecipeState, payload: dict[str, Any]) -> None:
        self.done(state)
        state.results = json.loads(payload["results"])


STAGES: tuple[common.RecipeStage, ...] = (SparsifyStage(), ShrinkStage(), RetrainStage(), CDFIStage(),
                                          EvaluateStage())


def paper_table(results: Mapping[str, Any]) -> str:
    """Markdown table like CDFI's Table 2: published rows, then ours, PSNR / SSIM / LPIPS per test set."""
    return common.paper_table(results, PUBLISHED, PUBLISHED_PARAMS, ("vimeo", "middlebury", "ucf101_dvf"),
                              (("psnr", 2), ("ssim", 3), ("lpips", 3)))


def _settings_note(state: RecipeState) -> str:
    cfg, sel = state.cfg, state.selection
    kept = (f"epoch {sel['epoch']} (step {sel['step']}, {sel['rule']}, {sel['psnr']:.2f} dB)"
            if sel.get("psnr") is not None
            else f"the last epoch ({sel.get('epoch')})")
    run = "smoke run (sample clips, a few steps per stage; numbers mean nothing)" if cfg.smoke else "full run"
    return (f"\nOurs: {run}; compressed AdaCoF widths by width_rule={cfg.width_rule!r} "
            f"({state.shrink_info.get('params', 0):,} parameters), retrained with the {cfg.retrain_loss} "
            "loss; "
            f"CDFI kept at {kept}.\n")


def run(cfg: CDFIRecipeConfig, console: Console | None = None,
        stop_after: Literal["sparsify", "shrink", "retrain", "cdfi", "evaluate"] = "evaluate") -> dict:
    """Run (or resume) the whole recipe; returns ``{"widths", "params", "selection", "evaluation"}``."""
    with common.run_lock(cfg):  # one live run per out_dir
        return _run(cfg, console, stop_after)


def _run(cfg: CDFIRecipeConfig, console: Console | None,
         stop_after: Literal["sparsify", "shrink", "retrain", "cdfi", "evaluate"]) -> dict:
    console = common.start_run(cfg, console)
    state = RecipeState(cfg, console, StageStore(cfg.out_dir), _train_sets(cfg))
    run_stages(STAGES, state, state.store, fingerprints=state.fingerprints, stop_after=stop_after)
    summary: dict[str, Any] = {}
    if state.small is not None:
        summary["widths"] = widths_from_state_dict(state.small.state_dict())
        summary["params"] = {"adacof": common.count_params(state.sparse),
                             "compressed_adacof": common.count_params(state.small)}
    if state.selection:
        summary["selection"] = state.selection
    if state.results:
        summary["evaluation"] = state.results
        common.write_table(cfg, paper_table(state.results) + _settings_note(state), console)
        atomic_write_json(summary, cfg.out_dir / "summary.json")
    return summary


def plan_published_widths(rule: Literal["linear", "sqrt"] = "linear", coupling: str = "max",
                          kernel_size: int = 5, dilation: int = 1) -> tuple[dict[str, tuple[int, ...]], int]:
    """Feed the published densities to ``ck.plan_widths`` on the dense AdaCoF; returns (widths, params).

    No rule reproduces the published compressed AdaCoF: 'linear' gives 12 of its 52 widths exactly and 27
    within ±1 (the heads and the last Deconv convs, whose densities are not published, stay dense), 'sqrt'
    none, whatever the coupling. The published widths are data:
    ``compressed_widths()`` (``width_rule="published"`` in the recipe)."""
    model = AdaCoF(kernel_size, dilation)
    graph = ck.trace(model, (torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32)))
    plan = ck.plan_widths(graph, published_densities(), rule=rule, coupling=coupling)
    small = ck.shrink(model, graph, plan=plan, init="reinit")
    return widths_from_state_dict(small.state_dict()), common.count_params(small)
