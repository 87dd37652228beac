"""``compresskit-vfi``: help, one-line errors with no output file, evaluate and interpolate end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from compresskit_vfi.cli import main
from compresskit_vfi.data.video import read_video, write_video
from PIL import Image
from torch import nn

import compresskit as ck


class WeightedAverage(nn.Module):
    """w·frame0 + (1 − w)·frame1 with a learnable w (0.5 unless a checkpoint says otherwise)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))

    def forward(self, frame0, frame1):
        return self.w * frame0 + (1 - self.w) * frame1


@pytest.fixture(scope="module", autouse=True)
def registered():
    ck.register_model("test_cli_weighted_average", task="vfi", replace=True)(WeightedAverage)


def _checkpoint(tmp_path, w):
    path = tmp_path / f"w{w}.pth"
    torch.save({"state_dict": {"w": torch.tensor(w)}}, path)
    return str(path)


def _video(path, n=4):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (n, 16, 24, 3), dtype=np.uint8)
    write_video(frames, path, fps=8, codec="ffv1")
    return frames


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("compresskit-vfi"), err
    return err[0]


def test_help_has_examples(capsys):
    for cmd in ("evaluate", "interpolate"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "examples:" in out and f"compresskit-vfi {cmd} " in out


def test_console_script_is_installed():
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "compresskit-vfi"]
    assert ep.value == "compresskit_vfi.cli:main"
    r = subprocess.run([sys.executable, "-m", "compresskit_vfi.cli", "interpolate", "a.mp4", "b.mp4",
                        "--model", "x", "--factor", "3"], capture_output=True, text=True)
    assert r.returncode != 0
    assert r.stderr.strip() == "compresskit-vfi: error: --factor must be 2, 4 or 8, got '3'"


def test_interpolate_errors_are_one_line_and_leave_no_output(tmp_path, capsys):
    src = tmp_path / "in.mkv"
    _video(src)
    out = tmp_path / "out.mp4"
    assert main(["interpolate", str(src), str(out), "--model", "test_cli_weighted_average",
                 "--factor", "6"]) != 0
    assert "--factor must be 2, 4 or 8" in _one_error_line(capsys)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    assert main(["interpolate", str(bad), str(out), "--model", "test_cli_weighted_average"]) != 0
    assert "could not be opened" in _one_error_line(capsys)
    assert main(["interpolate", str(tmp_path / "none.mp4"), str(out), "--model", "x"]) != 0
    assert "does not exist" in _one_error_line(capsys)
    assert main(["interpolate", str(src), str(out), "--model", "no_such_model_xyz", "--random-weights"]) != 0
    assert "no_such_model_xyz" in _one_error_line(capsys)
    assert main(["interpolate", str(src), str(tmp_path / "out.gif"), "--model",
                 "test_cli_weighted_average", "--random-weights", "--no-progress"]) != 0
    assert "unsupported video suffix" in _one_error_line(capsys)
    with pytest.raises(SystemExit) as e:
        main(["interpolate", str(src), str(out), "--model", "x", "--tile", "0"])
    assert e.value.code == 2
    assert "expected a positive number of pixels or 'auto'" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.mp4", "in.mkv"]


def test_interpolate_end_to_end_with_checkpoint(tmp_path, capsys):
    src = tmp_path / "in.mkv"
    frames = _video(src)
    out = tmp_path / "out.mkv"
    rc = main(["interpolate", str(src), str(out), "--model", "test_cli_weighted_average", "--checkpoint",
               _checkpoint(tmp_path, 1.0), "--factor", "2", "--codec", "ffv1", "--tile", "8",
               "--overlap", "0", "--no-cut-detection"])  # random frames would all be scene cuts
    assert rc == 0, capsys.readouterr().err
    got = read_video(out)
    assert got.shape == (7, 16, 24, 3)
    np.testing.assert_array_equal(got[::2], frames)
    np.testing.assert_array_equal(got[1::2], frames[:-1])  # w = 1 from the checkpoint: the earlier frame
    printed = capsys.readouterr().out
    assert "wrote" in printed and "frames/s" in printed and "s of CPU time" in printed


