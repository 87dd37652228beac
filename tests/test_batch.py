"""compresskit.training.batch.to_device: every tensor of a nested batch moves; structure and the rest stay."""

from collections import namedtuple

import torch

from compresskit.training.batch import to_device

Pair = namedtuple("Pair", "x y")


def test_every_tensor_of_a_nested_batch_moves_and_the_structure_is_kept():
    batch = [torch.ones(2), (torch.zeros(1), "label", 3), {"a": torch.ones(3), "b": [torch.ones(1)]},
             Pair(torch.ones(1), None)]
    moved = to_device(batch, "meta")
    assert isinstance(moved, list) and isinstance(moved[1], tuple) and isinstance(moved[3], Pair)
    assert moved[0].device.type == moved[1][0].device.type == moved[2]["a"].device.type == "meta"
    assert moved[2]["b"][0].device.type == moved[3].x.device.type == "meta"
    assert moved[1][1:] == ("label", 3) and moved[3].y is None
    assert batch[0].device.type == "cpu"  # the input is not modified
