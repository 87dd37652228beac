"""CompressConfig validation and compress() argument checks: every bad value names its field."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

import compresskit as ck
from compresskit.config import CompressConfig


def test_defaults_are_valid_and_round_trip(tmp_path):
    cfg = CompressConfig(out_dir=tmp_path / "run", target="4x params",
                         sparsify={"method": "obproxsg", "n_prox_steps": 10, "n_orthant_steps": 5})
    for suffix in (".json", ".yaml"):
        path = cfg.dump(tmp_path / f"cfg{suffix}")
        assert CompressConfig.load(path) == cfg
    assert cfg.target == ck.Target(metric="params", ratio=4.0)
    assert CompressConfig().target is None  # compress() then uses the default target, 2x macs


def test_each_stage_fingerprint_is_its_sub_config():
    a, b = CompressConfig(), CompressConfig(recover={"lr": 1e-2})
    assert a.sparsify.model_dump() == b.sparsify.model_dump() and a.plan.model_dump() == b.plan.model_dump()
    assert a.recover.model_dump() != b.recover.model_dump()


@pytest.mark.parametrize(
    ("section", "field", "value", "expected"),
    [
        ("sparsify", "lambda_", -1e-4, "greater than or equal to 0"),
        ("sparsify", "lambda_", "strong", "'auto'"),
        ("sparsify", "lr", 0.0, "greater than 0"),
        ("sparsify", "steps", -1, "greater than or equal to 0"),
        ("sparsify", "steps", 1.5, "valid integer"),
        ("sparsify", "eps", -0.1, "greater than or equal to 0"),
        ("sparsify", "n_prox_steps", -2, "greater than or equal to 0"),
        ("sparsify", "l1_on", "biases", "'weights' or 'all'"),
        ("sparsify", "method", "magic", "unknown sparsifier 'magic'; registered: "),
        ("sparsify", "growth", 1.0, "greater than 1"),
        ("plan", "rule", "cubic", "'target', 'linear' or 'sqrt'"),
        ("plan", "coupling", "median", "'max', 'min' or 'mean'"),
        ("plan", "importance", "magic", "unknown importance 'magic'; registered: "),
        ("plan", "min_width", 0, "greater than or equal to 1"),
        ("plan", "round_to", 0, "greater than or equal to 1"),
        ("shrink", "init", "random", "'inherit' or 'reinit'"),
        ("recover", "lr", -1.0, "greater than 0"),
        ("recover", "steps", "many", "valid integer"),
        ("recover", "scheduler", "linear", "'step', 'cosine' or 'none'"),
        ("recover", "teacher", "big", "'original' or 'none'"),
    ],
)
def test_bad_stage_field_names_the_field(section, field, value, expected):
    with pytest.raises(ValidationError) as info:
        CompressConfig(**{section: {field: value}})
    errors = info.value.errors()
    assert errors[0]["loc"][:2] == (section, field)
    assert any(expected in e["msg"] for e in errors), errors


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("checkpoint_every", 0, "greater than or equal to 1"),
        ("latency_repeats", 0, "greater than or equal to 1"),
        ("seed", -1, "greater than or equal to 0"),
        ("target", "3x watts", "unknown metric 'watts'"),
        ("target", "0.5x params", "expected a factor > 1"),
    ],
)
def test_bad_field_names_the_field(field, value, expected):
    with pytest.raises(ValidationError) as info:
        CompressConfig(**{field: value})
    errors = info.value.errors()
    assert errors[0]["loc"][0] == field
    assert expected in errors[0]["msg"]


def test_unknown_key_and_assignment_are_checked():
    with pytest.raises(ValidationError, match="lamda"):
        CompressConfig(sparsify={"lamda": 1e-4})  # a typo is an error, not a silently ignored key
    with pytest.raises(ValidationError, match="sparsify_stepz"):
        CompressConfig(sparsify_stepz=3)
    cfg = CompressConfig()
    with pytest.raises(ValidationError, match="lr"):
        cfg.sparsify.lr = -1.0


def test_flat_keys_of_the_first_version_still_work_with_a_warning():
    with pytest.warns(FutureWarning, match="sparsify_steps → sparsify.steps"):
        cfg = CompressConfig(sparsify_steps=7, lambda_=0.1, finetune_steps=3, width_rule="sqrt",
                             init="reinit")
    assert (cfg.sparsify.steps, cfg.sparsify.lambda_, cfg.recover.steps) == (7, 0.1, 3)
    assert cfg.sparsify.method == "obproxsg"  # a fixed λ means the papers' l1 training
    assert (cfg.plan.rule, cfg.shrink.init) == ("sqrt", "reinit")


def test_orthant_steps_need_prox_steps():
    with pytest.raises(ValidationError, match="n_orthant_steps is set but n_prox_steps is None"):
        CompressConfig(sparsify={"n_orthant_steps": 5})
    assert CompressConfig(sparsify={"n_prox_steps": 0, "n_orthant_steps": 5}).sparsify.n_orthant_steps == 5


def test_compress_rejects_bad_arguments_by_name():
    model = nn.Conv2d(3, 3, 1)
    loader = [(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))]
    with pytest.raises(TypeError, match="model: expected an nn.Module"):
        ck.compress("net", loader)
    with pytest.raises(TypeError, match="train_loader"):
        ck.compress(model, torch.zeros(3))
    with pytest.raises(TypeError, match="config: expected a CompressConfig"):
        ck.compress(model, loader, config=3)
    with pytest.raises(ValidationError, match="rule"):
        ck.compress(model, loader, config={"plan": {"rule": "cubic"}})
    with pytest.raises(TypeError, match="teacher"):
        ck.compress(model, loader, teacher="big")
    with pytest.raises(ValueError, match="stop_after"):
        ck.compress(model, loader, stop_after="distill")
    with pytest.raises(TypeError, match="metrics"):
        ck.compress(model, loader, metrics=5)
    with pytest.raises(TypeError, match="target: expected a string"):
        ck.compress(model, loader, target=4)


def test_a_numeric_lambda_selects_obproxsg_however_it_is_given(tmp_path):
    from compresskit.config import SparsifyConfig

    assert SparsifyConfig().method == "progressive"  # λ "auto" and no method: the default sparsifier
    with pytest.warns(FutureWarning):  # the flat key next to a sub-config (its defaults resolved already)
        legacy = CompressConfig(sparsify=SparsifyConfig(steps=5), lambda_=1e-4)
    assert (legacy.sparsify.method, legacy.sparsify.lambda_, legacy.sparsify.steps) == ("obproxsg", 1e-4, 5)
    cfg = CompressConfig()
    cfg.sparsify.lambda_ = 1e-4  # what the CLI's --set sparsify.lambda_=1e-4 does
    assert cfg.sparsify.method == "obproxsg"
    for given in ({"lambda_": 1e-4}, {}, {"method": "obproxsg"}):
        cfg = CompressConfig(sparsify=given)
        path = cfg.dump(tmp_path / "cfg.json")
        again = CompressConfig.load(path)
        assert again == cfg and again.sparsify.model_dump() == cfg.sparsify.model_dump()
    assert CompressConfig(sparsify={"lambda_": 1e-4}).sparsify.model_dump()["method"] == "obproxsg"


@pytest.mark.parametrize("extra", [{"lambda_": 1e-4}, {"growth": 2.0}, {"n_prox_steps": 3}])
def test_progressive_with_obproxsg_settings_is_an_error(extra):
    with pytest.raises(ValidationError, match=f"method='progressive'.*{next(iter(extra))}"):
        CompressConfig(sparsify={"method": "progressive", **extra})
