"""The ST-MFNet Mini recipe (Morris et al.) on compresskit's pieces, resumable stage by stage.

Phase I  — OBProx-SG on the pretrained ST-MFNet with its PWC-Net fine-tuned (λ 1e-4 on every trainable
           parameter, lr 1e-3, eps 1e-4, Np = 2 epochs of Prox-SG steps then orthant steps, 20 epochs, the
           published *summed* Laplacian loss that λ and lr were tuned with); the overall density is
           reported as the paper counts it and as compresskit does. The student: the published Mini
           (``student="published"``, the default: fixed widths, no flow branch, 1,822,162 parameters), or
           compresskit's own plan from the densities (``"plan"`` / ``"uniform"``: ``plan_widths`` with the
           Mini paper's ceil(d·C) rule → ``shrink``; a collapsed flow branch is dropped).
Phase II — the student trained from scratch (the published initialisation) with
           ``0.1·Lap(S, GT) + Lap(S, T)``, both summed (``ck.distill``; teacher frozen, in eval mode, or in
           train mode as published with ``teacher_mode="train"``), Adamax 1e-3, batch 2, 256 crops, flips
           and time reversal, StepLR(20, 0.5) per epoch, 70 epochs, on Vimeo-90K septuplets + BVI-DVC;
           evaluation with the ST-MFNet conventions on UCF101, DAVIS-90 and SNU-FILM (four levels),
           written as the paper's Table 1 with each of our rows labelled by what it trained.

The stages run on :func:`compresskit.pipeline.run_stages`: each leaves ``out_dir/<stage>.pt`` stamped with
the fingerprint of the settings it read, so a rerun restores what is still valid and redoes a stage whose
settings (or upstream) changed; an interrupted training stage continues from its last checkpoint.
``smoke=True`` runs the same code path on the embedded sample clips with a few steps per stage.
docs/reproduce_stmfnet_mini.md lists every setting with its published value and source.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from compresskit_vfi import recipe as common
from pydantic import Field
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

import compresskit as ck
from compresskit.config import Config
from compresskit.io import atomic_torch_save, atomic_write_json
from compresskit.pipeline import StageStore, run_stages
from compresskit.plan.planner import WidthPlan
from compresskit.sparsify.obproxsg import l1_param_groups
from compresskit.sparsify.progress import DensityProgress
from compresskit_stmfnet.models import STMFNET_MINI_WIDTHS, STMFNet
from compresskit_stmfnet.models.stmfnet import (
    drop_flow_branch,
    flow_branch_density,
    init_published_,
    summarize_widths,
)

__all__ = ["MiniRecipeConfig", "run", "PUBLISHED", "STAGES", "build_student", "published_student",
           "plan_student", "phase1_loss", "phase2_terms", "density_published_rule", "density_ours",
           "widths_table", "paper_table"]

#: Table 1 of the Mini paper (PSNR, SSIM) per test set; VFI_MODELS.md
PUBLISHED: dict[str, dict[str, tuple[float, float | None]]] = {
    "ST-MFNet": {"ucf101": (33.384, 0.970), "davis": (28.287, 0.895), "snufilm_easy": (40.775, None),
                 "snufilm_medium": (37.111, None), "snufilm_hard": (31.698, None),
                 "snufilm_extreme": (25.810, None)},
    "ST-MFNet Mini": {"ucf101": (33.070, 0.969), "davis": (26.335, 0.855), "snufilm_easy": (40.982, 0.992),
                      "snufilm_medium": (36.127, 0.982), "snufilm_hard": (30.914, 0.950),
                      "snufilm_extreme": (25.877, 0.894)},
    "ST-MFNet Mini w/o KD": {"ucf101": (33.013, None), "davis": (26.013, None),
                             "snufilm_easy": (40.826, None), "snufilm_medium": (35.858, None),
                             "snufilm_hard": (30.724, None), "snufilm_extreme": (25.726, None)},
}
PUBLISHED_PARAMS = {"ST-MFNet": 21_028_799, "ST-MFNet Mini": 1_822_162, "ST-MFNet Mini w/o KD": 1_822_162}
TEST_SETS = ("ucf101", "davis", "snufilm_easy", "snufilm_medium", "snufilm_hard", "snufilm_extreme")


class MiniRecipeConfig(Config):
    """Published settings by default; dataset roots and the ST-MFNet checkpoint are local paths."""

    out_dir: Path = Field(..., description="where every stage writes its checkpoints, reports and table")
    smoke: bool = Field(False, description="run on the embedded sample clips with `smoke_steps` per stage")
    smoke_steps: int = Field(4, ge=1, description="optimizer steps per training stage in smoke mode")
    smoke_size: int = Field(64, ge=32, description="crop size of the smoke run's samples")
    smoke_eval_samples: int = Field(2, ge=1, description="samples per test set in smoke mode")
    smoke_lambda: float = Field(
        20.0, ge=0, description="OBProx-SG λ of the smoke run: large, so that a few steps already sparsify")
    smoke_reduction: Literal["sum", "mean"] = Field(
        "mean", description="Laplacian loss reduction of the smoke run (both phases): its teacher is random, "
                            "and from a random start the summed loss at lr 1e-3 diverges (NaN within 4 "
                            "steps at 64²)")
    smoke_widths: dict[str, Any] = Field(
        default_factory=lambda: {"features": [32, 32, 64, 64], "heads": [16, 16], "grid": [8, 16, 24],
                                 "unet": [8, 8, 16, 16], "fuse": 8},
        description="widths of the smoke run's ST-MFNet (flow branch included): the full one takes "
                    "minutes per step on a CPU")
    # data and weights
    vimeo_septuplet_dir: Path | None = Field(None, description="Vimeo-90K septuplet root (sep_trainlist.txt)")
    bvidvc_dir: Path | None = Field(None, description="BVI-DVC quintuplet strips root")
    ucf101_dir: Path | None = Field(None, description="UCF101 QVI quintuplets root (100 clips)")
    davis_dir: Path | None = Field(None, description="DAVIS root (every frame is scored)")
    snufilm_dir: Path | None = Field(None, description="SNU-FILM root (test-easy.txt ... test-extreme.txt)")
    stmfnet_checkpoint: Path | None = Field(None, description="pretrained ST-MFNet (official layout)")
    pwcnet_checkpoint: Path | None = Field(
        None, description="PWC-Net 'default' weights (netExtractor…netRefiner keys) if not in the checkpoint")
    # Phase I
    sparsify_lambda: float = Field(1e-4, ge=0, description="OBProx-SG λ")
    sparsify_lr: float = Field(1e-3, gt=0, description="OBProx-SG learning rate")
    sparsify_eps: float = Field(1e-4, ge=0, description="OBProx-SG orthant threshold")
    sparsify_prox_epochs: float = Field(2, ge=0, description="Np: epochs of Prox-SG steps, then orthant")
    sparsify_epochs: int = Field(20, ge=1, description="epochs of Phase I")
    phase1_flow: Literal["finetune", "frozen"] = Field(
        "finetune", description="Phase I and the PWC-Net: 'finetune' trains it under the l1 penalty like "
        "every other parameter (published: the script's fine-tune flag is on and cannot be turned off); "
        "'frozen' keeps it as loaded")
    sparsify_batch: int = Field(2, ge=1, description="batch size of Phase I")
    sparsify_reduction: Literal["sum", "mean"] = Field(
        "sum", description="Phase I Laplacian loss: 'sum' is the published loss (its scale grows with batch "
                           "and crop; λ 1e-4 and lr 1e-3 were tuned with it), 'mean' divides it by B·C·H·W")
    width_rule: Literal["linear", "sqrt"] = Field("linear", description="'linear': Mini's ceil(d·C)")
    coupling: Literal["max", "min", "mean"] = Field("max", description="one width per coupled group")
    drop_flow: Literal["auto", "always", "never"] = Field(
        "auto", description="drop the flow branch: when its density collapses (auto), always, or never")
    flow_collapse_density: float = Field(
        0.05, ge=0, le=1, description="auto: drop the flow branch below this density")
    student: Literal["published", "plan", "uniform"] = Field(
        "published", description="'published': the published Mini (fixed widths, no flow branch, "
        "1,822,162 parameters); 'plan': compresskit's per-layer plan from Phase I, shrunk layer by layer; "
        "'uniform': STMFNet(widths=one width per part of that plan)")
    # Phase II
    distill_epochs: int = Field(70, ge=0, description="epochs of Phase II (the published distillation "
                                "script: 70, StepLR(20, 0.5) per epoch, lr 1e-3 down to 1.25e-4)")
    distill_reduction: Literal["sum", "mean"] = Field(
        "sum", description="Phase II Laplacian losses: 'sum' as published (smoke runs use smoke_reduction)")
    teacher_mode: Literal["eval", "train"] = Field(
        "eval", description="the frozen teacher's mode in Phase II: 'eval' (ours: BatchNorm running "
        "statistics) or 'train' (the published script: batch statistics)")
    batch: int = Field(2, ge=1, description="batch size of Phase II")
    crop: int = Field(256, ge=32, description="random crop of Phase II")
    alpha: float = Field(0.1, ge=0, description="weight of Lap(S, GT); Lap(S, T) has weight 1")
    lr: float = Field(1e-3, gt=0, description="Adamax learning rate of Phase II")
    step_size: int = Field(20, ge=1, description="StepLR period in epochs")
    gamma: float = Field(0.5, gt=0, description="StepLR factor")
    # evaluation and running
    eval_limit: int | None = Field(None, ge=1, description="score only the first N samples of each test set")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', ...")
    seed: int = Field(0, ge=0, description="seed of the data order and the initialisations")
    progress: bool = Field(True, description="rich progress bars")


# ------------------------------------------------------------------------------------------------ data
def _train_set(cfg: MiniRecipeConfig) -> Dataset:
    if cfg.smoke:
        from compresskit_vfi.data.samples import sample_dataset

        return sample_dataset("quintuplet", "train", size=cfg.smoke_size, seed=cfg.seed)
    from compresskit_vfi.data.datasets import BVIDVCQuintuplets, Vimeo90KSeptuplet
    from compresskit_vfi.data.transforms import train_transform

    if cfg.vimeo_septuplet_dir is None and cfg.bvidvc_dir is None:
        raise ValueError("vimeo_septuplet_dir / bvidvc_dir: the Mini recipe trains on Vimeo-90K septuplets + "
                         "BVI-DVC; give at least one root folder (or use smoke=True for the sample clips)")
    parts: list[Dataset] = []
    if cfg.vimeo_septuplet_dir is not None:
        parts.append(Vimeo90KSeptuplet(cfg.vimeo_septuplet_dir, "train",
                                       transform=train_transform(cfg.crop, seed=cfg.seed)))
    if cfg.bvidvc_dir is not None:
        parts.append(BVIDVCQuintuplets(cfg.bvidvc_dir,
                                       transform=train_transform(cfg.crop, seed=cfg.seed + 1)))
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def _test_sets(cfg: MiniRecipeConfig) -> dict[str, Dataset]:
    if cfg.smoke:
        return common.smoke_test_sets(cfg, "quintuplet")
    from compresskit_vfi.data.datasets import DAVIS90, SNUFILM, UCF101QVI

    sets: dict[str, Dataset] = {}
    if cfg.ucf101_dir is not None:
        sets["ucf101"] = UCF101QVI(cfg.ucf101_dir)
    if cfg.davis_dir is not None:
        sets["davis"] = DAVIS90(cfg.davis_dir, kind="quintuplet")
    if cfg.snufilm_dir is not None:
        for level in ("easy", "medium", "hard", "extreme"):
            sets[f"snufilm_{level}"] = SNUFILM(cfg.snufilm_dir, level=level, kind="quintuplet")
    if not sets:
        raise ValueError("no test set: give ucf101_dir, davis_dir and/or snufilm_dir")
    return sets


class phase1_loss:  # noqa: N801 (a loss function, named like one)
    """Phase I loss: the 5-level Laplacian pyramid loss ``Σ_i 2^i ‖L_i(output) − L_i(target)‖₁`` of the
    output against the batch's target (its last item). ``reduction="sum"`` is the published loss (ST-MFNet
    Mini's ``LaplacianLoss``, ``L1Loss(reduction="sum")``), whose scale grows with batch and crop size: the
    published λ=1e-4 and lr=1e-3 were tuned with it, and the mean (÷ B·C·H·W, ≈ 4·10⁵ at batch 2, 256²)
    would leave OBProx-SG's steps — and the density they reach — far smaller."""

    def __init__(self, reduction: Literal["sum", "mean"] = "sum"):
        self.reduction = reduction
        self.laplacian = ck.get_loss("laplacian", reduction=reduction)

    def __call__(self, output: torch.Tensor, batch: Any) -> torch.Tensor:
        return self.laplacian(output, batch[-1])


