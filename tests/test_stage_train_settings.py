"""Issue 23, items 2 and 3: the training settings of compress()'s stages.

* ``optimizer``, ``amp``, ``grad_accum``, ``grad_clip`` and ``weight_decay`` set through
  ``compress(config=...)`` reach the Trainer each stage actually runs (observed on the trainer: the
  optimizer it built, the norm it clipped to, the micro-batches per step, the AMP warning);
* the stage fingerprints of settings that did not change are the first config's keys, so older runs
  resume without redoing a stage; a changed setting changes the fingerprint;
* the distillation objective declared once with each entry point's measured defaults; run-wide settings
  come from the CompressConfig;
* the trainer imports nothing from ``compresskit.sparsify``: the density in the progress lines is a
  sparsifier's callback, and a checkpoint written without that (stateless) callback still resumes exactly.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import compresskit as ck
from compresskit.config import CompressConfig, DistillConfig, RecoverConfig, SparsifyConfig, TrainConfig
from compresskit.sparsify.progress import DensityProgress
from compresskit.training import loop


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))


def _batches(n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(2, 3, 6, 6, generator=g), torch.rand(2, 3, 6, 6, generator=g)) for _ in range(n)]


class _Seen:
    """Records, per stage, the trainer's config and optimizer, the micro-batches of each optimizer step
    and the norms ``clip_grad_norm_`` was called with."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.trainers: dict[str, loop.Trainer] = {}
        self.micro: dict[str, list[int]] = {}
        self.clips: dict[str, list[float]] = {}
        setup, step, clip = loop.Trainer._setup, loop.Trainer._optimizer_step, torch.nn.utils.clip_grad_norm_
        current: list[str] = []

        def _setup(trainer: loop.Trainer):  # noqa: ANN202
            self.trainers[trainer.stage] = trainer
            current[:] = [trainer.stage]
            return setup(trainer)

        def _step(trainer: loop.Trainer, group, where):  # noqa: ANN001, ANN202
            self.micro.setdefault(trainer.stage, []).append(len(group))
            return step(trainer, group, where)

        def _clip(params, max_norm, *args, **kw):  # noqa: ANN001, ANN202
            self.clips.setdefault(current[0], []).append(float(max_norm))
            return clip(params, max_norm, *args, **kw)

        monkeypatch.setattr(loop.Trainer, "_setup", _setup)
        monkeypatch.setattr(loop.Trainer, "_optimizer_step", _step)
        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", _clip)


SETTINGS = {"optimizer": "sgd", "weight_decay": 0.01, "grad_clip": 0.25, "grad_accum": 2, "amp": "bf16"}


def test_each_stage_takes_optimizer_amp_accumulation_clipping_and_weight_decay(monkeypatch) -> None:
    seen = _Seen(monkeypatch)
    cfg = CompressConfig(target="2x params", measure_latency=False, progress=False, seed=3,
                         sparsify={"steps": 2, "lr": 1e-3, **SETTINGS},
                         recover={"steps": 2, "lr": 2e-3, **SETTINGS, "optimizer": "adamw",
                                  "grad_clip": 0.5, "weight_decay": 0.02})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ck.compress(_net(), _batches(), config=cfg)
    assert set(seen.trainers) == {"sparsify", "distill"}
    for stage, kind, clip, decay, lr in (("sparsify", torch.optim.SGD, 0.25, 0.01, 1e-3),
                                         ("distill", torch.optim.AdamW, 0.5, 0.02, 2e-3)):
        trainer = seen.trainers[stage]
        assert type(trainer.optimizer) is kind
        assert trainer.optimizer.param_groups[0]["weight_decay"] == decay
        assert trainer.optimizer.defaults["lr"] == lr
        assert seen.clips[stage] == [clip, clip]  # once per optimizer step
        assert seen.micro[stage] == [2, 2]  # two micro-batches per step
        assert trainer.config.amp == "bf16"
        assert trainer.config.seed == 3 and trainer.config.progress is False  # run-wide, from CompressConfig
    amp_warnings = [w for w in caught if "config.amp='bf16' only applies on a CUDA device" in str(w.message)]
    assert len(amp_warnings) == 2  # CPU: each stage says it trains in full precision


def test_obproxsg_takes_clipping_but_refuses_another_optimizer(monkeypatch) -> None:
    with pytest.raises(ValueError, match=r"method='obproxsg' trains with OBProx-SG, but optimizer, "
                                         r"weight_decay \(settings of the default optimizer\) are set"):
        SparsifyConfig(lambda_=1e-4, optimizer="sgd", weight_decay=0.1)
    seen = _Seen(monkeypatch)
    cfg = CompressConfig(target="2x params", measure_latency=False, progress=False,
                         sparsify={"steps": 2, "lr": 1e-3, "lambda_": 1e-4, "grad_clip": 0.3},
                         recover={"steps": 0})
    ck.compress(_net(), _batches(), config=cfg)
    trainer = seen.trainers["sparsify"]
    assert type(trainer.optimizer) is ck.OBProxSG and seen.clips["sparsify"] == [0.3, 0.3]
    assert trainer.config.scheduler == "step"  # OBProx-SG's own schedule (the papers' StepLR) as before


#: the keys of the stage configs before they took the training settings (their dump was the fingerprint)
_FIRST_SPARSIFY = {"method", "steps", "lr", "lambda_", "growth", "calibrate_every", "ramp", "zero_tol",
                   "kept_floor", "eps", "n_prox_steps", "n_orthant_steps", "l1_on"}
