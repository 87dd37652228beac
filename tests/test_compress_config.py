"""CompressConfig validation and compress() argument checks: every bad value names its field."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

import compresskit as ck
from compresskit.config import CompressConfig


def test_defaults_are_valid_and_round_trip(tmp_path):
    cfg = CompressConfig(out_dir=tmp_path / "run", n_prox_steps=10, n_orthant_steps=5)
    for suffix in (".json", ".yaml"):
        path = cfg.dump(tmp_path / f"cfg{suffix}")
        assert CompressConfig.load(path) == cfg


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("lambda_", -1e-4, "greater than or equal to 0"),
        ("lr", 0.0, "greater than 0"),
        ("finetune_lr", -1.0, "greater than 0"),
        ("sparsify_steps", -1, "greater than or equal to 0"),
        ("sparsify_steps", 1.5, "valid integer"),
        ("finetune_steps", "many", "valid integer"),
        ("eps", -0.1, "greater than or equal to 0"),
        ("n_prox_steps", -2, "greater than or equal to 0"),
        ("width_rule", "cubic", "'linear' or 'sqrt'"),
        ("coupling", "median", "'max', 'min' or 'mean'"),
        ("init", "random", "'inherit' or 'reinit'"),
        ("l1_on", "biases", "'weights' or 'all'"),
        ("min_width", 0, "greater than or equal to 1"),
        ("divisor", 0, "greater than or equal to 1"),
        ("checkpoint_every", 0, "greater than or equal to 1"),
        ("latency_repeats", 0, "greater than or equal to 1"),
        ("seed", -1, "greater than or equal to 0"),
    ],
)
def test_bad_field_names_the_field(field, value, expected):
    with pytest.raises(ValidationError) as info:
        CompressConfig(**{field: value})
    errors = info.value.errors()
    assert [e["loc"] for e in errors] == [(field,)]
    assert expected in errors[0]["msg"]


def test_unknown_key_and_assignment_are_checked():
    with pytest.raises(ValidationError, match="lamda"):
        CompressConfig(lamda=1e-4)  # a typo is an error, not a silently ignored key
    cfg = CompressConfig()
    with pytest.raises(ValidationError, match="lr"):
        cfg.lr = -1.0


def test_orthant_steps_need_prox_steps():
    with pytest.raises(ValidationError, match="n_orthant_steps is set but n_prox_steps is None"):
        CompressConfig(n_orthant_steps=5)
    assert CompressConfig(n_prox_steps=0, n_orthant_steps=5).n_orthant_steps == 5


def test_compress_rejects_bad_arguments_by_name():
    model = nn.Conv2d(3, 3, 1)
    loader = [(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))]
    with pytest.raises(TypeError, match="model: expected an nn.Module"):
        ck.compress("net", loader)
    with pytest.raises(TypeError, match="train_loader"):
        ck.compress(model, torch.zeros(3))
    with pytest.raises(TypeError, match="config: expected a CompressConfig"):
        ck.compress(model, loader, config=3)
    with pytest.raises(ValidationError, match="width_rule"):
        ck.compress(model, loader, config={"width_rule": "cubic"})
    with pytest.raises(TypeError, match="teacher"):
        ck.compress(model, loader, teacher="big")
    with pytest.raises(ValueError, match="stop_after"):
        ck.compress(model, loader, stop_after="distill")
    with pytest.raises(TypeError, match="metrics"):
        ck.compress(model, loader, metrics=5)
