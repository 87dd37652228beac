"""Bad input stays loud: batches that change shape, traces that disagree with eager execution."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import compresskit as ck
from compresskit.checks import batch_spec, check_batch_consistent, check_trace_matches_eager
from compresskit.config import TrainConfig
from compresskit.training.loop import BatchError, train


def _b(n: int = 4, c: int = 3, h: int = 8, w: int = 8, th: int | None = None) -> tuple[torch.Tensor, ...]:
    return torch.zeros(n, c, h, w), torch.zeros(n, c, h, w), torch.zeros(n, 3, th or h, th or w)


def test_fewer_channels_names_the_batch_and_both_shapes() -> None:
    msg = re.escape("batch 5: element [1] has shape (4, 2, 8, 8), the first batch's has (4, 3, 8, 8) "
                    "(channels differ: 2 vs 3)")
    bad = (torch.zeros(4, 3, 8, 8), torch.zeros(4, 2, 8, 8), torch.zeros(4, 3, 8, 8))
    with pytest.raises(ValueError, match=msg):
        check_batch_consistent(bad, _b(), 5)


def test_other_target_size_is_an_error_even_when_spatial_sizes_may_change() -> None:
    with pytest.raises(ValueError, match=re.escape("element [2] has shape (4, 3, 16, 16), the first batch's "
                                                   "has (4, 3, 8, 8) (dim 2 differs: 16 vs 8)")):
        check_batch_consistent(_b(th=16), _b(), 1)
    # fully convolutional: every tensor at 16x16 is fine, but a target of another size than its inputs is not
    check_batch_consistent(_b(h=16, w=16), _b(), 1, spatial=True)
    check_batch_consistent(_b(h=16, w=24), _b(), 1, spatial=True)  # H and W need not stay equal
    with pytest.raises(ValueError, match=r"batch 2: element \[0\] has shape \(4, 3, 8, 8\) but element \[2\] "
                                         r"has \(4, 3, 16, 16\).*spatial size agreed \(8\)"):
        check_batch_consistent(_b(th=16), _b(), 2, spatial=True)


def test_short_last_batch_is_allowed_but_mismatched_batch_sizes_are_not() -> None:
    check_batch_consistent(_b(n=1), _b(), 9)
    check_batch_consistent(_b(n=1), batch_spec(_b()), 9)  # a kept spec works like the batch
    bad = (torch.zeros(3, 3, 8, 8), torch.zeros(2, 3, 8, 8), torch.zeros(3, 3, 8, 8))
    with pytest.raises(ValueError, match=r"batch 9: .*batch size agreed \(4\)"):
        check_batch_consistent(bad, _b(), 9)


def test_structure_rank_and_dtype() -> None:
    with pytest.raises(ValueError, match=r"batch 3: its structure differs"):
        check_batch_consistent(_b()[:2], _b(), 3)
    with pytest.raises(ValueError, match=r"element \[0\] has shape \(4, 3, 8\) float32, the first batch's "
                                         r"has \(4, 3, 8, 8\) float32 \(rank or dtype differs\)"):
        check_batch_consistent((torch.zeros(4, 3, 8), *_b()[1:]), _b(), 3)
    d = {"x": torch.zeros(2, 3), "y": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"element \['x'\] has shape \(2, 4\)"):
        check_batch_consistent({"x": torch.zeros(2, 4), "y": torch.zeros(2)}, d, "val batch 1")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.conv(a + b)


def _mse(out: torch.Tensor, batch: tuple) -> torch.Tensor:
    return (out - batch[-1]).pow(2).mean()


def test_training_loop_stops_at_the_batch_with_fewer_channels() -> None:
    batches = [_b(), _b(), (torch.zeros(4, 3, 8, 8), torch.zeros(4, 3, 8, 8), torch.zeros(4, 1, 8, 8))]
    cfg = TrainConfig(steps=3, progress=False, device="cpu", scheduler="none")
    # the (4, 1, 8, 8) target would broadcast silently against the (4, 3, 8, 8) output
    with pytest.raises(BatchError, match=re.escape("train_loader batch 2 of epoch 0: element [2] has shape "
                                                   "(4, 1, 8, 8), the first batch's has (4, 3, 8, 8)")):
        train(Net(), batches, _mse, config=cfg)
    train(Net(), [_b(), _b(), _b(n=1)], _mse, config=cfg)  # a short last batch trains
    spatial = TrainConfig(steps=2, progress=False, device="cpu", scheduler="none", batch_shapes="spatial")
    train(Net(), [_b(), _b(h=12, w=12)], _mse, config=spatial)


class Branchy(nn.Module):
    """Takes one of two convolutions depending on the input's values."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            return self.a(x)
        return self.b(x)


def test_data_dependent_branch_is_reported() -> None:
    torch.manual_seed(0)
    model, x = Branchy(), torch.ones(1, 3, 8, 8)
    graph = ck.trace(model, x)
    check_trace_matches_eager(model, graph, (x + 1,))  # the same path: agrees
    with pytest.raises(ValueError, match=r"the traced graph disagrees with eager execution on a second "
                                         r"batch's inputs \(\(1, 3, 8, 8\)\): output differs by up to "
                                         r".*data-dependent control flow.*gt"):
        check_trace_matches_eager(model, graph, (-x,))


def test_traced_graph_matches_eager_on_the_zoo() -> None:
    import zoo

    for name in ("resnet_bottleneck", "two_frame_vfi", "vit_mha"):
        model, inputs = zoo.build(name)
        graph = ck.trace(model, inputs)
        second = tuple(torch.randn_like(t) for t in inputs)
        check_trace_matches_eager(model, graph, second)
        assert model.training or not any(m.training for m in model.modules())  # modes restored


def test_compress_reports_a_data_dependent_branch_before_training() -> None:
    torch.manual_seed(0)
    batches = [(torch.rand(2, 3, 8, 8) + 0.1, torch.zeros(2, 4, 8, 8)),
               (-torch.rand(2, 3, 8, 8) - 0.1, torch.zeros(2, 4, 8, 8))]  # the second takes the other branch

    def mse(out: torch.Tensor, batch: tuple) -> torch.Tensor:
        return (out - batch[-1]).pow(2).mean()

    model = Branchy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="the traced graph disagrees with eager execution on a second batch"):
        ck.compress(model, batches, mse, target="2x params")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_dict_batches_are_checked_too() -> None:
    class DictNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    batches = [{"x": torch.zeros(2, 3, 4, 4), "y": torch.zeros(2, 3, 4, 4)},
               {"x": torch.zeros(2, 3, 4, 4), "y": torch.zeros(2, 1, 4, 4)}]
    cfg = TrainConfig(steps=2, progress=False, device="cpu", scheduler="none")
    with pytest.raises(BatchError, match=re.escape("train_loader batch 1 of epoch 0: element ['y'] has shape "
                                                   "(2, 1, 4, 4), the first batch's has (2, 3, 4, 4)")):
        train(DictNet(), batches, lambda out, b: (out - b["y"]).pow(2).mean(), config=cfg,
              inputs_fn=lambda b: (b["x"],))
