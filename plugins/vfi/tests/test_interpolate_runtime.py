"""How interpolate runs a model: every layout and ONNX Runtime give the same frames; I/O threads pass
errors on and stop."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from compresskit_vfi.data.video import read_video, write_video
from compresskit_vfi.interpolate import background, interpolate_video, make_runner
from compresskit_vfi.runtime import eager_runner
from torch import nn

from compresskit.deploy.onnx import onnx_available


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, a, b):
        return torch.sigmoid(self.net(torch.cat([a, b], 1)))


def _clip(path, n=4, h=16, w=24):
    rng = np.random.default_rng(1)
    write_video(rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8), path, fps=10, codec="ffv1")


def test_layouts_give_the_same_frames_and_auto_times_both():
    frames = [torch.rand(1, 3, 16, 24), torch.rand(1, 3, 16, 24)]
    model = Net().eval()
    with torch.inference_mode():
        want = model(*frames)
    for layout in ("nchw", "channels_last"):
        got = eager_runner(Net().eval(), layout)(*frames)
        torch.testing.assert_close(got, want)
        assert got.is_contiguous()
    runner = make_runner(Net().eval(), frames[0], "eager", "auto")
    for _ in range(5):  # two warm-ups, two timed predictions (one per layout), then the faster one
        torch.testing.assert_close(runner(*frames), want)
    assert set(runner.info["ms"]) == {"nchw", "channels_last"}
    assert runner.name in ("eager NCHW", "eager channels-last")
    with pytest.raises(ValueError, match="runtime must be one of"):
        make_runner(model, frames[0], "tensorrt")


@pytest.mark.skipif(onnx_available() is not None, reason=f"[onnx] extra missing ({onnx_available()})")
def test_onnx_runtime_writes_the_same_video(tmp_path):
    src = tmp_path / "in.mkv"
    _clip(src)
    outs = {}
    for runtime in ("eager", "onnx"):
        out = tmp_path / f"{runtime}.mkv"
        s = interpolate_video(src, out, Net(), codec="ffv1", progress=False, cut_threshold=None,
                              runtime=runtime, onnx_path=tmp_path / "net.onnx" if runtime == "onnx" else None)
        assert s["frames_out"] == 7 and s["frames_per_second"] > 0
        outs[runtime] = (read_video(out).astype(int), s["runtime"])
    assert outs["onnx"][1] == "onnxruntime" and (tmp_path / "net.onnx").is_file()
    assert np.abs(outs["onnx"][0] - outs["eager"][0]).max() <= 1  # uint8 rounding at most


def test_background_passes_items_and_errors_and_stops():
    assert list(background(iter(range(10)), depth=2)) == list(range(10))

    def failing():
        yield 1
        raise RuntimeError("decoder broke")

    it = background(failing())
    assert next(it) == 1
    with pytest.raises(RuntimeError, match="decoder broke"):
        next(it)
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    before = threading.active_count()
    it = background(endless(), depth=2)
    assert next(it) == 0
    it.close()  # the consumer stops early (an encoder error): the producer thread ends too
    deadline = time.time() + 5
    while threading.active_count() > before and time.time() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before and len(produced) < 10


def test_frame_conversions_equal_the_reference_ones_and_skip_the_transposes():
    from compresskit_vfi.data.transforms import to_tensor, to_uint8
    from compresskit_vfi.interpolate import frame_tensor, frame_uint8

    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    t = frame_tensor(img)
    assert t.shape == (1, 3, 5, 7) and t.dtype == torch.float32
    assert torch.equal(t, to_tensor(img).unsqueeze(0))  # the same values, bit for bit
    assert t.is_contiguous(memory_format=torch.channels_last)  # a view of the decoded layout
    assert float(t[0, 1, 2, 3]) == float(np.float32(img[2, 3, 1]) / np.float32(255))  # one pixel by hand
    ro = img.copy()
    ro.flags.writeable = False  # PyAV/numpy may hand read-only arrays: still converted, no warning
    assert torch.equal(frame_tensor(ro), t)
    with pytest.raises(ValueError, match="uint8 .H, W, 3."):
        frame_tensor(img[..., :2])
    # out of range values, a half way value and both layouts: the reference quantisation exactly
    x = torch.tensor([-0.5, 0.0, 0.5 / 255, 1.5 / 255, 0.5, 1.0, 1.7]).repeat(3, 1).view(3, 1, 7)
    x = torch.cat([x, torch.rand(3, 4, 7)], 1)
    want = to_uint8(x)
    assert np.array_equal(frame_uint8(x), want)
    cl = x.unsqueeze(0).contiguous(memory_format=torch.channels_last)[0]
    got = frame_uint8(cl)
    assert np.array_equal(got, want) and got.flags.c_contiguous
    assert torch.equal(x, cl)  # the input is left as it was
    assert want[0, 0].tolist() == [0, 0, 0] and want[0, 6].tolist() == [255, 255, 255]