def _example(cfg: MiniRecipeConfig) -> tuple[torch.Tensor, ...]:
    size = cfg.smoke_size if cfg.smoke else 256
    return tuple(torch.zeros(1, 3, size, size) for _ in range(4))


def _steps_per_epoch(loader: DataLoader) -> int:
    """Optimizer steps per epoch on each process: under torchrun every rank reads 1/WORLD_SIZE of the data."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return max(1, math.ceil(len(loader) / world))


# --------------------------------------------------------------------------------------------- Phase I
def load_teacher(cfg: MiniRecipeConfig, finetune_flow: bool = False) -> STMFNet:
    """The pretrained ST-MFNet; in smoke mode a seeded random one of ``smoke_widths``. Its PWC-Net is
    frozen unless ``finetune_flow`` (Phase I as published)."""
    torch.manual_seed(cfg.seed)
    model = STMFNet(cfg.smoke_widths if cfg.smoke else None, freeze_flow=not finetune_flow)
    if cfg.stmfnet_checkpoint is not None:
        ck.load_state_dict_strict(model, cfg.stmfnet_checkpoint)
    elif not cfg.smoke:
        raise ValueError("stmfnet_checkpoint: Phase I sparsifies the pretrained ST-MFNet; give the official "
                         "checkpoint file")
    if cfg.pwcnet_checkpoint is not None:
        ck.load_state_dict_strict(model.flow_estimator, cfg.pwcnet_checkpoint)
    return model


def density_published_rule(model: nn.Module) -> float:
    """Overall density as the Mini paper reports it (≈ 0.24 after Phase I): nonzeros / size over every
    parameter whose name contains "weight" — batch-norm weights and the PWC-Net included."""
    nz = total = 0
    for name, p in model.named_parameters():
        if "weight" in name:
            nz += int((p != 0).sum())
            total += p.numel()
    return nz / max(total, 1)


def density_ours(model: nn.Module) -> float:
    """Overall density as compresskit counts it: nonzeros / size over every trainable weight of ≥ 2 dims
    (conv and linear weights: the tensors whose zeros remove channels)."""
    nz = total = 0
    for p in model.parameters():
        if p.requires_grad and p.dim() >= 2:
            nz += int((p != 0).sum())
            total += p.numel()
    return nz / max(total, 1)


def density_report(densities: Mapping[str, float]) -> Table:
    """Mean density per top-level part (and overall, weighted by size), as the paper reports it."""
    table = Table(title="Phase I: density per part (mean over its layers)")
    table.add_column("part")
    table.add_column("layers", justify="right")
    table.add_column("mean density", justify="right")
    parts: dict[str, list[float]] = {}
    for name, d in densities.items():
        top = name.split(".")[0]
        if top == "get_kernel":
            top = "get_kernel." + name.split(".")[1].removeprefix("module")
        parts.setdefault(top, []).append(d)
    for part, ds in parts.items():
        table.add_row(part, str(len(ds)), f"{sum(ds) / len(ds):.3f}")
    return table


def trained_densities(model: nn.Module) -> dict[str, float]:
    """``ck.layer_densities`` of the layers that propose widths: a frozen layer was never sparsified, and
    the PWC-Net (fine-tuned in Phase I as published, or frozen) keeps its widths: a kept flow branch keeps
    the whole PWC-Net."""
    frozen = {name for name, m in model.named_modules()
              if isinstance(getattr(m, "weight", None), nn.Parameter) and not m.weight.requires_grad}
    return {name: d for name, d in ck.layer_densities(model).items()
            if name not in frozen and not name.startswith("flow_estimator.")}


def plan_student(sparse: STMFNet, example: tuple[torch.Tensor, ...], rule: str = "linear",
                 coupling: str = "max") -> WidthPlan:
    """The width plan of Phase I: ``ck.plan_widths`` from the densities of the trained layers."""
    graph = ck.trace(sparse, example)
    return ck.plan_widths(graph, trained_densities(sparse), rule=rule, coupling=coupling, strict=False)


def _keep_pretrained_flow(student: STMFNet, sparse: STMFNet) -> None:
    """A kept flow branch keeps the PWC-Net of ``sparse`` (pretrained; fine-tuned by Phase I as published),
    frozen."""
    try:
        student.flow_estimator.load_state_dict(sparse.flow_estimator.state_dict())
    except RuntimeError as err:
        raise ValueError("plan: a kept flow branch must keep the PWC-Net's widths (its layers propose no "
                         "width); this plan changed them") from err
    student.flow_estimator.requires_grad_(False)


def published_student(seed: int = 0) -> STMFNet:
    """The published ST-MFNet Mini, freshly initialised as published: fixed widths, no flow branch,
    1,822,162 parameters (asserted)."""
    torch.manual_seed(seed)
    student = init_published_(STMFNet(STMFNET_MINI_WIDTHS, flow=False))
    n = common.count_params(student)
    if n != PUBLISHED_PARAMS["ST-MFNet Mini"]:
        raise AssertionError(f"the published ST-MFNet Mini has {PUBLISHED_PARAMS['ST-MFNet Mini']:,} "
                             f"parameters, this one {n:,}")
    return student


def build_student(sparse: STMFNet | None, plan: Any, drop_flow: bool, example: tuple[torch.Tensor, ...],
                  mode: Literal["published", "plan", "uniform"] = "plan", seed: int = 0) -> STMFNet:
    """The student of Phase II, freshly initialised (trained from scratch; the published init of the 3-D
    U-Net encoder and of ``paramScale``, :func:`init_published_`).

    ``mode="published"``: the published Mini (``sparse`` and ``plan`` unused). ``"plan"``:
    ``ck.shrink(sparse, graph, plan, init="reinit")`` layer by layer, then the flow branch dropped if asked;
    ``"uniform"``: ``STMFNet(widths=summarize_widths(that))`` (one width per part). A kept flow branch is not
    trained from scratch: its PWC-Net keeps the weights of ``sparse``, frozen (a random frozen flow
    estimator would feed noise to the splatting)."""
    if mode == "published":
        return published_student(seed)
    graph = ck.trace(sparse, example)
    if isinstance(plan, Mapping):
        plan = WidthPlan.from_dict(dict(plan))
    torch.manual_seed(seed)
    small = ck.shrink(sparse, graph, plan=plan, init="reinit")
    if drop_flow:
        small = drop_flow_branch(small)
    if mode == "uniform":
        torch.manual_seed(seed)
        small = STMFNet(summarize_widths(small), flow=not drop_flow)
    init_published_(small)
    if not drop_flow and sparse.flow:
        _keep_pretrained_flow(small, sparse)
    return small


def widths_table(widths: Mapping[str, Any], dropped_flow: bool, params: int,
                 label: str = "compresskit") -> Table:
    """The student's architecture beside the published ST-MFNet Mini."""
    mini = STMFNET_MINI_WIDTHS.to_dict()
    table = Table(title=f"student architecture ({label}) vs the published ST-MFNet Mini")
    table.add_column("part")
    table.add_column(label, justify="right")
    table.add_column("published Mini", justify="right")
    names = {"features": "feature extractor stages", "heads": "kernel-head hidden convs",
             "grid": "GridNet rows", "unet": "3-D U-Net layers", "fuse": "fusion conv"}
    for key, text in names.items():
        table.add_row(text, str(widths[key]), str(mini[key]))
    table.add_row("flow branch", "dropped" if dropped_flow else "kept", "dropped")
    table.add_row("parameters", f"{params:,}", f"{PUBLISHED_PARAMS['ST-MFNet Mini']:,}")
    return table


