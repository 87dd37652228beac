"""DDP: two CPU processes (gloo, launched like torchrun) end with the parameters of one process that sees
the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import torch
from torch.utils.data import DataLoader

import compresskit as ck

WORKER = textwrap.dedent("""
    import sys, torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    import compresskit as ck

    def data():
        g = torch.Generator().manual_seed(7)
        x = torch.randn(32, 5, generator=g)
        return TensorDataset(x, torch.sin(x @ torch.randn(5, 2, generator=g)))

    def net():
        torch.manual_seed(11)
        return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))

    def mse(out, batch):
        return nn.functional.mse_loss(out, batch[-1])

    if __name__ == "__main__":
        batch_size, out_dir, result = int(sys.argv[1]), sys.argv[2], sys.argv[3]
        cfg = ck.TrainConfig(steps=6, lr=1e-2, grad_accum=2, grad_clip=0.5, log_every=1, progress=False,
                             seed=5, checkpoint_every=3)
        r = ck.train(net(), DataLoader(data(), batch_size=batch_size, shuffle=True), mse, config=cfg,
                     out_dir=out_dir)
        import torch.distributed as dist
        rank = dist.get_rank() if dist.is_initialized() else 0
        torch.save({k: v.clone() for k, v in r.model.state_dict().items()}, f"{result}.rank{rank}")
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(script, args, env_extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    return subprocess.Popen([sys.executable, str(script), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = _free_port()
    procs = [_run(script, [2, tmp_path / "ddp", tmp_path / "ddp.pt"],
                  {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(port)}) for r in range(2)]
    # meanwhile, here: one process with the global batch (2 x 2)
    worker = _worker_namespace()
    init = worker["net"]().state_dict()
    cfg = ck.TrainConfig(steps=6, lr=1e-2, grad_accum=2, grad_clip=0.5, log_every=1, progress=False, seed=5,
                         checkpoint_every=3)
    one = ck.train(worker["net"](), DataLoader(worker["data"](), batch_size=4, shuffle=True), worker["mse"],
                   config=cfg, out_dir=tmp_path / "one").model.state_dict()
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out
    ddp0 = torch.load(f"{tmp_path / 'ddp.pt'}.rank0", weights_only=True)
    ddp1 = torch.load(f"{tmp_path / 'ddp.pt'}.rank1", weights_only=True)
    for k in one:
        assert torch.equal(ddp0[k], ddp1[k]), k  # ranks stay in sync
        torch.testing.assert_close(ddp0[k], one[k], rtol=1e-5, atol=1e-6)
        assert not torch.equal(one[k], init[k])  # training moved it
    # only rank 0 wrote: one log line per step (not two), checkpoints at steps 3 and 6
    lines = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]
    one_lines = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(lines, one_lines):
        assert abs(a["loss"] - b["loss"]) < 1e-5  # the logged loss is the mean over both ranks
    assert sorted(p.name for p in (tmp_path / "ddp").glob("ckpt-*.pt")) == [
        "ckpt-step00000003.pt", "ckpt-step00000006.pt"]


def _worker_namespace() -> dict:
    namespace: dict = {}
    exec(compile(WORKER.split("if __name__")[0], "worker", "exec"), namespace)
    return namespace
