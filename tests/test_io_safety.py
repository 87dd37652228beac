"""A killed run leaves no temp file behind once the next run starts; renames are made durable."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import compresskit as ck
from compresskit.io import TEMP_NAME, atomic_write_text, remove_stale_temps

ROOT = Path(__file__).resolve().parents[1]

_TRAIN = textwrap.dedent(
    """
    import io, os, signal, sys
    import torch
    from torch import nn
    import compresskit as ck

    out, kill_at = sys.argv[1], int(sys.argv[2])
    real_save, calls = torch.save, [0]

    def dying_save(obj, f, *args, **kwargs):  # the kill_at-th save dies half-way through its temp file
        calls[0] += 1
        if calls[0] == kill_at:
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    torch.save = dying_save
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 1))
    data = [(torch.randn(8, 64), torch.randn(8, 1)) for _ in range(4)]
    result = ck.train(model, data, lambda out, b: ((out - b[-1]) ** 2).mean(),
                      config=ck.TrainConfig(steps=8, checkpoint_every=2, progress=False), out_dir=out)
    print("final step", result.step)
    """
)


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_run_killed_mid_write_leaves_no_temp_file_after_restart(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(_TRAIN)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    def run(kill_at: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), str(out), str(kill_at)], capture_output=True,
                              text=True, env=env, timeout=300)

    killed = run(3)  # checkpoints at steps 2, 4 are written; the one of step 6 dies half-written
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    left = _temps(out)
    assert len(left) == 1 and left[0].name.startswith(".ckpt-step00000006.pt."), left
    assert TEMP_NAME.match(left[0].name)
    assert sorted(p.name for p in out.glob("ckpt-*.pt")) == ["ckpt-step00000002.pt", "ckpt-step00000004.pt"]

    done = run(0)  # the restart resumes from step 4 and finishes
    assert done.returncode == 0, done.stderr[-2000:]
    assert "final step 8" in done.stdout
    assert _temps(out) == []
    assert torch.load(out / "ckpt-step00000008.pt", weights_only=True)["step"] == 8


def test_compress_removes_temp_files_of_a_killed_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "finetune").mkdir(parents=True)
    stale = [out / ".compressed.pt.k3x9_abc.tmp", out / "finetune" / ".ckpt-step00000005.pt.0a1b2c3d.tmp"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    mine = out / "notes.tmp"  # not a name compresskit writes: left alone
    mine.write_text("user file")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))
    data = [(torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8))]
    ck.compress(model, data, config=dict(sparsify={"steps": 1}, recover={"steps": 1}, measure_latency=False,
                                         progress=False, out_dir=out))
    assert not any(p.exists() for p in stale)
    assert mine.read_text() == "user file"
    assert [p for p in _temps(out) if p != mine] == []


def test_remove_stale_temps_matches_only_atomic_write_names(tmp_path: Path) -> None:
    names = [".a.pt.abcdefgh.tmp", ".x.json.1234_678.tmp", "a.tmp", ".a.pt.short.tmp", ".a.pt.ABCDEFGH.tmp"]
    for n in names:
        (tmp_path / n).write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".b.pt.abcdefgh.tmp").write_text("x")
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == [".a.pt.abcdefgh.tmp", ".x.json.1234_678.tmp"]
    assert (tmp_path / "sub" / ".b.pt.abcdefgh.tmp").exists()  # depth 0: the folder itself only
    assert [p.name for p in remove_stale_temps(tmp_path, depth=1)] == [".b.pt.abcdefgh.tmp"]


@pytest.mark.skipif(os.name != "posix", reason="folders are fsynced on POSIX")
def test_atomic_write_fsyncs_the_file_and_then_its_folder(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    synced: list[bool] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    atomic_write_text("hello", tmp_path / "f.txt")
    assert synced == [False, True]  # the temp file's data, then the rename in its folder
    assert (tmp_path / "f.txt").read_text() == "hello"