# ---------------------------------------------------------------------------------------------- stages
@dataclass
class RecipeState:
    """What the Mini stages share."""

    cfg: MiniRecipeConfig
    console: Console
    store: StageStore
    data: Dataset
    fingerprints: dict[str, dict[str, Any]] = field(default_factory=dict)
    sparse: STMFNet | None = None
    student: STMFNet | None = None
    info: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)


_DATA = ("vimeo_septuplet_dir", "bvidvc_dir", "crop")
_TEACHER = ("stmfnet_checkpoint", "pwcnet_checkpoint")


class SparsifyStage(common.RecipeStage):
    """Phase I: OBProx-SG on ST-MFNet; writes ``sparsify/densities.json``."""

    name = "sparsify"
    fields = (*common.COMMON_FIELDS, "smoke_lambda", "smoke_reduction", "smoke_widths", "sparsify_lambda",
              "sparsify_lr", "sparsify_eps", "sparsify_prox_epochs", "sparsify_epochs", "sparsify_batch",
              "sparsify_reduction", "phase1_flow", *_DATA)
    files = _TEACHER

    def _model(self, cfg: MiniRecipeConfig) -> STMFNet:
        return load_teacher(cfg, finetune_flow=cfg.phase1_flow == "finetune")

    def run(self, state: RecipeState) -> dict[str, Any]:
        cfg, console, data = state.cfg, state.console, state.data
        model = self._model(cfg)
        batch = 2 if cfg.smoke else cfg.sparsify_batch
        loader = common.recipe_loader(data, batch, cfg)
        schedule = common.obproxsg_schedule(cfg, cfg.sparsify_prox_epochs, _steps_per_epoch(loader))
        lam = cfg.smoke_lambda if cfg.smoke else cfg.sparsify_lambda
        reduction = cfg.smoke_reduction if cfg.smoke else cfg.sparsify_reduction
        console.print(f"[bold]Phase I sparsify[/]: OBProx-SG λ={lam}, lr={cfg.sparsify_lr}, "
                      f"eps={cfg.sparsify_eps}, {schedule['n_prox_steps']} Prox-SG steps then orthant steps, "
                      f"Laplacian loss ({reduction}), PWC-Net {cfg.phase1_flow}, {len(data)} samples")
        # as published, the l1 penalty is on every trainable parameter (the PWC-Net too, when fine-tuned)
        # a smoke run's few steps never pay for compiling the fused update (the PWC-Net's hundreds of
        # tensors: minutes on a CPU for the first step, against milliseconds per eager step)
        opt = ck.OBProxSG(l1_param_groups(model, lam), lr=cfg.sparsify_lr, lambda_=lam, eps=cfg.sparsify_eps,
                          compile=False if cfg.smoke else "auto", **schedule)
        config = ck.TrainConfig(**common.train_settings(cfg, cfg.sparsify_epochs, cfg.sparsify_lr,
                                                        scheduler="none"))
        ck.train(model, loader, phase1_loss(reduction), optimizer=opt, config=config,
                 out_dir=self.train_dir(state), resume=True, stage="sparsify",
                 callbacks=[DensityProgress()])
        atomic_write_json(ck.layer_densities(model), cfg.out_dir / "sparsify" / "densities.json")
        state.sparse = model
        return {"state_dict": model.state_dict()}

    def restore(self, state: RecipeState, payload: dict[str, Any]) -> None:
        self.done(state)
        state.sparse = self._model(state.cfg)
        state.sparse.load_state_dict(payload["state_dict"])


