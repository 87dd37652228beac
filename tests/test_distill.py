"""Distillation: frozen teacher, the papers' objective, feature adapters, adversarial terms, the teacher
cache, and a student distilled from a trained teacher beating ground-truth training on a real photo."""

from __future__ import annotations

import importlib.util
import statistics
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import compresskit as ck
from compresskit.distillation.engine import OutputLoss
from compresskit.training.loop import Callback


def net(width: int, seed: int, bn: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width) if bn else nn.Identity(),
                         nn.ReLU(), nn.Dropout(0.1), nn.Conv2d(width, 3, 3, padding=1))


def images(n: int = 8, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=g)
    return TensorDataset(x, x.flip(-1))


def _with(cfg: ck.DistillConfig, **changes) -> ck.DistillConfig:
    return ck.DistillConfig.model_validate({**cfg.model_dump(), **changes})


def test_teacher_is_frozen_and_restored():
    teacher = net(8, 0).train()  # left in train mode, like the published script
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    seen = []

    class Inspect(Callback):
        def on_step_end(self, trainer):
            in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
            seen.append((all(not m.training for m in teacher.modules()),
                         all(not p.requires_grad for p in teacher.parameters()),
                         not in_optimizer & {id(p) for p in teacher.parameters()},
                         all(p.grad is None for p in teacher.parameters())))

    student = net(4, 1)
    ck.distill(student, teacher, DataLoader(images(), batch_size=4, shuffle=True),
               config=ck.DistillConfig(steps=4, progress=False), callbacks=[Inspect()])
    assert seen == [(True, True, True, True)] * 4
    after = teacher.state_dict()
    for k, v in before.items():  # weights and BatchNorm running statistics / counters untouched
        assert torch.equal(v, after[k]), k
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())  # restored
    with pytest.raises(ValueError, match="same module"):
        ck.distill(teacher, teacher, DataLoader(images(), batch_size=4))


def test_default_objective_is_alpha_laplacian_gt_plus_laplacian_teacher():
    """Step 1's logged loss equals 0.1·Lap(S, GT) + Lap(S, T) computed here on the first batch."""
    data = images(4)
    teacher, student = net(8, 0, bn=False), net(4, 1, bn=False)
    teacher.eval()
    s0 = net(4, 1, bn=False).eval()
    x, gt = data.tensors
    lap = ck.get_loss("laplacian")
    with torch.no_grad():
        want_student, want_distill = 0.1 * lap(s0(x), gt), lap(s0(x), teacher(x))
    # dropout is off for a clean comparison: p=0 through eval of the Dropout module only
    student[3].p = 0.0
    result = ck.distill(student, teacher, DataLoader(data, batch_size=4),
                        config=ck.DistillConfig(steps=1, log_every=1, progress=False))
    rec = result.history[0]
    assert rec["student"] == pytest.approx(float(want_student), rel=1e-5)
    assert rec["distill"] == pytest.approx(float(want_distill), rel=1e-5)
    assert rec["loss"] == pytest.approx(float(want_student + want_distill), rel=1e-5)
    # the same objective with the ground-truth term written as a training-loop loss_fn(output, batch)
    student = net(4, 1, bn=False)
    student[3].p = 0.0
    terms = [OutputLoss(lambda out, batch: lap(out, batch[-1]), 0.1, "batch", name="student"),
             OutputLoss("laplacian", name="distill")]
    again = ck.distill(student, teacher, DataLoader(data, batch_size=4), losses=terms,
                       config=ck.DistillConfig(steps=1, log_every=1, progress=False))
    assert again.history[0]["loss"] == pytest.approx(rec["loss"], rel=1e-6)


def test_feature_distillation_with_adapters():
    teacher, student = net(8, 0, bn=False), net(4, 1, bn=False)
    same = net(8, 2, bn=False)
    cfg = ck.DistillConfig(steps=3, log_every=1, progress=False,
                           features=[{"student": "2", "teacher": "2", "weight": 0.5}])
    result = ck.distill(student, teacher, DataLoader(images(), batch_size=4), config=cfg)
    adapter = result.extras["adapters"]["2"]
    assert isinstance(adapter, nn.Conv2d) and adapter.kernel_size == (1, 1)
    assert (adapter.in_channels, adapter.out_channels) == (4, 8)
    assert "feature:2" in result.history[-1]
    # adapters learn with the student: compare with their seeded initial values
    fresh = ck.distill(net(4, 1, bn=False), teacher, DataLoader(images(), batch_size=4),
                       config=_with(cfg, steps=1, lr=1e-12))
    assert not torch.allclose(fresh.extras["adapters"]["2"].weight, adapter.weight)
    # equal widths: identity adapter; the feature term at step 1 is 0.5·MSE of the raw features
    x = images().tensors[0][:4]
    feats = {}
    hooks = [m[2].register_forward_hook(lambda mod, i, o, k=k: feats.__setitem__(k, o))
             for k, m in (("s", same), ("t", teacher))]
    with torch.no_grad():
        same.eval()(x), teacher.eval()(x)
    for h in hooks:
        h.remove()
    want = 0.5 * nn.functional.mse_loss(feats["s"], feats["t"])
    r = ck.distill(same, teacher, DataLoader(images(), batch_size=4), config=_with(cfg, steps=1))
    assert isinstance(r.extras["adapters"]["2"], nn.Identity)
    assert r.history[0]["feature:2"] == pytest.approx(float(want), rel=1e-5)
    with pytest.raises(ValueError, match="no module at path 'nope'"):
        ck.distill(net(4, 1), teacher, DataLoader(images(), batch_size=4),
                   config=_with(cfg, features=[{"student": "nope", "teacher": "2"}]))