def test_interpolate_refuses_random_weights_without_checkpoint(tmp_path, capsys):
    src = tmp_path / "in.mkv"
    _video(src)
    out = tmp_path / "out.mkv"
    assert main(["interpolate", str(src), str(out), "--model", "test_cli_weighted_average"]) != 0
    err = _one_error_line(capsys)
    assert "needs --checkpoint" in err and "compressed_model.pt" in err and "--random-weights" in err
    assert not out.exists()
    assert main(["interpolate", str(src), str(out), "--random-weights"]) != 0
    assert "needs --model" in _one_error_line(capsys)
    # official weights need the model's name
    assert main(["interpolate", str(src), str(out), "--checkpoint", _checkpoint(tmp_path, 1.0)]) != 0
    assert "need --model" in _one_error_line(capsys)
    assert main(["interpolate", str(src), str(out), "--model", "test_cli_weighted_average",
                 "--random-weights", "--codec", "ffv1", "--no-progress", "--no-cut-detection"]) == 0
    assert read_video(out).shape == (7, 16, 24, 3)


class TinyVFI(nn.Module):
    """A two-frame conv net with prunable hidden channels."""

    def __init__(self, width=12):
        super().__init__()
        self.a = nn.Conv2d(6, width, 3, padding=1)
        self.b = nn.Conv2d(width, width, 3, padding=1)
        self.c = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, frame0, frame1):
        x = torch.cat([frame0, frame1], 1)
        return (frame0 + frame1) / 2 + 0.1 * self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def _smooth_clip(path, n=5, h=16, w=24):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    frames = np.stack([np.stack([100 + 60 * np.sin((x + 2 * t) / 4), 120 + 40 * np.cos(y / 3) + 0 * t,
                                 90 + 3 * x + t], -1) for t in range(n)]).astype(np.uint8)
    write_video(frames, path, fps=8, codec="ffv1")
    return frames