class PlanStage(common.RecipeStage):
    """Densities → the student (published Mini, or compresskit's plan); writes ``plan/plan.json``."""

    name = "plan"
    fields = ("student", "width_rule", "coupling", "drop_flow", "flow_collapse_density", "seed", "smoke",
              "smoke_size")
    upstream = ("sparsify",)

    def run(self, state: RecipeState) -> dict[str, Any]:
        cfg, console, sparse = state.cfg, state.console, state.sparse
        console.print(density_report(ck.layer_densities(sparse)))
        densities = {"ours": density_ours(sparse), "published_rule": density_published_rule(sparse)}
        console.print(f"overall density after Phase I: {densities['published_rule']:.3f} counted as the "
                      f"paper does (every parameter named '*weight*'; the paper: ≈ 0.24), "
                      f"{densities['ours']:.3f} counted as compresskit does (trainable weights of ≥ 2 dims)")
        info: dict[str, Any] = {"student": cfg.student, "overall_density": densities}
        if cfg.student == "published":
            student, drop = published_student(cfg.seed), True
        else:
            branch_density = flow_branch_density(sparse)
            drop = cfg.drop_flow == "always" or (cfg.drop_flow == "auto"
                                                 and branch_density <= cfg.flow_collapse_density)
            console.print(f"flow branch density (GridNet weights reading the splatted frames): "
                          f"{branch_density:.3f} → {'dropped' if drop else 'kept'} "
                          f"(drop_flow={cfg.drop_flow})")
            plan = plan_student(sparse, _example(cfg), rule=cfg.width_rule, coupling=cfg.coupling)
            student = build_student(sparse, plan, drop, _example(cfg), cfg.student, cfg.seed)
            info.update(plan=plan.to_dict(), flow_branch_density=branch_density)
        info.update(drop_flow=drop, widths=summarize_widths(student).to_dict(),
                    params={"stmfnet": common.count_params(sparse), "student": common.count_params(student)})
        atomic_write_json(info, cfg.out_dir / "plan" / "plan.json")
        console.print(widths_table(info["widths"], drop, info["params"]["student"], _label(cfg.student)))
        state.student, state.info = student, info
        return {"info": json.dumps(info)}

    def restore(self, state: RecipeState, payload: dict[str, Any]) -> None:
        self.done(state)
        cfg = state.cfg
        state.info = info = json.loads(payload["info"])
        state.student = build_student(state.sparse, info.get("plan"), info["drop_flow"], _example(cfg),
                                      cfg.student, cfg.seed)


