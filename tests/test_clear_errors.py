"""Raw torch messages that named nothing become errors naming the argument, what was expected and the fix."""

from __future__ import annotations

import errno
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import compresskit as ck
import compresskit.models
from compresskit.cli import main
from compresskit.io import atomic_torch_save, atomic_write

_CFG = dict(sparsify={"steps": 0}, recover={"steps": 0}, measure_latency=False, progress=False)


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))


_DATA = [(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8))]


def test_a_model_or_teacher_on_the_meta_device() -> None:
    with pytest.raises(ValueError, match=r"model: 4 weights are on the meta device.*to_empty"):
        ck.compress(_net().to("meta"), _DATA, config=_CFG)  # was: Cannot copy out of meta tensor
    with pytest.raises(ValueError, match=r"teacher: .*meta device"):
        ck.compress(_net(), _DATA, config=_CFG, teacher=_net().to("meta"))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_integer_inputs_into_a_float_model(dtype: torch.dtype) -> None:
    data = [(torch.randint(0, 255, (2, 3, 8, 8)).to(dtype), torch.rand(2, 3, 8, 8))]
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(ValueError, match=rf"example_inputs: .*Input 0 is {name} but the model computes in "
                                         r"float32.*inputs_fn="):
        ck.compress(_net(), data, config=_CFG)  # was: Input type (unsigned char) and bias type (float) ...


def test_the_old_weight_norm() -> None:
    model = _net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates it
        model[0] = torch.nn.utils.weight_norm(model[0])
    with pytest.raises(ValueError, match=r"model: module '0' uses the old torch.nn.utils.weight_norm.*"
                                         r"parametrizations.weight_norm"):
        ck.compress(model, _DATA, config=_CFG)  # was: Only Tensors created explicitly by the user ...


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"a": torch.zeros(3)}, path)

    def torch_zip_writer_on_a_full_disk(f):  # noqa: ANN001, ANN202
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    def os_full(f):  # noqa: ANN001, ANN202
        with open("/dev/full", "wb") as full:  # the kernel's always-full device
            torch.save({"a": torch.zeros(1000)}, full)

    for write in (torch_zip_writer_on_a_full_disk, os_full):
        with pytest.raises(OSError, match=r"no space left on the device while writing .*ckpt\.pt.*intact") \
                as e:
            atomic_write(path, write)
        assert e.value.errno == errno.ENOSPC
        assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(3))
        assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left


def test_empty_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"load: .*empty\.pt' is empty \(0 bytes\)"):
        ck.load(empty)
    with pytest.raises(ValueError, match=r"checkpoint .*empty\.pt' is empty \(0 bytes\)"):
        compresskit.models.load_state_dict_strict(_net(), empty)


def test_save_to_a_folder_and_an_out_dir_that_is_a_file(tmp_path: Path) -> None:
    result = ck.compress(_net(), _DATA, config=_CFG)
    (tmp_path / "d.pt").mkdir()
    with pytest.raises(IsADirectoryError, match=r"d\.pt' is a folder; expected the path of a file"):
        result.save(tmp_path / "d.pt")  # was: Is a directory: '.d.pt.x1y2z3.tmp' -> 'd.pt'
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match=r"config.out_dir: .*/f' is a file; expected a folder"):
        ck.compress(_net(), _DATA, config={**_CFG, "out_dir": str(tmp_path / "f")})


def test_loading_a_plain_state_dict_says_how(tmp_path: Path) -> None:
    torch.save(_net().state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ValueError, match=r"plain state_dict.*load_state_dict"):
        ck.load(tmp_path / "sd.pt")


def test_the_list_models_command_the_vfi_plugin_points_to_exists(capsys) -> None:
    with compresskit.models.MODELS.snapshot():
        ck.register_model("test_listed_net", description="a listed net")(_net)
        assert main(["list-models", "test_listed*"]) == 0
    out = capsys.readouterr().out
    assert "test_listed_net" in out and "a listed net" in out
    assert main(["list-models", "no_such_model_*"]) == 0
    assert "no registered models match" in capsys.readouterr().out
