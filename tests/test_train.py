"""The training loop: exact resume, accumulation, clipping, defaults, validation, checkpoints, errors."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import compresskit as ck
from compresskit.training import checkpoint as ckpt
from compresskit.training.loop import BatchError, Callback, NonFiniteLossError
from compresskit.training.progress import ProgressBar


class NoisyPairs(Dataset):
    """x -> y regression pairs with random augmentation noise drawn from the global torch RNG."""

    def __init__(self, n: int = 24):
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 6, generator=g)
        self.y = self.x @ torch.randn(6, 3, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i] + 0.01 * torch.randn(6), self.y[i]


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))


def mse(output, batch):
    return nn.functional.mse_loss(output, batch[-1])


class StopAt(Callback):
    def __init__(self, step: int):
        self.at = step

    def on_step_end(self, trainer):
        if trainer.step == self.at:
            raise KeyboardInterrupt(f"simulated interruption at step {self.at}")


def _params(model):
    return [p.detach().clone() for p in model.state_dict().values()]


def _records(path):
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    for r in recs:
        r.pop("steps_per_s", None)
    return recs


@pytest.mark.parametrize("by", ["steps", "epochs"])
def test_resume_is_bit_exact(tmp_path, by):
    """An interrupted run resumed from its checkpoint ends with exactly the weights (and log) of a run that
    was never interrupted: same data order, augmentation noise, dropout masks, optimizer and LR schedule."""
    length = {"steps": 17} if by == "steps" else {"epochs": 3}  # 6 optimizer steps per epoch
    cfg = ck.TrainConfig(**length, lr=1e-2, grad_accum=2, step_size=1, gamma=0.7, checkpoint_every=4,
                         log_every=1, keep_last=2, progress=False, seed=3)

    def loader():
        return DataLoader(NoisyPairs(), batch_size=2, shuffle=True)

    full = ck.train(small_net(), loader(), mse, config=cfg, out_dir=tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        ck.train(small_net(), loader(), mse, config=cfg, out_dir=tmp_path / "cut", callbacks=[StopAt(10)])
    assert ckpt.latest_checkpoint(tmp_path / "cut").name == "ckpt-step00000008.pt"
    resumed = ck.train(small_net(seed=99), loader(), mse, config=cfg, out_dir=tmp_path / "cut",
                       callbacks=[StopAt(-1)])
    assert resumed.step == full.step and resumed.epoch == full.epoch
    for a, b in zip(_params(full.model), _params(resumed.model)):
        assert torch.equal(a, b)
    assert _records(tmp_path / "full" / "metrics.jsonl") == _records(tmp_path / "cut" / "metrics.jsonl")
    # keep_last=2 periodic checkpoints, no temporary files left behind
    names = sorted(p.name for p in (tmp_path / "cut").iterdir())
    kept = [p.name for p in ckpt.list_checkpoints(tmp_path / "cut")]
    assert [n for n in names if n.startswith("ckpt-")] == kept
    assert len(ckpt.list_checkpoints(tmp_path / "cut")) == 2
    assert not [n for n in names if n.endswith(".tmp")]


def test_resume_of_finished_run_returns_at_once(tmp_path):
    cfg = ck.TrainConfig(steps=3, progress=False)
    data = DataLoader(NoisyPairs(8), batch_size=4)
    first = ck.train(small_net(), data, mse, config=cfg, out_dir=tmp_path)
    again = ck.train(small_net(seed=5), data, mse, config=cfg, out_dir=tmp_path)
    assert again.step == 3
    for a, b in zip(_params(first.model), _params(again.model)):
        assert torch.equal(a, b)


def test_fresh_start_in_a_used_folder(tmp_path):
    data = DataLoader(NoisyPairs(8), batch_size=4)
    ck.train(small_net(), data, mse, config=ck.TrainConfig(steps=6, checkpoint_every=2, progress=False),
             out_dir=tmp_path)
    with pytest.warns(UserWarning, match="removing 3 checkpoint"):
        again = ck.train(small_net(), data, mse, out_dir=tmp_path, resume=False,
                         config=ck.TrainConfig(steps=2, checkpoint_every=1, progress=False))
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["ckpt-step00000001.pt", "ckpt-step00000002.pt"]
    assert again.last_checkpoint.name == "ckpt-step00000002.pt"
    assert [r["step"] for r in again.history] == [2]


def test_grad_accumulation_matches_one_big_batch():
    """grad_accum=4 over batches of 2 takes the same SGD steps as batches of 8 (mean losses)."""
    data = NoisyPairs(16)
    data.__getitem__ = None
    ds = TensorDataset(data.x, data.y)
    model_net = lambda: nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))  # noqa: E731
    torch.manual_seed(0)
    a = model_net()
    b = model_net()
    b.load_state_dict(a.state_dict())
    common = dict(optimizer="sgd", momentum=0.0, lr=0.1, scheduler="none", progress=False, epochs=2)
    ck.train(a, DataLoader(ds, batch_size=2), mse, config=ck.TrainConfig(grad_accum=4, **common))
    ck.train(b, DataLoader(ds, batch_size=8), mse, config=ck.TrainConfig(**common))
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_grad_clipping_bounds_the_step():
    """With SGD(lr=1) one clipped step moves the parameters by exactly grad_clip (global norm)."""
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    ds = TensorDataset(torch.randn(4, 6) * 10, torch.randn(4, 3) * 10)
    cfg = ck.TrainConfig(steps=1, optimizer="sgd", momentum=0.0, lr=1.0, grad_clip=0.05, scheduler="none",
                         progress=False)
    ck.train(model, DataLoader(ds, batch_size=4), mse, config=cfg)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert math.isclose(float((after - before).norm()), 0.05, rel_tol=1e-4)


def test_defaults_are_the_papers_adamax_and_steplr():
    seen = {}

    class Look(Callback):
        def on_train_start(self, trainer):
            seen["opt"] = trainer.optimizer
            seen["sched"] = trainer.scheduler

    ds = TensorDataset(torch.randn(4, 6), torch.randn(4, 3))
    result = ck.train(small_net(), DataLoader(ds, batch_size=4), mse, config=ck.TrainConfig(epochs=21,
                      log_every=1, progress=False), callbacks=[Look()])
    opt, sched = seen["opt"], seen["sched"]
    assert isinstance(opt, torch.optim.Adamax)
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["lr"] == 1e-3
    assert isinstance(sched, torch.optim.lr_scheduler.StepLR) and sched.step_size == 20 and sched.gamma == 0.5
    lrs = [r["lr"] for r in result.history if r["kind"] == "train"]
    assert lrs[:20] == [1e-3] * 20 and lrs[20] == pytest.approx(5e-4)  # halved after 20 epochs


def test_optimizer_instance_factory_and_foreign_params():
    ds = TensorDataset(torch.randn(4, 6), torch.randn(4, 3))
    cfg = ck.TrainConfig(steps=2, progress=False)
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = _params(model)
    ck.train(model, DataLoader(ds, batch_size=2), mse, optimizer=opt, config=cfg)
    assert any(not torch.equal(a, b) for a, b in zip(before, _params(model)))
    made = []
    ck.train(small_net(), DataLoader(ds, batch_size=2), mse, config=cfg,
             optimizer=lambda ps: made.append(torch.optim.Adam(ps, lr=1e-2)) or made[-1])
    assert len(made) == 1
    with pytest.raises(ValueError, match="not the model's"):
        ck.train(small_net(), DataLoader(ds, batch_size=2), mse, config=cfg,
                 optimizer=torch.optim.SGD(small_net().parameters(), lr=0.1))


def test_obproxsg_plugs_in_and_resumes_exactly(tmp_path):
    obproxsg = pytest.importorskip("compresskit.sparsify.obproxsg")
    ds = NoisyPairs(16)

    def run(out, callbacks=()):
        model = small_net()
        opt = obproxsg.OBProxSG(model.parameters(), lr=1e-2, lambda_=1e-2, n_prox_steps=5)
        return ck.train(model, DataLoader(ds, batch_size=2, shuffle=True), mse, optimizer=opt, out_dir=out,
                        config=ck.TrainConfig(steps=12, checkpoint_every=3, progress=False, scheduler="none"),
                        callbacks=callbacks)

    full = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", [StopAt(4)])  # checkpoint at 3 is in the prox phase, the end in the orthant phase
    resumed = run(tmp_path / "b", [StopAt(-1)])
    for a, b in zip(_params(full.model), _params(resumed.model)):
        assert torch.equal(a, b)


def test_validation_keeps_the_best_checkpoint(tmp_path):
    data = NoisyPairs(16)
    val = DataLoader(TensorDataset(data.x, data.y), batch_size=5)
    mae = {"mae": lambda out, batch: (out - batch[-1]).abs().mean()}
    cfg = ck.TrainConfig(steps=12, val_every=3, lr=5e-2, progress=False, monitor="mae")
    result = ck.train(small_net(), DataLoader(data, batch_size=4, shuffle=True), mse, config=cfg,
                      val_loader=val, metrics=mae, out_dir=tmp_path)
    vals = [r for r in result.history if r["kind"] == "val"]
    assert [r["step"] for r in vals] == [3, 6, 9, 12]
    best = min(vals, key=lambda r: r["mae"])
    assert result.best == pytest.approx(best["mae"]) and result.best_step == best["step"]
    saved = torch.load(tmp_path / "best.pt", weights_only=True)
    assert saved["step"] == best["step"]
    # the saved weights reproduce the best value (independent re-evaluation, weighted by batch size)
    net = small_net()
    net.load_state_dict(saved["model"])
    net.eval()
    with torch.no_grad():
        mae_all = (net(data.x) - data.y).abs().mean()
    assert float(mae_all) == pytest.approx(best["mae"], rel=1e-5)
    with pytest.raises(ValueError, match="monitor"):
        ck.train(small_net(), DataLoader(data, batch_size=4), mse, val_loader=val,
                 config=ck.TrainConfig(steps=1, val_every=1, monitor="psnr", progress=False))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def flaky(output, batch):
        calls["n"] += 1
        loss = mse(output, batch)
        return loss * float("nan") if calls["n"] == 5 else loss

    model = small_net()
    with pytest.raises(NonFiniteLossError, match="step 5.*ckpt-step00000004"):
        ck.train(model, DataLoader(NoisyPairs(40), batch_size=4), flaky, out_dir=tmp_path,
                 config=ck.TrainConfig(steps=8, checkpoint_every=2, progress=False))
    assert ckpt.latest_checkpoint(tmp_path).name == "ckpt-step00000004.pt"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    saved = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))["model"]
    assert all(torch.isfinite(v).all() for v in saved.values())


def test_clear_errors_for_bad_loaders_and_batches():
    cfg = ck.TrainConfig(steps=2, progress=False)
    with pytest.raises(ValueError, match="no batches"):
        ck.train(small_net(), DataLoader(TensorDataset(torch.zeros(0, 6), torch.zeros(0, 3)), batch_size=2),
                 mse, config=cfg)
    with pytest.raises(ValueError, match="no batches"):
        ck.train(small_net(), [], mse, config=cfg)
    with pytest.raises(BatchError, match="tuple or list"):
        ck.train(small_net(), [{"x": torch.zeros(2, 6)}], mse, config=cfg)
    with pytest.raises(BatchError, match="at least 2 elements"):
        ck.train(small_net(), [(torch.zeros(2, 6),)], mse, config=cfg)
    with pytest.raises(BatchError, match=r"element 0 should be a 2-d float32 tensor.*got a 3-d"):
        good, bad = (torch.zeros(2, 6), torch.zeros(2, 3)), (torch.zeros(2, 1, 6), torch.zeros(2, 3))
        ck.train(small_net(), [good, bad], mse, config=cfg)
    with pytest.raises(BatchError, match=r"model\(\*inputs\) failed for inputs \(2, 5\)"):
        ck.train(small_net(), [(torch.zeros(2, 5), torch.zeros(2, 3))], mse, config=cfg)
    with pytest.raises(TypeError, match="scalar tensor"):
        ck.train(small_net(), [(torch.zeros(2, 6), torch.zeros(2, 3))], lambda o, b: o, config=cfg)
    with pytest.raises(ValueError, match="steps or epochs"):
        ck.TrainConfig(steps=1, epochs=1)


def test_amp_on_cpu_is_a_noted_noop():
    ds = TensorDataset(torch.randn(4, 6), torch.randn(4, 3))
    torch.manual_seed(0)
    a, b = small_net(), small_net()
    common = dict(steps=2, progress=False, device="cpu")
    with pytest.warns(UserWarning, match="only applies on a CUDA device"):
        ck.train(a, DataLoader(ds, batch_size=2), mse, config=ck.TrainConfig(amp="bf16", **common))
    ck.train(b, DataLoader(ds, batch_size=2), mse, config=ck.TrainConfig(**common))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_progress_bar_is_silent_without_a_terminal():
    buf = io.StringIO()
    bar = ProgressBar(10, enabled=True, console=Console(file=buf, force_terminal=False))
    bar.start(0)
    bar.update(3, 0.5)
    bar.close()
    assert not bar.enabled and buf.getvalue() == ""
    buf = io.StringIO()
    bar = ProgressBar(10, enabled=True, console=Console(file=buf, force_terminal=True, width=120))
    bar.start(0)
    bar.update(3, 0.5)
    bar.close()
    assert "loss 0.5" in buf.getvalue() and "step/s" in buf.getvalue()