class _TrainModeTeacher(nn.Module):
    """The teacher run in train mode whatever mode it is put in (the published Phase II: BatchNorm with
    batch statistics); still frozen and under no_grad in ``ck.distill``."""

    def __init__(self, teacher: nn.Module):
        super().__init__()
        self.teacher = teacher

    def forward(self, *inputs: Any) -> Any:
        self.teacher.train()
        return self.teacher(*inputs)


def phase2_terms(cfg: MiniRecipeConfig) -> list[Any]:
    """Phase II objective ``alpha·Lap(S, GT) + Lap(S, T)``, each the 5-level Laplacian loss summed as
    published (``distill_reduction``; the smoke run uses ``smoke_reduction``)."""
    from compresskit.distillation.engine import OutputLoss

    reduction = cfg.smoke_reduction if cfg.smoke else cfg.distill_reduction
    lap = ck.get_loss("laplacian", reduction=reduction)
    return [OutputLoss(lap, cfg.alpha, "target", name="student"),
            OutputLoss(lap, 1.0, "teacher", name="distill")]


class DistillStage(common.RecipeStage):
    """Phase II: ``0.1·Lap(S, GT) + Lap(S, T)`` from scratch; writes ``distill/stmfnet_mini.pth``."""

    name = "distill"
    fields = (*common.COMMON_FIELDS, "smoke_reduction", "smoke_widths", "distill_epochs", "batch", "alpha",
              "lr", "step_size", "gamma", "distill_reduction", "teacher_mode", *_DATA)
    files = _TEACHER
    upstream = ("plan",)

    def run(self, state: RecipeState) -> dict[str, Any]:
        cfg, student = state.cfg, state.student
        batch = 2 if cfg.smoke else cfg.batch
        terms = phase2_terms(cfg)
        teacher = load_teacher(cfg)  # the original pretrained ST-MFNet, not the sparsified one
        if cfg.teacher_mode == "train":
            teacher = _TrainModeTeacher(teacher)
        state.console.print(f"[bold]Phase II distill[/]: {cfg.alpha}·Lap(S, GT) + Lap(S, T) "
                            f"({terms[0].loss.reduction}), Adamax {cfg.lr}, batch {batch}, "
                            f"StepLR({cfg.step_size}, {cfg.gamma}), teacher in {cfg.teacher_mode} mode, "
                            f"{len(state.data)} samples")
        # the paper's StepLR per epoch (DistillConfig's own default is a cosine over the steps)
        config = ck.DistillConfig(**common.train_settings(cfg, cfg.distill_epochs, cfg.lr, optimizer="adamax",
                                                          scheduler="step", scheduler_interval="epoch"),
                                  alpha=cfg.alpha)
        ck.distill(student, teacher, common.recipe_loader(state.data, batch, cfg), config=config,
                   losses=terms, out_dir=self.train_dir(state), resume=True)
        atomic_torch_save({"state_dict": student.state_dict()}, cfg.out_dir / "distill" / "stmfnet_mini.pth")
        return {"state_dict": student.state_dict()}

    def restore(self, state: RecipeState, payload: dict[str, Any]) -> None:
        self.done(state)
        state.student.load_state_dict(payload["state_dict"])


