"""The model registry: register_model / create_model / list_models and strict checkpoint loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import compresskit as ck
from compresskit import models as model_registry


class TinyNet(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, 2)


@pytest.fixture()
def clean_registry():
    """Registrations made by the test are undone afterwards, so test models never leak into other tests."""
    with model_registry.MODELS.snapshot() as models:
        ck.register_model("test_tiny", task="toy", description="a tiny net")(TinyNet)
        yield models


def trained_state(width: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = TinyNet(width)
    net.bn.running_mean.normal_()  # buffers are part of the checkpoint too
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_register_list_and_create(clean_registry):
    assert "test_tiny" in ck.list_models()
    assert ck.list_models("test_t*") == ["test_tiny"]
    assert ck.list_models("nothing_like_this*") == []
    model = ck.create_model("test_tiny", width=6)
    assert isinstance(model, TinyNet) and model.conv.out_channels == 6
    assert model_registry.registered_name(model) == ("test_tiny", {"width": 6})
    info = ck.model_info("test_tiny")
    assert info.task == "toy" and info.description == "a tiny net"


def test_duplicate_name_is_refused_unless_replace(clean_registry):
    def other() -> nn.Module:
        return nn.Linear(1, 1)

    with pytest.raises(ValueError, match="already registered"):
        ck.register_model("test_tiny")(other)
    ck.register_model("test_tiny", replace=True)(other)
    assert isinstance(ck.create_model("test_tiny"), nn.Linear)
    ck.register_model("test_tiny")(other)  # the same factory again: no error


def test_overwrite_is_a_deprecated_alias_of_replace(clean_registry):
    with pytest.warns(DeprecationWarning, match="replace"):
        ck.register_model("test_tiny", overwrite=True)(lambda: nn.Linear(1, 1))
    assert isinstance(ck.create_model("test_tiny"), nn.Linear)


def test_unknown_model_lists_the_registered_ones(clean_registry):
    with pytest.raises(KeyError, match="test_tiny"):
        ck.create_model("no_such_model")


def test_factory_must_return_a_module(clean_registry):
    ck.register_model("test_not_a_module")(lambda: 42)
    with pytest.raises(TypeError, match="expected an nn.Module"):
        ck.create_model("test_not_a_module")


@pytest.mark.parametrize("wrapped", [False, True])
def test_checkpoint_files_load_strictly(clean_registry, tmp_path, wrapped):
    state = trained_state()
    path = tmp_path / "ckpt.pth"
    # official AdaCoF/CDFI files are {"state_dict": ..., "epoch": n}; others store the bare state_dict
    torch.save({"state_dict": state, "epoch": 7} if wrapped else state, path)
    model = ck.create_model("test_tiny", checkpoint=path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    model2 = ck.create_model("test_tiny", checkpoint=str(path))  # str paths too
    assert torch.equal(model2.conv.weight, state["conv.weight"])


def test_checkpoint_mapping_in_memory(clean_registry):
    state = trained_state(seed=1)
    model = ck.create_model("test_tiny", checkpoint={"state_dict": state})
    assert torch.equal(model.head.bias, state["head.bias"])


def test_mismatch_lists_every_difference_and_leaves_the_model_alone(clean_registry):
    state = trained_state(width=4)
    del state["head.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["conv.weight"] = torch.zeros(5, 3, 3, 3)
    model = ck.create_model("test_tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(model_registry.CheckpointMismatchError) as err:
        ck.load_state_dict_strict(model, state)
    message = str(err.value)
    assert "missing from checkpoint (1)" in message and "head.bias" in message
    assert "unexpected in checkpoint (1)" in message and "extra.weight" in message
    assert "shape mismatches (1)" in message
    assert "conv.weight: checkpoint (5, 3, 3, 3) vs model (4, 3, 3, 3)" in message
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed although loading failed"


def test_long_difference_lists_are_cut(clean_registry):
    model = nn.Sequential(*[nn.Linear(1, 1) for _ in range(30)])
    cut = r"missing from checkpoint \(60\)[\s\S]*and 40 more"
    with pytest.raises(model_registry.CheckpointMismatchError, match=cut):
        ck.load_state_dict_strict(model, {})


def test_missing_or_unreadable_files_are_named(clean_registry, tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        ck.create_model("test_tiny", checkpoint=missing)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a torch file")
    with pytest.raises(ValueError, match="garbage.pth.*could not be read"):
        ck.create_model("test_tiny", checkpoint=garbage)
    not_a_state = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_state)
    with pytest.raises(ValueError, match="expected a state_dict"):
        ck.create_model("test_tiny", checkpoint=not_a_state)


# ------------------------------------------------------------------------------- one Registry for all
def _model() -> nn.Module:
    return nn.Linear(1, 1)


def _loss(pred, target):
    return (pred - target).abs().mean()


class _Layer(nn.Module):
    pass


def _rule(ctx):
    return ctx.untracked()


@pytest.mark.parametrize("table", ["model", "loss", "channel rule", "resizer"])
def test_every_registry_refuses_a_duplicate_the_same_way(table, isolated_registries):
    """models, losses, channel rules and resizers: the same error type and wording, the same replace=."""
    from compresskit._registry import AlreadyRegisteredError

    def register(obj, **kw):
        if table == "model":
            return ck.register_model("test_dup", **kw)(obj)
        if table == "loss":
            return ck.register_loss("test_dup", **kw)(obj)
        if table == "channel rule":
            return ck.register_rule(_Layer, obj, **kw)
        return ck.register_resizer(_Layer, obj, **kw)

    first, second = (_model, lambda: nn.Linear(2, 2)) if table == "model" else (_rule, lambda *a: None)
    register(first)
    register(first)  # the same object again is a no-op
    with pytest.raises(AlreadyRegisteredError) as caught:
        register(second)
    assert isinstance(caught.value, ValueError)
    key = "'test_dup'" if table in ("model", "loss") else "_Layer"
    assert str(caught.value) == (f"{table} {key} is already registered "
                                 f"({__name__}.{first.__qualname__}); pass replace=True to replace it")
    register(second, replace=True)


def test_registry_get_names_snapshot_and_class_lookup():
    from compresskit._registry import Registry

    reg: Registry[int] = Registry("thing", plugins=False)
    reg.register("b", 2)
    reg.register("a", 1)
    assert reg.names() == ["a", "b"] and reg.get("a") == 1 and "a" in reg and "z" not in reg
    with pytest.raises(KeyError, match="unknown thing 'z'; registered: 'a', 'b'"):
        reg.get("z")
    with reg.snapshot():
        reg.register("c", 3)
        reg.register("a", 10, replace=True)
        reg.unregister("b")
        assert reg.names() == ["a", "c"]
    assert reg.names() == ["a", "b"] and reg.get("a") == 1  # restored, including the replaced value
    with pytest.raises(TypeError, match="hashable"):
        reg.register(["unhashable"], 0)

    classes: Registry[str] = Registry("handler", plugins=False)
    classes.register(nn.Module, "any module")
    classes.register(nn.modules.conv._ConvNd, "conv")
    assert classes.find_type(nn.Conv2d) == "conv"  # nearest base class wins
    assert classes.find_type(nn.Linear) == "any module"
    assert classes.find_type(int) is None
