"""The recipe machinery shared by the CDFI and ST-MFNet Mini reproductions (compresskit_vfi.recipe)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from compresskit_vfi import recipe as common
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset

from compresskit.config import Config


def _quiet() -> Console:
    return Console(quiet=True)


class _StageCfg(Config):
    out_dir: Path
    smoke: bool = False
    smoke_steps: int = 4
    smoke_size: int = 64
    seed: int = 0
    lr: float = 1e-3
    weights: Path | None = None


class _Stage(common.RecipeStage):
    name = "one"
    fields = (*common.COMMON_FIELDS, "lr")
    files = ("weights",)


def test_recipe_stage_fingerprint_reads_its_fields_files_and_upstream(tmp_path):
    """The fingerprint holds the declared settings, the digest of the files named by the config and the
    upstream fingerprints: a change to any of them changes it; an undeclared setting does not."""
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"abc")
    cfg = _StageCfg(out_dir=tmp_path, weights=weights)
    stage = _Stage()
    stage.upstream = ("zero",)
    state = SimpleNamespace(cfg=cfg, fingerprints={"zero": {"x": 1}})
    fp = stage.fingerprint(state)
    assert stage.artifact == "one.pt"
    assert fp["settings"] == {"smoke": False, "seed": 0, "lr": 1e-3}  # smoke_* only count in smoke mode
    assert fp["files"] == {"weights": "a9993e364706816aba3e25717850c26c9cd0d89d"}  # SHA-1("abc")
    assert fp["upstream"] == {"zero": {"x": 1}}
    assert stage.fingerprint(SimpleNamespace(cfg=cfg.model_copy(update={"out_dir": tmp_path / "b"}),
                                             fingerprints={"zero": {"x": 1}})) == fp
    assert stage.fingerprint(SimpleNamespace(cfg=cfg.model_copy(update={"lr": 2e-3}),
                                             fingerprints={"zero": {"x": 1}})) != fp
    assert stage.fingerprint(SimpleNamespace(cfg=cfg, fingerprints={"zero": {"x": 2}})) != fp
    assert stage.fingerprint(SimpleNamespace(cfg=cfg.model_copy(update={"smoke_steps": 9}),
                                             fingerprints={"zero": {"x": 1}})) == fp
    smoke = SimpleNamespace(cfg=cfg.model_copy(update={"smoke": True}), fingerprints={"zero": {"x": 1}})
    assert stage.fingerprint(smoke)["settings"] == {"smoke": True, "smoke_steps": 4, "smoke_size": 64,
                                                    "seed": 0, "lr": 1e-3}
    weights.write_bytes(b"abd")
    assert stage.fingerprint(state) != fp


def test_resolve_device():
    assert common.resolve_device("cpu") == "cpu"
    assert common.resolve_device("cuda:1") == "cuda:1"
    assert common.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_loader_keeps_the_last_partial_batch_as_published():
    cfg = SimpleNamespace(num_workers=0, seed=0)
    five = TensorDataset(torch.arange(5.0))
    assert [len(b[0]) for b in common.recipe_loader(five, 2, cfg)] == [2, 2, 1]
    one = TensorDataset(torch.arange(1.0))
    assert [len(b[0]) for b in common.recipe_loader(one, 2, cfg)] == [1]
    # seeded: the same order every time
    order = [b[0].tolist() for b in common.recipe_loader(five, 1, cfg)]
    assert order == [b[0].tolist() for b in common.recipe_loader(five, 1, cfg)]
    assert sorted(order) == [[0.0], [1.0], [2.0], [3.0], [4.0]]


def test_train_settings_and_schedule():
    cfg = SimpleNamespace(smoke=True, smoke_steps=5, device="cpu", seed=3, progress=False, step_size=20,
                          gamma=0.5)
    assert common.train_settings(cfg, 100, 1e-3, scheduler="none") == dict(
        steps=5, lr=1e-3, device="cpu", seed=3, progress=False, log_every=1, scheduler="none")
    assert common.obproxsg_schedule(cfg, 2, 10) == {"n_prox_steps": 2, "n_orthant_steps": None}
    cfg.smoke = False
    assert common.train_settings(cfg, 100, 1e-3) == dict(epochs=100, lr=1e-3, step_size=20, gamma=0.5,
                                                         device="cpu", seed=3, progress=False)
    # Np = 2 epochs of 10 steps: 20 Prox-SG steps, then orthant steps for ever
    assert common.obproxsg_schedule(cfg, 2, 10) == {"n_prox_steps": 20, "n_orthant_steps": None}


def test_count_params():
    assert common.count_params(nn.Linear(3, 2)) == 3 * 2 + 2


def test_paper_table_layout():
    results = {"scores": {"ours": {"a": {"psnr": 30.123456, "ssim": 0.9}, "extra": {"psnr": 20.0}}},
               "models": {"ours": {"params": 1234}}}
    published = {"paper": {"a": (31.0, None), "b": (29.5, math.nan)}}
    text = common.paper_table(results, published, {"paper": 5_000_000}, ("a", "b"),
                              (("psnr", 2), ("ssim", 3)))
    assert text == (
        "| model | params | a PSNR / SSIM | b PSNR / SSIM | extra PSNR / SSIM |\n"
        "|---|---|---|---|---|\n"
        "| paper (published) | 5,000,000 | 31.00 / - | 29.50 / - | - |\n"
        "| ours (ours) | 1,234 | 30.12 / 0.900 | - | 20.00 / - |\n")


class _Cfg(Config):
    out_dir: Path
    smoke: bool = False
    smoke_steps: int = 4
    name: str = "x"
    progress: bool = True


def _args(tmp_path, **kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    common.add_run_arguments(p, tmp_path / "default", "_Cfg")
    common.add_stop_arguments(p, ("one", "two"))
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(kw.get("argv", []))


def test_run_from_args_merges_config_file_and_flags(tmp_path):
    _Cfg(out_dir=tmp_path / "from_file", smoke=True, name="file").dump(tmp_path / "c.json")
    seen = []
    args = _args(tmp_path, argv=["--config", str(tmp_path / "c.json"), "--smoke-steps", "2", "--quiet"])
    assert args.stop_after == "two" and args.out == tmp_path / "default"
    rc = common.run_from_args(args, _Cfg, {"name": None}, lambda cfg, console, stop_after:
                              seen.append((cfg, stop_after)), _quiet())
    assert rc == 0
    cfg, stop = seen[0]
    # the --out default overrides the file; the file's smoke stays on; unset flags keep the file's values
    assert (cfg.out_dir, cfg.smoke, cfg.smoke_steps, cfg.name, cfg.progress, stop) == (
        tmp_path / "default", True, 2, "file", False, "two")


def test_run_from_args_reports_errors(tmp_path, capsys):
    def fail(cfg, console, stop_after):
        raise ValueError("vimeo_dir: give the root")

    assert common.run_from_args(_args(tmp_path, argv=["--quiet"]), _Cfg, {}, fail, _quiet()) == 2
    assert "error: vimeo_dir: give the root" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _args(tmp_path, argv=["--stop-after", "three"])
