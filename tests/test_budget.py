"""compress(budget=...): parsing, the split between the stages, a time budget met within 10% on a fake
clock, the held-out split (deterministic, never trained on) and the best weights returned."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import compresskit as ck
from compresskit.budget import Budget, parse_budget, split_steps
from compresskit.train.lr_probe import RECOVER_RATIO, STAGE1_RATIO, calibrate_lr
from compresskit.train.validation import BestWeights, held_out_indices, hold_out


# ------------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize("text, amount, unit", [
    ("30min", 1800, "seconds"), ("2h", 7200, "seconds"), ("90s", 90, "seconds"), ("1.5 h", 5400, "seconds"),
    ("45 minutes", 2700, "seconds"), ("2000 steps", 2000, "steps"), ("1 step", 1, "steps"),
    ("3 epochs", 3, "epochs"),
])
def test_parse_budget(text, amount, unit):
    b = parse_budget(text)
    assert (b.amount, b.unit) == (amount, unit)
    assert parse_budget(str(b)) == b  # the printed form reads back


@pytest.mark.parametrize("bad, match", [
    (30, "no unit"), ("30", "could not read"), ("30 parsecs", "unknown unit 'parsecs'"),
    ("0min", "no time"), ("2.5 steps", "whole number"), ("0 epochs", "whole number"), (None, "expected"),
])
def test_parse_budget_errors_name_the_argument(bad, match):
    with pytest.raises((ValueError, TypeError), match=match) as info:
        parse_budget(bad)
    assert str(info.value).startswith("budget:")


def test_a_bad_budget_in_the_config_fails_when_the_config_is_made():
    with pytest.raises(ValueError, match="budget: unknown unit 'parsecs'"):
        ck.CompressConfig(budget="30 parsecs")
    assert ck.CompressConfig(budget="30min").budget == "30min"


def test_split_steps_gives_stage_one_its_share():
    assert split_steps(1000) == (400, 600)  # STAGE1_SHARE = 0.4
    assert split_steps(2) == (1, 1)
    assert split_steps(5) == (2, 3)
    with pytest.raises(ValueError, match="at least 2"):
        split_steps(1)


def test_budget_and_config_steps_together_are_refused():
    net, loader = _Net(), _loader(16)
    with pytest.raises(ValueError, match="budget: '2000 steps' decides the steps, but sparsify.steps"):
        ck.compress(net, loader, budget="2000 steps", config={"sparsify": {"steps": 10}, "progress": False})


# ------------------------------------------------------------------------------------------ helpers
class FakeClock:
    """Seconds that pass only when a model computes: ``cost`` per parameter per sample of a forward."""

    def __init__(self, cost: float = 2e-6):
        self.t = 1000.0
        self.cost = cost

    def __call__(self) -> float:
        return self.t

    def __deepcopy__(self, memo):  # copies of a model (the probes', the stages') share the one clock
        return self


CLOCK = FakeClock()


class _Net(nn.Module):
    def __init__(self, width: int = 16, clock: FakeClock | None = None):
        super().__init__()
        self.c1 = nn.Conv2d(3, width, 3, padding=1)
        self.c2 = nn.Conv2d(width, width, 3, padding=1)
        self.c3 = nn.Conv2d(width, 3, 3, padding=1)
        self.clock = [clock]  # a list: not a submodule, not in the state dict

    def forward(self, x):
        clock = self.clock[0]
        n = x.shape[0] if isinstance(x, torch.Tensor) else None
        if clock is not None and type(n) is int:  # fx and export trace with symbols: no cost
            clock.t += clock.cost * sum(p.numel() for p in self.parameters()) * n
        return x + self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))


def _data(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g)
    return x, x.roll(1, -1) * 0.5 + 0.25


def _loader(n: int, batch: int = 4, shuffle: bool = True):
    x, y = _data(n)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch,
                                       shuffle=shuffle, generator=torch.Generator().manual_seed(0))


def _pretrained(clock: FakeClock | None = None) -> _Net:
    torch.manual_seed(0)
    net = _Net(clock=None)
    x, y = _data(64)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(150):
        loss = nn.functional.l1_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.clock[0] = clock
    return net.eval()


# ------------------------------------------------------------------------------------------ time budget
def test_a_time_budget_is_met_within_ten_percent_on_a_fake_clock(tmp_path, monkeypatch):
    """Time passes only in forward passes (cost ∝ parameters × samples): the library must measure the
    step times itself, split the budget and finish within ±10% of it (early stopping, which gives time
    back, is switched off here)."""
    monkeypatch.setattr("compresskit.autorecipe.PATIENCE", 10**6)
    clock = FakeClock(cost=4e-5)  # 0.51 s per forward of the full net on a batch of 4
    net = _pretrained(clock)
    budget = Budget(600.0, "seconds", clock)
    start = clock.t
    result = ck.compress(net, _loader(64), target="2x params", budget=budget,
                         config={"progress": False, "measure_latency": False, "out_dir": tmp_path})
    spent = clock.t - start
    assert 0.9 * 600 <= spent <= 1.1 * 600, spent
    rec = result.report.budget
    assert rec["budget"] == "10min" and rec["unit"] == "seconds"
    assert 0 <= spent - rec["spent_s"] < 0.01 * 600  # the report is written after it is measured
    assert sum(rec["seconds"].values()) == pytest.approx(rec["spent_s"])  # the stages add up to the whole
    assert set(rec["seconds"]) == {"trace", "sparsify", "plan+shrink", "recover", "report"}
    assert rec["sparsify"]["steps_done"] >= 1 and rec["recover"]["steps_done"] >= 1
    assert (tmp_path / "validation.png").read_bytes()[:4] == b"\x89PNG"


def test_a_time_budget_is_not_overrun_when_a_stage_stops_early():
    clock = FakeClock(cost=4e-5)
    start = clock.t
    result = ck.compress(_pretrained(clock), _loader(64), target="2x params",
                         budget=Budget(300.0, "seconds", clock),
                         config={"progress": False, "measure_latency": False})
    assert clock.t - start <= 1.1 * 300
    rec = result.report.budget["recover"]
    if rec["steps_done"] < rec["steps"]:  # stopped early or shortened: said so in the report
        why = (rec["best"]["stopped_early_at"], rec.get("pace", {}).get("shortened_to"))
        assert rec["steps_done"] in why, (rec["steps_done"], why)


def test_a_step_budget_is_split_between_the_stages():
    net = _pretrained()
    result = ck.compress(net, _loader(64), target="2x params", budget="50 steps",
                         config={"progress": False, "measure_latency": False})
    rec = result.report.budget
    assert rec["planned_steps"] == [20, 30]
    assert rec["sparsify"]["steps"] == 20
    # recovery gets its 30 and whatever stage I left unused
    assert rec["recover"]["steps"] == 30 + (20 - rec["sparsify"]["steps_done"])
    for stage, ratio in (("sparsify", STAGE1_RATIO), ("recover", RECOVER_RATIO)):
        probe = rec[stage]["lr_probe"]  # the learning rate is calibrated, and the report says how
        assert probe["lr"] == rec[stage]["lr"] and probe["target_ratio"] == ratio
        assert probe["lr"] == pytest.approx(probe["trial_lr"] * ratio / probe["measured_ratio"])


def test_an_epoch_budget_counts_the_batches_left_after_the_held_out_part():
    # 64 samples, 7 held out (⌈0.1·64⌉), 57 left in batches of 4: 15 batches an epoch, 3 epochs = 45 steps
    result = ck.compress(_pretrained(), _loader(64), target="2x params",
                         config={"budget": "3 epochs", "progress": False, "measure_latency": False})
    assert result.report.budget["budget"] == "3 epochs"
    assert len(result.report.budget["holdout_indices"]) == 7
    assert result.report.budget["planned_steps"] == [18, 27]


# ------------------------------------------------------------------------------------------ learning rates
class _Vector(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([w], dtype=torch.float64))  # one 2-d tensor


@pytest.mark.parametrize("optimizer, expected", [
    # SGD: Δw = −lr·g with g = (1, 0), so ρ = lr·‖g‖/‖w‖ = lr/5 and ρ = 1e-3 needs lr = 5e-3
    (lambda ps, lr: torch.optim.SGD(ps, lr=lr), 5e-3),
    # Adamax: its first step moves every entry by exactly lr (sign of the gradient; both entries have a
    # gradient here), so ρ = lr·√2/5 and ρ = 1e-3 needs lr = 5e-3/√2
    (None, 5e-3 / math.sqrt(2)),
])
def test_calibrate_lr_meets_the_update_to_weight_ratio_by_hand(optimizer, expected):
    model = _Vector([3.0, 4.0])
    grad = torch.tensor([[1.0, 0.5]], dtype=torch.float64) if optimizer is None else torch.tensor(
        [[1.0, 0.0]], dtype=torch.float64)
    cal = calibrate_lr(model, [None], lambda m, _: (m.weight * grad).sum(), target_ratio=1e-3,
                       trial_lr=0.02, steps=1, optimizer=optimizer)
    assert cal.lr == pytest.approx(expected, rel=1e-6)
    assert model.weight.tolist() == [[3.0, 4.0]]  # the model itself is untouched


def test_pace_shortens_a_slow_stage_and_re_aims_its_cosine():
    """A loop that runs at 1 s per step (the fake clock ticks in a callback) was planned for 100 steps
    but given 50 s: after check_at = 5 steps it knows that 5 + ⌊45 s / 1 s⌋ = 50 steps fit, stops there,
    and its cosine reaches zero there."""
    from compresskit.budget import BudgetTracker, Pace
    from compresskit.train.loop import Callback
    from compresskit.train.loop import train as run

    clock = FakeClock()

    class Tick(Callback):
        def on_step_end(self, trainer):
            clock.t += 1.0

    tracker = BudgetTracker(Budget(1000.0, "seconds", clock))
    pace = Pace(tracker, clock.t + 50.0, 100)
    best = BestWeights("val_loss", after_step=80, validate_at_start=False)
    lrs = []

    class Lr(Callback):
        def on_step_end(self, trainer):
            lrs.append(trainer.optimizer.param_groups[0]["lr"])

    train = [(torch.ones(4), torch.full((4,), 2.0))] * 4
    result = run(_Scalar(), train, lambda out, b: nn.functional.l1_loss(out, b[-1]),
                 config=ck.TrainConfig(steps=100, lr=0.1, scheduler="cosine", scheduler_interval="step",
                                       progress=False, val_every=10),
                 val_loader=[(torch.ones(4), torch.ones(4))], callbacks=[Tick(), pace, best, Lr()])
    assert result.step == 50 and pace.stopped_at == 50
    assert pace.record == {"check_step": 5, "seconds_per_step": 1.0, "fits": 50, "shortened_to": 50}
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)  # the cosine ends with the stage
    assert best.after_step == 40  # 80 of 100 steps → 40 of 50


# ------------------------------------------------------------------------------------------ held-out data
def test_held_out_indices_are_evenly_spaced_by_hand():
    assert held_out_indices(40, 0.1, minimum=4) == [5, 15, 25, 35]  # ⌊(i + ½)·40/4⌋
    assert held_out_indices(10, 0.2) == [2, 7]
    assert held_out_indices(1, 0.5) == []


class _Ids(torch.utils.data.Dataset):
    """Sample i: (image, i, target)."""

    def __init__(self, n: int):
        self.x, self.y = _data(n)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], i, self.y[i]


def test_the_held_out_split_is_deterministic_and_never_trained_on():
    seen: list[set[int]] = []

    def loss(output, batch):
        if torch.is_grad_enabled():  # a training step (validation and the probes' scoring run without grad)
            seen[-1].update(int(i) for i in batch[1])
        return nn.functional.l1_loss(output, batch[-1])

    loader = torch.utils.data.DataLoader(_Ids(40), batch_size=4, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    reports = []
    for _ in range(2):
        seen.append(set())
        result = ck.compress(_pretrained(), loader, loss, target="2x params", budget="30 steps",
                             inputs_fn=lambda b: (b[0],),
                             config={"progress": False, "measure_latency": False})
        reports.append(result.report.budget)
        assert seen[-1] and not seen[-1] & {5, 15, 25, 35}, sorted(seen[-1])
        assert seen[-1] <= set(range(40)) - {5, 15, 25, 35}
    assert reports[0]["holdout"] == reports[1]["holdout"] == (
        "4 of 40 training samples held out for validation (evenly spaced, never trained on)")
    assert reports[0]["holdout_indices"] == [5, 15, 25, 35]
    h = hold_out(loader, 0.1)
    assert h.indices == [5, 15, 25, 35]
    assert [int(i) for b in h.val_batches for i in b[1]] == [5, 15, 25, 35]


def test_a_list_of_batches_holds_out_whole_batches():
    batches = [(torch.full((2, 1), float(i)), torch.zeros(2, 1)) for i in range(10)]
    h = hold_out(batches, 0.2)
    assert h.indices == [2, 7] and h.of == "batches"
    assert [float(b[0][0, 0]) for b in h.val_batches] == [2.0, 7.0]
    assert [float(b[0][0, 0]) for b in h.train_loader] == [0, 1, 3, 4, 5, 6, 8, 9]


def test_loaders_that_cannot_be_split_are_left_alone():
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter([torch.zeros(1)] * 8)

    assert hold_out(torch.utils.data.DataLoader(Stream(), batch_size=2), 0.1) is None
    assert hold_out([(torch.zeros(1), torch.zeros(1))], 0.1) is None  # one batch: nothing to spare


# ------------------------------------------------------------------------------------------ best weights
class _Scalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.w * x


def test_best_weights_are_returned_when_the_last_step_is_worse():
    """Training pulls w towards 2, the held-out data wants 1: w passes 1 on its way, so the held-out loss
    |w − 1| falls, then rises. The weights returned must be those of the best validation, found here by
    hand from the weights recorded after every step."""
    train = [(torch.ones(4), torch.full((4,), 2.0))] * 4
    val = [(torch.ones(4), torch.ones(4))]
    trace: dict[int, float] = {}

    from compresskit.train.loop import Callback
    from compresskit.train.loop import train as run

    class Weights(Callback):
        def on_train_start(self, trainer):
            trace[trainer.step] = float(trainer.model.w.detach())

        def on_step_end(self, trainer):
            trace[trainer.step] = float(trainer.model.w.detach())

    best = BestWeights("val_loss")
    model = _Scalar()
    result = run(model, train, lambda out, b: nn.functional.l1_loss(out, b[-1]),
                 config=ck.TrainConfig(steps=30, lr=0.1, val_every=2, scheduler="none", progress=False),
                 val_loader=val, callbacks=[Weights(), best])
    validated = [0, *range(2, 31, 2)]
    by_hand = min(validated, key=lambda s: (abs(trace[s] - 1.0), s))
    assert abs(trace[30] - 1.0) > abs(trace[by_hand] - 1.0) + 0.1  # the last step is worse
    assert best.best_step == by_hand
    assert float(result.model.w.detach()) == pytest.approx(trace[by_hand])
    assert best.summary(30)["returned"] == "best"


def test_best_weights_stop_after_patience_and_ignore_the_ramp():
    train = [(torch.ones(4), torch.full((4,), 2.0))] * 4
    val = [(torch.ones(4), torch.ones(4))]
    from compresskit.train.loop import train as run

    best = BestWeights("val_loss", patience=2, after_step=4, validate_at_start=False)
    run(_Scalar(), train, lambda out, b: nn.functional.l1_loss(out, b[-1]),
        config=ck.TrainConfig(steps=40, lr=0.1, val_every=2, scheduler="none", progress=False),
        val_loader=val, callbacks=[best])
    assert best.best_step is not None and best.best_step >= 4  # step 2 (before after_step) never kept
    # w passes 1 near step 10; two worse validations later it stops, well before step 40
    assert best.stopped_at == best.best_step + 4
    assert math.isfinite(best.best)


def test_compress_returns_the_best_weights_when_recovery_gets_worse():
    """Recovery at a learning rate far too large for the network (given by hand) makes the held-out loss
    worse than where it started: compress must return the best validated weights, not the last."""
    result = ck.compress(_pretrained(), _loader(40), target="2x params", budget="60 steps",
                         config={"progress": False, "measure_latency": False, "recover": {"lr": 0.05}})
    budget = result.report.budget
    rec = budget["recover"]["best"]
    assert budget["recover"]["lr"] == 0.05 and budget["holdout_indices"] == [5, 15, 25, 35]  # by hand
    history = {h["step"]: h["task_loss"] for h in rec["history"]}
    last = max(history)
    assert history[last] > min(history.values())  # the last validation is worse than an earlier one
    assert rec["best_step"] == min(history, key=lambda s: (history[s], s)) < last
    # the model returned is the best one: its held-out loss, computed here, is the best recorded
    x, y = _data(40)
    idx = [5, 15, 25, 35]
    with torch.no_grad():
        mine = float(nn.functional.l1_loss(result.model.eval()(x[idx]), y[idx]))
    assert mine == pytest.approx(rec["best"], rel=1e-5)
    assert mine < history[last]


# ------------------------------------------------------------------------------------------ defaults
class _WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1))
        self.extra = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 3, 1))  # forward never runs it

    def forward(self, x):
        return self.body(x)


def test_auto_features_skip_modules_forward_never_runs_and_explicit_pairs_say_so():
    import copy

    teacher = _WithUnused().eval()
    batches = [(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)) for _ in range(2)]
    with pytest.warns(UserWarning, match=r"'extra.1' never run in forward\(\)"):
        result = ck.distill(copy.deepcopy(teacher), teacher, batches,
                            config=ck.DistillConfig(steps=2, features="auto", progress=False))
    assert sorted(result.extras["adapters"]) == ["body.2"]  # the pair forward runs, not the unused one
    pair = ck.config.FeaturePair(student="extra.1", teacher="extra.1")
    with pytest.raises(ValueError, match="forward\\(\\) never runs 'extra.1'"):
        ck.distill(copy.deepcopy(teacher), teacher, batches,
                   config=ck.DistillConfig(steps=2, features=[pair], progress=False))


def test_stop_margin_stops_only_on_clearly_worse_validations():
    """Hand-made sequences: the best is 1.0; with a 1 % margin, 1.005 is noise and ends the streak,
    1.02 counts; patience 2 stops at the second clearly worse validation in a row."""

    class _T:
        step, should_stop, model = 0, False, nn.Linear(1, 1)

    def feed(best, values):
        t = _T()
        for i, v in enumerate(values):
            t.step = i
            best.on_validation_end(t, {"val_loss": v})
        return best.stopped_at

    assert feed(BestWeights(patience=2, stop_margin=0.01), [1.0, 1.02, 1.005, 1.02, 1.005, 1.03]) is None
    assert feed(BestWeights(patience=2, stop_margin=0.01), [1.0, 1.02, 1.005, 1.02, 1.03]) == 4
    assert feed(BestWeights(patience=2), [1.0, 1.005, 1.005]) == 2  # no margin: "not better" counts
    with pytest.raises(ValueError, match="stop_margin"):
        BestWeights(stop_margin=-0.1)