def test_adversarial_distillation_resumes_exactly(tmp_path):
    """A GAN term trains its discriminator with its own optimizer; both are in the checkpoints."""
    teacher = net(8, 0, bn=False)

    def run(out, stop=None):
        class Stop(Callback):
            def on_step_end(self, trainer):
                if trainer.step == stop:
                    raise KeyboardInterrupt

        torch.manual_seed(5)
        gan = ck.get_loss("gan", in_channels=3, lr=1e-3)
        result = ck.distill(net(4, 1, bn=False), teacher, DataLoader(images(), batch_size=2, shuffle=True),
                            losses=[OutputLoss("laplacian"), OutputLoss(gan, weight=0.1)], out_dir=out,
                            config=ck.DistillConfig(steps=5, checkpoint_every=2, progress=False, log_every=1),
                            callbacks=[Stop()])
        return result, gan

    (full, gan_full) = run(tmp_path / "a")
    assert "discriminator0" in full.history[0]
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", stop=3)
    resumed, gan_resumed = run(tmp_path / "b")
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    d_full, d_resumed = gan_full.discriminator.state_dict(), gan_resumed.discriminator.state_dict()
    for k in d_full:
        assert torch.equal(d_full[k], d_resumed[k]), k


def test_teacher_cache_runs_the_teacher_once(tmp_path):
    teacher, calls = net(8, 0), []
    teacher.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    data = images(12)

    def run(cache: bool):
        cfg = ck.DistillConfig(epochs=3, progress=False, cache_teacher=cache, cache_dir=tmp_path / "cache",
                               features=[{"student": "2", "teacher": "2"}])
        return ck.distill(net(4, 1), teacher, DataLoader(data, batch_size=4, shuffle=True), config=cfg)

    plain = run(False)
    n_plain = sum(calls)
    calls.clear()
    cached = run(True)
    assert sum(calls) == 4 + 12  # the probe batch, then each of the 12 items once (not 3 epochs)
    calls.clear()
    again = run(True)
    assert sum(calls) == 4  # the cache on disk is reused
    assert n_plain == 4 + 3 * 12
    for a, b, c in zip(plain.model.parameters(), cached.model.parameters(), again.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert torch.equal(b, c)

    class Augmented(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            x = torch.rand(3, 32, 32)
            return x, x

    with pytest.raises(ValueError, match="fixed dataset"):
        ck.distill(net(4, 1), teacher, DataLoader(Augmented(), batch_size=2),
                   config=ck.DistillConfig(steps=1, progress=False, cache_teacher=True,
                                           cache_dir=tmp_path / "c2"))


def _benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "distill_vs_gt.py"
    spec = importlib.util.spec_from_file_location("distill_vs_gt", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_distilled_student_beats_ground_truth_training():
    """benchmarks/distill_vs_gt.py cut down (teacher trained 150 steps instead of 600, 2 seeds instead of
    10): the distilled students' mean test PSNR beats that of the same students trained on the (noisy)
    ground truth for the same 200 steps."""
    pytest.importorskip("skimage")
    bench = _benchmark()
    train_set, test_set = bench.make_task()
    teacher = bench.train_teacher(train_set, steps=150)
    rows = [bench.compare(seed, teacher, train_set, test_set, steps=200) for seed in range(2)]
    gt, kd = [r[0] for r in rows], [r[1] for r in rows]
    assert bench.psnr(teacher, test_set) > max(gt)  # the teacher knows more than the students
    assert statistics.mean(kd) > statistics.mean(gt)


def test_adapter_for_channels_last_tokens_maps_the_last_dimension():
    """A linear layer's (B, L, C) output shrunk from 16 to 15 channels: the adapter is a linear map over
    the last dimension (the tokens L stay), checked against the matrix product by hand."""
    from compresskit.distillation.features import make_adapter

    s, t = torch.randn(2, 5, 15), torch.randn(2, 5, 16)
    adapter = make_adapter(s, t, "'attn.proj'")
    assert isinstance(adapter, nn.Linear) and (adapter.in_features, adapter.out_features) == (15, 16)
    assert torch.allclose(adapter(s), s @ adapter.weight.T + adapter.bias)
    with pytest.raises(ValueError, match="spatial sizes differ"):  # tokens differ: no adapter guesses
        make_adapter(torch.randn(2, 4, 15), t, "'attn.proj'")


def test_fitted_channels_last_adapter_solves_the_least_squares_problem():
    """When the teacher's tokens are an exact linear map of the student's, the ridge fit (tiny ridge)
    recovers it: the adapted features match the teacher's."""
    from compresskit.distillation.features import fit_adapter_, make_adapter

    g = torch.Generator().manual_seed(0)
    s = torch.randn(4, 7, 5, generator=g)
    w, b = torch.randn(6, 5, generator=g), torch.randn(6, generator=g)
    t = s @ w.T + b
    adapter = fit_adapter_(make_adapter(s, t, "'proj'"), s, t, ridge=1e-9)
    assert torch.allclose(adapter(s), t, atol=1e-4)
