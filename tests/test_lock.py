"""Issue 24, item 4: two runs on one out_dir. The folder is locked (a second run fails at once naming the
holder, or waits when asked; a dead holder's lock is taken over), start-up cleanup leaves a live run's
temp files alone, and a different target in a used folder is an error unless resume=False.

The holder is a real second process (``subprocess``), so the OS lock is what is tested.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import compresskit as ck
from compresskit.config import CompressConfig, TrainConfig
from compresskit.io import remove_stale_temps
from compresskit.lock import LOCK_NAME, FolderLock, FolderLockedError, folder_lock, read_holder

_HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from compresskit.lock import FolderLock
    folder = Path(sys.argv[1])
    lock = FolderLock(folder).acquire()
    (folder / ".ckpt.pt.abcd1234.tmp").write_bytes(b"half written")  # a write in flight
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    lock.release()
""")


def _holder(folder: Path, seconds: float) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE,
                         text=True, env=env)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_run_fails_at_once_naming_the_holder(tmp_path) -> None:
    p = _holder(tmp_path, 30)
    try:
        t0 = time.monotonic()
        with pytest.raises(FolderLockedError) as info:
            FolderLock(tmp_path).acquire()
        assert time.monotonic() - t0 < 5
        msg = str(info.value)
        assert f"process {p.pid}" in msg and socket.gethostname() in msg and "started" in msg
        assert info.value.holder["pid"] == p.pid
        # the start-up cleanup of another run leaves the holder's temp file alone
        assert remove_stale_temps(tmp_path) == []
        assert (tmp_path / ".ckpt.pt.abcd1234.tmp").is_file()
        with pytest.raises(FolderLockedError), folder_lock(tmp_path):
            pass
    finally:
        p.kill()
        p.wait()


def test_waits_when_asked(tmp_path) -> None:
    p = _holder(tmp_path, 1.0)
    lock = FolderLock(tmp_path).acquire(wait=60)
    try:
        assert p.wait(timeout=30) == 0
        assert read_holder(tmp_path)["pid"] == os.getpid()
    finally:
        lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_of_a_killed_process_is_taken_over(tmp_path) -> None:
    p = _holder(tmp_path, 30)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert read_holder(tmp_path)["pid"] == p.pid  # the file is still there, the OS lock is gone
    with pytest.warns(UserWarning, match="taking over"):
        lock = FolderLock(tmp_path).acquire()
    assert read_holder(tmp_path)["pid"] == os.getpid()
    lock.release()
    assert remove_stale_temps(tmp_path) == [tmp_path / ".ckpt.pt.abcd1234.tmp"]  # now it is stale


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)) for _ in range(2)]


def _compress(out: Path, target: str, **kw) -> ck.CompressResult:
    cfg = CompressConfig(target=target, sparsify={"steps": 0}, recover={"steps": 0}, measure_latency=False,
                         progress=False, out_dir=out, **kw)
    torch.manual_seed(0)
    return ck.compress(_Net(), _batches(), lambda y, b: nn.functional.l1_loss(y, b[1]), (_batches()[0][0],),
                       config=cfg)


def test_compress_and_train_refuse_a_held_folder(tmp_path) -> None:
    p = _holder(tmp_path, 30)
    try:
        with pytest.raises(FolderLockedError, match=str(p.pid)):
            _compress(tmp_path, "2x params")
        with pytest.raises(FolderLockedError, match=str(p.pid)):
            ck.train(_Net(), _batches(), lambda y, b: nn.functional.l1_loss(y, b[1]),
                     config=TrainConfig(steps=1, progress=False), out_dir=tmp_path)
        assert (tmp_path / ".ckpt.pt.abcd1234.tmp").is_file()
        assert not (tmp_path / "compressed.pt").exists()
    finally:
        p.kill()
        p.wait()


def test_a_used_folder_keeps_its_target(tmp_path) -> None:
    first = _compress(tmp_path, "2x params")
    saved = (tmp_path / "compressed.pt").read_bytes()
    with pytest.raises(ValueError, match=r"2x params.*1.5x params.*resume=False"):
        _compress(tmp_path, "1.5x params")
    assert (tmp_path / "compressed.pt").read_bytes() == saved  # nothing replaced
    again = _compress(tmp_path, "2x params")  # the same target resumes
    assert again.report.target == first.report.target
    other = _compress(tmp_path, "1.5x params", resume=False)  # asked for: starts afresh
    assert "1.5" in str(other.report.target)
    assert not (tmp_path / LOCK_NAME).exists()  # released after each run


def test_a_lock_dropped_without_release_is_given_back(tmp_path) -> None:
    import gc

    lock = FolderLock(tmp_path).acquire()
    del lock  # e.g. left in a frame an exception unwound
    gc.collect()
    FolderLock(tmp_path).acquire().release()


def test_the_vfi_recipes_refuse_a_held_folder_before_touching_it(tmp_path) -> None:
    """A second recipe run on a folder a live run holds fails at once naming the holder, before it writes
    config.json or empties any stage folder (the first run's checkpoints stay)."""
    pytest.importorskip("compresskit_adacof")
    pytest.importorskip("compresskit_stmfnet")
    from compresskit_adacof.recipe import CDFIRecipeConfig
    from compresskit_adacof.recipe import run as run_cdfi
    from compresskit_stmfnet.recipe import MiniRecipeConfig
    from compresskit_stmfnet.recipe import run as run_mini

    (tmp_path / "sparsify").mkdir()
    kept = tmp_path / "sparsify" / "ckpt.pt"
    kept.write_bytes(b"the first run's checkpoint")
    p = _holder(tmp_path, 30)
    try:
        for run, cfg in ((run_cdfi, CDFIRecipeConfig(out_dir=tmp_path, smoke=True, progress=False)),
                         (run_mini, MiniRecipeConfig(out_dir=tmp_path, smoke=True, progress=False))):
            with pytest.raises(FolderLockedError, match=str(p.pid)):
                run(cfg)
        assert kept.read_bytes() == b"the first run's checkpoint"
        assert not (tmp_path / "config.json").exists()
    finally:
        p.kill()
        p.wait()