_FIRST_RECOVER = {"steps", "lr", "scheduler", "teacher", "alpha", "distill_loss", "features",
                  "feature_weight", "early_stop_patience", "val_every"}


def test_fingerprints_keep_their_first_keys_until_a_new_setting_is_changed() -> None:
    assert set(SparsifyConfig().fingerprint()) == _FIRST_SPARSIFY
    assert set(RecoverConfig().fingerprint()) == _FIRST_RECOVER
    assert RecoverConfig().fingerprint()["scheduler"] == "cosine"
    changed = RecoverConfig(grad_clip=1.0).fingerprint()
    assert set(changed) == _FIRST_RECOVER | {"grad_clip"} and changed["grad_clip"] == 1.0
    assert SparsifyConfig(amp="bf16").fingerprint()["amp"] == "bf16"
    assert SparsifyConfig(scheduler="cosine").fingerprint()["scheduler"] == "cosine"


def test_stage_defaults_and_the_flat_keys() -> None:
    # the objective is declared once (DistillTerms); each entry point keeps its measured default
    assert (DistillConfig().distill_loss, RecoverConfig().distill_loss) == ("laplacian", "l1")
    assert (DistillConfig().alpha, RecoverConfig().alpha) == (0.1, 0.5)
    cfg = CompressConfig(sparsify={"steps": 7, "lr": 3e-4}, recover={"lr": 2e-4, "alpha": 0.3})
    assert (cfg.sparsify.steps, cfg.sparsify.lr, cfg.recover.lr, cfg.recover.alpha) == (7, 3e-4, 2e-4, 0.3)
    run = TrainConfig(seed=5, device="cpu")
    made = cfg.recover.train_config(run, DistillConfig, steps=4)
    assert (made.seed, made.device, made.steps, made.lr, made.alpha) == (5, "cpu", 4, 2e-4, 0.3)
    assert (made.scheduler, made.scheduler_interval, made.features) == ("cosine", "step", "auto")


def test_the_trainer_imports_nothing_from_sparsify() -> None:
    train_dir = Path(loop.__file__).parent
    for path in train_dir.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("compresskit.sparsify") for n in names), path.name


def _mse(out: torch.Tensor, batch: tuple) -> torch.Tensor:
    return (out - batch[-1]).pow(2).mean()


def test_density_is_a_callback_and_a_checkpoint_without_it_resumes_exactly(tmp_path) -> None:
    batches = [(torch.randn(4, 3, generator=torch.Generator().manual_seed(i)),
                torch.randn(4, 3, generator=torch.Generator().manual_seed(100 + i))) for i in range(3)]
    cfg = TrainConfig(steps=6, device="cpu", checkpoint_every=1, progress=False, scheduler="none")

    def run(steps: int, out: Path, callbacks: list) -> nn.Module:
        torch.manual_seed(0)
        model = nn.Linear(3, 3)
        opt = (lambda p: ck.OBProxSG(p, lr=1e-2, lambda_=1e-2))  # noqa: E731
        ck.train(model, batches, _mse, optimizer=opt, config=cfg.model_copy(update={"steps": steps}),
                 out_dir=out, callbacks=callbacks)
        return model

    whole = run(6, tmp_path / "whole", [])
    run(3, tmp_path / "half", [])  # written without the density callback, as before
    resumed = run(6, tmp_path / "half", [DensityProgress()])
    for a, b in zip(whole.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    trainer = loop.Trainer(nn.Linear(3, 3), batches, _mse, config=cfg, callbacks=[DensityProgress()])
    with torch.no_grad():
        trainer.model.weight.zero_()  # 0 of 9 weights and 3 of 3 biases: layer density of the weight 0
    assert trainer._progress_fields() == {"density": 0.0}
    assert loop.Trainer(nn.Linear(3, 3), batches, _mse, config=cfg)._progress_fields() == {}


def test_the_learning_rate_probe_uses_the_stage_optimizer(monkeypatch) -> None:
    from compresskit import autorecipe

    probed: list[type] = []
    real = autorecipe.calibrate_lr

    def spy(model, *args, optimizer=None, **kw):  # noqa: ANN001, ANN202
        probed.append(type(optimizer(list(model.parameters()), 1e-3)))
        return real(model, *args, optimizer=optimizer, **kw)

    monkeypatch.setattr(autorecipe, "calibrate_lr", spy)
    cfg = CompressConfig(target="2x params", measure_latency=False, progress=False,
                         sparsify={"steps": 2, "optimizer": "sgd"}, recover={"steps": 2, "optimizer": "adam"})
    ck.compress(_net(), _batches(), config=cfg)
    assert probed == [torch.optim.SGD, torch.optim.Adam]  # lr="auto": each stage's probe, its optimizer


def test_a_changed_training_setting_redoes_its_stage_only(monkeypatch, tmp_path) -> None:
    def run(**recover) -> set[str]:
        seen = _Seen(monkeypatch)
        cfg = CompressConfig(target="2x params", measure_latency=False, progress=False, out_dir=tmp_path,
                             sparsify={"steps": 2, "lr": 1e-3}, recover={"steps": 2, "lr": 1e-3, **recover})
        ck.compress(_net(), _batches(), config=cfg)
        return set(seen.trainers)

    assert run() == {"sparsify", "distill"}
    assert run(grad_clip=None, amp="none") == set()  # the defaults, written out: nothing is redone
    assert run(grad_clip=1.0) == {"distill"}  # stage I is reused, recovery is redone