def _label(student: str) -> str:
    """The results-table name of what Phase II trained."""
    return {"published": "ST-MFNet Mini", "plan": "ST-MFNet Mini (compresskit plan)",
            "uniform": "ST-MFNet Mini (compresskit plan, uniform widths)"}[student]


class EvaluateStage(common.RecipeStage):
    """ST-MFNet conventions; writes ``evaluate/results.json``."""

    name = "evaluate"
    fields = ("smoke", "smoke_size", "smoke_eval_samples", "smoke_widths", "eval_limit", "ucf101_dir",
              "davis_dir", "snufilm_dir")
    files = _TEACHER
    upstream = ("distill",)

    def run(self, state: RecipeState) -> dict[str, Any]:
        cfg = state.cfg
        models = {"ST-MFNet": load_teacher(cfg).eval(), _label(cfg.student): state.student.eval()}
        state.results = common.evaluate_models(cfg, models, lambda: _test_sets(cfg), state.console,
                                               convention="stmfnet", runtime=not cfg.smoke,
                                               macs=not cfg.smoke)
        return {"results": json.dumps(state.results)}

    def restore(self, state: RecipeState, payload: dict[str, Any]) -> None:
        self.done(state)
        state.results = json.loads(payload["results"])


STAGES: tuple[common.RecipeStage, ...] = (SparsifyStage(), PlanStage(), DistillStage(), EvaluateStage())