def test_interpolate_loads_what_compress_saves(tmp_path, capsys):
    ck.register_model("test_cli_tiny_vfi", task="vfi", replace=True)(TinyVFI)
    torch.manual_seed(0)
    model = ck.create_model("test_cli_tiny_vfi")
    g = torch.Generator().manual_seed(1)
    batches = [tuple(torch.rand(2, 3, 16, 16, generator=g) for _ in range(3)) for _ in range(3)]
    cfg = ck.CompressConfig(sparsify=dict(steps=8, lambda_=0.5, lr=5e-2), recover=dict(steps=2),
                            measure_latency=False, progress=False)
    result = ck.compress(model, batches, config=cfg)
    result.save(tmp_path / "compressed_model.pt")  # the demo's file name
    small = ck.load(tmp_path / "compressed_model.pt")
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n_params(small) < n_params(model)  # really a shrunk model
    src = tmp_path / "in.mkv"
    frames = _smooth_clip(src)
    to_t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255  # noqa: E731
    with torch.no_grad():
        expected = [small(to_t(frames[t]), to_t(frames[t + 1])) for t in range(4)]
    expected = [np.round(e[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8) for e in expected]
    for argv in ([], ["--model", "test_cli_tiny_vfi"]):
        out = tmp_path / "out.mkv"
        rc = main(["interpolate", str(src), str(out), "--checkpoint", str(tmp_path / "compressed_model.pt"),
                   "--codec", "ffv1", "--no-progress", "--no-cut-detection", *argv])
        assert rc == 0, capsys.readouterr().err
        got = read_video(out)
        np.testing.assert_array_equal(got[::2], frames)
        np.testing.assert_array_equal(got[1::2], np.stack(expected))  # the compressed model's frames
        out.unlink()
    assert main(["interpolate", str(src), str(tmp_path / "o.mkv"), "--checkpoint",
                 str(tmp_path / "compressed_model.pt"), "--model", "test_cli_weighted_average"]) != 0
    assert "holds a compressed 'test_cli_tiny_vfi'" in _one_error_line(capsys)


def _frame_folder(root, n=6):
    y, x = np.mgrid[0:16, 0:40].astype(np.float64)
    for t in range(n):
        v = 2 * np.round((120 + 60 * np.sin((x + 2 * t) / 3) + 40 * np.cos(y / 4)) / 2)
        img = np.stack([v, v, 254 - v], -1)[:, :24].astype(np.uint8)
        root.mkdir(exist_ok=True)
        Image.fromarray(img).save(root / f"{t:03d}.png")
    return [np.asarray(Image.open(root / f"{t:03d}.png")) for t in range(n)]


def test_evaluate_end_to_end(tmp_path, capsys):
    frames = _frame_folder(tmp_path / "frames")
    out = tmp_path / "eval"
    rc = main(["evaluate", "--model", "test_cli_weighted_average", "--checkpoint", _checkpoint(tmp_path, 0.5),
               "--model", "test_cli_weighted_average", "--checkpoint", _checkpoint(tmp_path, 1.0),
               "--label", "mean", "--label", "previous", "--dataset", "frames",
               "--data-dir", str(tmp_path / "frames"), "--no-runtime", "--no-macs", "--out", str(out),
               "--convention", "cdfi", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    (ds_name,) = res["scores"]["mean"]
    f = [a.astype(np.float64) for a in frames]

    def psnr(p, g):
        return 10 * np.log10(255.0 ** 2 / np.mean((p - g) ** 2))

    exp_mean = np.mean([psnr((f[t] + f[t + 2]) / 2, f[t + 1]) for t in range(4)])
    exp_prev = np.mean([psnr(f[t], f[t + 1]) for t in range(4)])
    assert res["scores"]["mean"][ds_name]["psnr"] == pytest.approx(exp_mean, abs=1e-4)
    assert res["scores"]["previous"][ds_name]["psnr"] == pytest.approx(exp_prev, abs=1e-4)
    assert res["models"]["mean"]["params"] == 1
    assert (out / f"psnr_vs_params_{ds_name}.png").is_file()
    assert "mean" in capsys.readouterr().out


def test_evaluate_argument_errors(tmp_path, capsys):
    base = ["evaluate", "--model", "test_cli_weighted_average", "--no-runtime", "--no-progress",
            "--out", str(tmp_path / "o")]
    assert main([*base, "--dataset", "davis90"]) != 0
    assert "needs --data-dir" in _one_error_line(capsys)
    assert main([*base, "--dataset", "davis90", "--data-dir", str(tmp_path / "missing")]) != 0
    assert "does not exist" in _one_error_line(capsys)
    assert main([*base, "--dataset", "imagenet", "--data-dir", str(tmp_path)]) != 0
    assert "unknown --dataset 'imagenet'" in _one_error_line(capsys)
    assert main([*base, "--checkpoint", "a.pth", "--checkpoint", "b.pth", "--dataset", "sample"]) != 0
    assert "one --checkpoint per --model" in _one_error_line(capsys)
    assert main([*base, "--checkpoint", str(tmp_path / "nope.pth"), "--dataset", "sample"]) != 0
    assert "does not exist" in _one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_interpolate_trusted_opens_a_pickle_only_file(tmp_path, capsys, monkeypatch):
    import compresskit.saving as saving

    torch.manual_seed(0)
    batches = [tuple(torch.rand(2, 3, 16, 16) for _ in range(3))]
    result = ck.compress(TinyVFI(), batches, config=dict(sparsify={"steps": 0}, recover={"steps": 0},
                                                         measure_latency=False, progress=False))

    def no_export(*a, **k):
        raise RuntimeError("data-dependent control flow")  # what torch.export says of some models

    monkeypatch.setattr(saving, "_export", no_export)
    with pytest.warns(UserWarning, match="only a pickled module"):
        path = result.save(tmp_path / "pickled.pt", allow_pickle=True)
    src = tmp_path / "in.mkv"
    frames = _smooth_clip(src)
    out = tmp_path / "out.mkv"
    argv = ["interpolate", str(src), str(out), "--checkpoint", str(path), "--codec", "ffv1", "--no-progress",
            "--no-cut-detection"]
    assert main(argv) != 0
    err = _one_error_line(capsys)
    assert "pass --trusted" in err and "ck.load" not in err and not out.exists()
    assert main([*argv, "--trusted"]) == 0, capsys.readouterr().err
    to_t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255  # noqa: E731
    model = result.model.eval()
    with torch.no_grad():
        mid = [model(to_t(frames[t]), to_t(frames[t + 1]))[0] for t in range(len(frames) - 1)]
    mid = np.stack([np.round(m.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8) for m in mid])
    got = read_video(out)
    np.testing.assert_array_equal(got[::2], frames)
    np.testing.assert_array_equal(got[1::2], mid)
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "--trusted" in capsys.readouterr().out


def test_evaluate_refuses_random_weights_unless_asked(tmp_path, capsys):
    """A --model without --checkpoint would score random weights: refused before any model is built or
    anything written, as interpolate does; --random-weights runs it on purpose."""
    _frame_folder(tmp_path / "frames")
    out = tmp_path / "eval"
    base = ["evaluate", "--model", "test_cli_weighted_average", "--dataset", "frames", "--data-dir",
            str(tmp_path / "frames"), "--no-runtime", "--no-macs", "--no-progress", "--out", str(out)]
    assert main(base) != 0
    line = _one_error_line(capsys)
    assert "--model test_cli_weighted_average has no --checkpoint" in line and "--random-weights" in line
    assert not out.exists()
    assert main([*base, "--random-weights"]) == 0, capsys.readouterr().err
    assert (out / "results.json").is_file()
