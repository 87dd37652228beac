"""Quality recovery (issue 12 point 4): features="auto" pairs by module name, least-squares adapters,
cosine learning rate, early stopping on a held-out split with the best weights restored."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compresskit as ck
from compresskit.distillation.features import auto_feature_pairs, fit_adapter_
from compresskit.training.loop import Callback


class Net(nn.Module):
    """stem (1 conv) · stage1 (2 wrapped convs) · stage2 (3 convs) · head (1 conv)."""

    def __init__(self, w: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.ReLU()),
                                    nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.ReLU()))
        self.stage2 = nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 1), nn.ReLU(),
                                    nn.Conv2d(w, w, 3, padding=1))
        self.head = nn.Conv2d(w, 3, 3, padding=1)

    def forward(self, x):
        return self.head(torch.relu(self.stage2(self.stage1(self.stem(x)))))


def images(n: int = 8, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=g)
    return TensorDataset(x, x.flip(-1))


def test_auto_pairs_are_the_last_layer_of_each_block():
    # by hand: stage1's convs sit in Sequential(conv, act) wrappers, so stage1 is their block -> stage1.1.0;
    # stage2 -> stage2.4; stem.0 and head have no block below the root, whose last layer is head
    assert auto_feature_pairs(Net(), Net(4)) == ["stage1.1.0", "stage2.4", "head"]
    # a block missing (or of another type) in the student is not paired; the rest stay
    student = Net(4)
    student.stage2 = nn.Identity()
    assert auto_feature_pairs(student, Net()) == ["stage1.1.0", "head"]
    assert auto_feature_pairs(nn.Sequential(nn.ReLU()), Net()) == []


def test_auto_pairs_survive_shrink():
    """shrink keeps the teacher's module names, so the pairs of a shrunk student are the teacher's."""
    teacher = Net()
    x = torch.rand(1, 3, 16, 16)
    graph = ck.trace(teacher, (x,))
    keep = {g.id: torch.arange(g.size // 2) for g in graph.groups if g.prunable}
    assert keep, "the test model must have prunable groups"
    small = ck.shrink(teacher, graph, keep=keep)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in teacher.parameters())
    assert auto_feature_pairs(small, teacher) == ["stage1.1.0", "stage2.4", "head"]


def test_fit_adapter_recovers_a_linear_map():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4, 5, 6, 6, generator=g)
    w, b = torch.randn(7, 5, generator=g), torch.randn(7, generator=g)
    t = torch.einsum("oc,bchw->bohw", w, s) + b.view(1, 7, 1, 1)
    adapter = fit_adapter_(nn.Conv2d(5, 7, 1), s, t, ridge=1e-9)
    torch.testing.assert_close(adapter.weight[:, :, 0, 0], w, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(adapter.bias, b, rtol=1e-4, atol=1e-4)


def test_auto_feature_loss_is_zero_when_student_is_teacher():
    teacher = Net()
    cfg = ck.DistillConfig(steps=1, log_every=1, progress=False, features="auto", lr=1e-3)
    r = ck.distill(copy.deepcopy(teacher), teacher, DataLoader(images(), batch_size=4), config=cfg)
    feats = {k: v for k, v in r.history[0].items() if k.startswith("feature:")}
    assert set(feats) == {"feature:stage1.1.0", "feature:stage2.4", "feature:head"}
    assert all(v == 0.0 for v in feats.values()), feats
    assert all(isinstance(a, nn.Identity) for a in r.extras["adapters"].values())
    # a narrower student: 1x1 adapters to the teacher's widths, and a positive feature term
    r = ck.distill(Net(4, seed=1), teacher, DataLoader(images(), batch_size=4), config=cfg)
    a = r.extras["adapters"]["stage2.4"]
    assert isinstance(a, nn.Conv2d) and (a.in_channels, a.out_channels, a.kernel_size) == (4, 8, (1, 1))
    assert isinstance(r.extras["adapters"]["head"], nn.Identity)  # 3 output channels on both sides
    assert r.history[0]["feature:stage2.4"] > 0


def test_auto_features_without_common_names_warns_and_distils_outputs():
    class Other(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return self.body(x)

    cfg = ck.DistillConfig(steps=1, log_every=1, progress=False, features="auto")
    with pytest.warns(UserWarning, match="no feature pairs"):
        r = ck.distill(Other(), Net(), DataLoader(images(), batch_size=4), config=cfg)
    assert not any(k.startswith("feature:") for k in r.history[0]) and r.extras["adapters"] == {}


def test_default_schedule_is_cosine_over_the_steps():
    lrs = []

    class Record(Callback):
        def on_step_end(self, trainer):
            lrs.append(trainer.optimizer.param_groups[0]["lr"])

    ck.distill(Net(4, 1), Net(), DataLoader(images(), batch_size=4), callbacks=[Record()],
               config=ck.DistillConfig(steps=6, lr=1e-2, progress=False))
    want = [0.5 * 1e-2 * (1 + math.cos(math.pi * k / 6)) for k in range(1, 7)]
    assert lrs == pytest.approx(want, abs=1e-12)


def test_early_stopping_stops_at_the_expected_validation_and_restores_the_best():
    curve = iter([5.0, 4.0, 3.0, 3.5, 3.2, 1.0, 0.5, 0.1])  # best at validation 3; 2 worse ones follow
    weights = {}

    class Record(Callback):
        def on_step_end(self, trainer):
            weights[trainer.step] = {k: v.clone() for k, v in trainer.model.student.state_dict().items()}

    val = DataLoader(images(2, seed=1), batch_size=2)  # one batch: one metric call per validation
    cfg = ck.DistillConfig(steps=20, val_every=1, monitor="score", mode="min", early_stop_patience=2,
                           progress=False, scheduler="none", lr=1e-2)
    r = ck.distill(Net(4, 1), Net(), DataLoader(images(), batch_size=4), config=cfg, val_loader=val,
                   metrics={"score": lambda out, batch: next(curve)}, callbacks=[Record()])
    assert r.step == 5 and max(weights) == 5
    assert r.best_step == 3
    for k, v in r.model.state_dict().items():
        assert torch.equal(v, weights[3][k]), k
    assert not torch.equal(weights[3]["head.weight"], weights[5]["head.weight"])  # it did move after


def test_early_stopping_needs_a_val_loader():
    with pytest.raises(ValueError, match="early_stop_patience=3 needs a val_loader"):
        ck.distill(Net(4, 1), Net(), DataLoader(images(), batch_size=4),
                   config=ck.DistillConfig(steps=2, early_stop_patience=3, progress=False))


def test_a_resumed_early_stopped_run_stays_stopped(tmp_path):
    def run():
        curve = iter([3.0, 2.0, 2.5, 2.6, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1] * 2)
        val = DataLoader(images(2, seed=1), batch_size=2)
        cfg = ck.DistillConfig(steps=10, val_every=1, monitor="score", early_stop_patience=2,
                               checkpoint_every=1, progress=False, scheduler="none", lr=1e-2)
        return ck.distill(Net(4, 1), Net(), DataLoader(images(), batch_size=4), config=cfg, val_loader=val,
                          metrics={"score": lambda out, batch: next(curve)}, out_dir=tmp_path)

    first = run()
    assert (first.step, first.best_step) == (4, 2)
    again = run()  # finds the checkpoint of step 4: stopped, best weights restored, no more training
    assert again.step == 4
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_resumed_auto_feature_run_equals_the_uninterrupted_one(tmp_path):
    """The probe that fits the adapters and scales the feature terms reads the first batch of a shuffled
    loader: a resumed process (another global RNG state) must see the same batch, hence the same weights."""
    class Stop(Callback):
        def __init__(self, at):
            self.at = at

        def on_step_end(self, trainer):
            if trainer.step == self.at:
                raise KeyboardInterrupt

    def run(out, global_seed, stop=None):
        student, teacher = Net(4, 1), Net()  # Net() seeds the global RNG itself
        torch.manual_seed(global_seed)  # what the process happens to have: not the config's seed
        cfg = ck.DistillConfig(steps=5, checkpoint_every=1, log_every=1, progress=False, features="auto",
                               scheduler="none", lr=1e-2)
        loader = DataLoader(images(8), batch_size=2, shuffle=True)
        return ck.distill(student, teacher, loader, config=cfg, out_dir=out,
                          callbacks=[Stop(stop)])

    full = run(tmp_path / "a", global_seed=1)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", global_seed=2, stop=3)
    resumed = run(tmp_path / "b", global_seed=3)
    assert resumed.step == full.step == 5
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