def paper_table(results: Mapping[str, Any]) -> str:
    """Markdown table in the layout of the Mini paper's Table 1: published rows, then ours, PSNR/SSIM."""
    return common.paper_table(results, PUBLISHED, PUBLISHED_PARAMS, TEST_SETS, (("psnr", 3), ("ssim", 3)))


def _settings_note(cfg: MiniRecipeConfig, info: Mapping[str, Any]) -> str:
    run = "smoke run (sample clips, random teacher, a few steps per stage; numbers mean nothing)" \
        if cfg.smoke else "full run"
    reduction = {"sum": "summed", "mean": "mean"}[cfg.smoke_reduction if cfg.smoke else cfg.distill_reduction]
    length = f"{cfg.smoke_steps} steps" if cfg.smoke else f"{cfg.distill_epochs} epochs"
    dens = info.get("overall_density", {})
    return (f"\nOurs: {run}; student {cfg.student!r} ({_label(cfg.student)}, "
            f"{info.get('params', {}).get('student', 0):,} parameters), Phase II {length} "
            f"with the {reduction} Laplacian losses, teacher in {cfg.teacher_mode} mode, PWC-Net "
            f"{cfg.phase1_flow} in Phase I; density after Phase I "
            f"{dens.get('published_rule', float('nan')):.3f} "
            f"(paper's count) / {dens.get('ours', float('nan')):.3f} (ours).\n")


