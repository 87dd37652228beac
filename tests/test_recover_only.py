"""ck.recover: recovery alone on a model made small elsewhere, with the whole budget."""

import torch
from torch import nn

import compresskit as ck


def _data(n: int = 48, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.randn(4, 2, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4, shuffle=False)


def _nets():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    small = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    return teacher, small


def test_step_budget_goes_to_recovery_whole():
    teacher, small = _nets()
    before = {k: v.clone() for k, v in small.state_dict().items()}
    out = ck.recover(small, _data(), teacher, budget="10 steps")
    rec = out.record["recover"]
    # compress would give recovery 6 of 10 steps (STAGE1_SHARE 0.4); here there is no stage I
    assert rec["steps"] == 10
    assert out.record["planned_steps"] == [0, 10]
    assert "holdout" in out.record  # the same held-out split as compress
    for k, v in small.state_dict().items():  # the input model is left unchanged
        assert torch.equal(v, before[k])
    assert any(not torch.equal(v, before[k]) for k, v in out.model.state_dict().items())
    assert sum(p.numel() for p in out.model.parameters()) == sum(p.numel() for p in small.parameters())


def test_recovery_lowers_the_distillation_error():
    teacher, small = _nets()
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        err0 = (small(x) - teacher(x)).abs().mean()
    out = ck.recover(small, _data(), teacher, budget="60 steps")
    with torch.no_grad():
        err1 = (out.model(x) - teacher(x)).abs().mean()
    assert err1 < err0


def test_budget_and_steps_refused():
    teacher, small = _nets()
    import pytest

    with pytest.raises(ValueError, match="recover.steps"):
        ck.recover(small, _data(), teacher, budget="10 steps", config={"recover": {"steps": 5}})
    with pytest.raises(ValueError, match="budget"):
        ck.recover(small, _data(), teacher, budget=None)