def run(cfg: MiniRecipeConfig, console: Console | None = None,
        stop_after: Literal["sparsify", "plan", "distill", "evaluate"] = "evaluate") -> dict:
    """Run (or resume) the whole recipe; returns ``{"plan", "evaluation"}``."""
    with common.run_lock(cfg):  # one live run per out_dir
        return _run(cfg, console, stop_after)


def _run(cfg: MiniRecipeConfig, console: Console | None,
         stop_after: Literal["sparsify", "plan", "distill", "evaluate"]) -> dict:
    console = common.start_run(cfg, console)
    state = RecipeState(cfg, console, StageStore(cfg.out_dir), _train_set(cfg))
    if int(os.environ.get("RANK", "0")) != 0 and stop_after == "evaluate":
        stop_after = "distill"  # under torchrun, rank 0 evaluates and writes the table
    run_stages(STAGES, state, state.store, fingerprints=state.fingerprints, stop_after=stop_after)
    summary: dict[str, Any] = {}
    if state.info:
        summary["plan"] = {k: v for k, v in state.info.items() if k != "plan"}
    if state.results:
        summary["evaluation"] = state.results
        common.write_table(cfg, paper_table(state.results) + _settings_note(cfg, state.info), console)
        atomic_write_json(summary, cfg.out_dir / "summary.json")
    return summary
