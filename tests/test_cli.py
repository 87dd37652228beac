"""The ``compresskit`` command line: help, trace, the stage commands on one job file, report, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import compresskit as ck
import compresskit.models
from compresskit.cli import main

TASK = textwrap.dedent('''
    """A tiny task for CLI tests: a conv net learns to copy its input shifted by one pixel."""
    import torch
    from torch import nn


    def make_net(width=8):
        return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(width, 3, 3, padding=1))


    def loaders(n=6, size=12):
        g = torch.Generator().manual_seed(0)
        def batch():
            x = torch.rand(4, 3, size, size + 1, generator=g)
            return x[..., :-1], x[..., 1:]
        return [batch() for _ in range(n)], [batch() for _ in range(2)]


    def neg_mse(output, batch):
        return -((output - batch[-1]) ** 2).mean()
''')


def _errors(stderr: str) -> list[str]:
    """stderr without the one-line warnings (e.g. a plugin that failed to load)."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("compresskit: warning:")]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    (tmp_path / "clitask.py").write_text(TASK)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _job(path: Path, **compress) -> Path:
    cfg = {**dict(target="2x params", sparsify={"steps": 6, "lr": 1e-2}, recover={"steps": 4},
                  checkpoint_every=2, measure_latency=False, progress=False), **compress}
    job = {"model": {"name": "clitask:make_net", "kwargs": {"width": 8}},
           "data": {"factory": "clitask:loaders", "kwargs": {"n": 6}},
           "loss": "l1", "metrics": {"neg_mse": "clitask:neg_mse"}, "compress": cfg}
    if path.suffix == ".json":
        path.write_text(json.dumps(job))
    else:
        import yaml

        path.write_text(yaml.safe_dump(job))
    return path


COMMANDS = [None, "trace", "sparsify", "plan", "shrink", "recover", "distill", "compress", "report"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_everywhere_has_examples(command, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"] if command is None else [command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out and "compresskit" in out


def test_trace_prints_the_groups_of_a_factory(workdir, capsys):
    assert main(["trace", "clitask:make_net", "--kwargs", '{"width": 8}', "--input", "1,3,12,12",
                 "--json", "groups.json"]) == 0
    out = capsys.readouterr().out
    assert "prunable" in out and "frozen" in out
    data = json.loads((workdir / "groups.json").read_text())
    sys.path.insert(0, str(workdir))
    import clitask

    graph = ck.trace(clitask.make_net(8), (torch.zeros(1, 3, 12, 12),))
    assert [g["size"] for g in data["groups"]] == [g.size for g in graph.groups]
    assert sum(g["prunable"] for g in data["groups"]) == 2  # the two hidden widths; input/output frozen


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["trace", "no_such_model", "--input", "1,3,8,8"], "neither a registered model"),
        (["trace", "clitask:missing", "--input", "1,3,8,8"], "has no attribute 'missing'"),
        (["trace", "clitask:make_net", "--input", "1,x,8"], "--input: expected a shape"),
        (["trace", "clitask:make_net"], "--input: give the shape"),
        (["trace", "clitask:make_net", "--kwargs", "{width: 3}", "--input", "1,3,8,8"], "--kwargs: expected"),
        (["trace", "clitask:make_net", "--kwargs", "[3]", "--input", "1,3,8,8"], "--kwargs: expected"),
        (["compress", "missing.yaml"], "does not exist"),
        (["report", "missing.json"], "does not exist"),
    ],
)
def test_errors_are_one_line_with_exit_code_1(workdir, capsys, argv, message):
    assert main(argv) == 1
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"compresskit {argv[0]}: error:") and message in err[0]


def test_job_errors_name_the_setting(workdir, capsys):
    job = _job(workdir / "job.yaml", sparsify={"steps": -1})
    assert main(["compress", str(job), "--trusted"]) == 1
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and "compress.sparsify.steps" in err[0] and "greater than or equal to 0" in err[0]
    assert main(["compress", str(_job(workdir / "job.yaml", target="3x watts")), "--trusted"]) == 1
    assert "unknown metric 'watts'" in capsys.readouterr().err
    job = _job(workdir / "job.yaml")
    assert main(["sparsify", str(job), "--trusted"]) == 1  # stage commands share a folder
    assert "--out" in capsys.readouterr().err
    assert main(["compress", str(job), "--trusted", "--set", "sparsify_stepz=3"]) == 1
    assert "unknown compress setting 'sparsify_stepz'" in capsys.readouterr().err
    assert main(["compress", str(job), "--trusted", "--set", "sparsify.stepz=3"]) == 1
    assert "unknown setting 'sparsify.stepz'" in capsys.readouterr().err
    assert main(["compress", str(job), "--trusted", "--out", "x", "--target", "1000x params"]) == 1
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and "target: 1000x params is unreachable" in err[0]
    assert not (workdir / "x/sparsify").exists()  # refused before any training


def test_stage_commands_resume_into_the_same_model_as_one_shot(workdir, capsys):
    job = _job(workdir / "job.json")
    assert main(["sparsify", str(job), "--trusted", "--out", "staged"]) == 0
    assert (workdir / "staged/sparsified.pt").is_file() and not (workdir / "staged/shrunk.pt").exists()
    assert main(["plan", str(job), "--trusted", "--out", "staged"]) == 0
    assert "widths" in json.loads((workdir / "staged/plan.json").read_text())
    assert main(["shrink", str(job), "--trusted", "--out", "staged"]) == 0
    assert (workdir / "staged/shrunk.pt").is_file() and (workdir / "staged/shrunk.model.pt").is_file()
    assert main(["compress", str(job), "--trusted", "--out", "staged"]) == 0
    assert main(["compress", str(job), "--trusted", "--out", "oneshot"]) == 0
    staged, oneshot = ck.load(workdir / "staged/compressed.pt"), ck.load(workdir / "oneshot/compressed.pt")
    x = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(staged(x), oneshot(x))
    capsys.readouterr()
    assert main(["report", "staged"]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "neg_mse" in out and "l1(output, batch[-1])" in out


def test_recover_is_listed_and_distill_is_its_hidden_old_name(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out
    assert "  recover " in listed and "distill " not in listed


def test_old_distill_command_runs_recover_with_a_note_and_set_overrides(workdir, capsys):
    job = _job(workdir / "job.yaml")
    argv = ["distill", str(job), "--trusted", "--out", "d", "--set", "recover.alpha=0.5", "--set",
            "distill_loss=mse", "--target", "50% macs"]
    assert main(argv) == 0
    cfg = json.loads((workdir / "d/config.json").read_text())
    assert cfg["recover"]["alpha"] == 0.5 and cfg["recover"]["distill_loss"] == "mse"  # dotted and legacy key
    assert cfg["target"] == {"metric": "macs", "ratio": 2.0}
    report = json.loads((workdir / "d/report.json").read_text())
    assert report["target"]["target"] == "2x macs" and 1.9 <= report["target"]["achieved"] <= 2.2
    assert (workdir / "d/compressed.pt").is_file() and (workdir / "d/recovered.pt").is_file()
    assert "'compresskit distill' is now 'compresskit recover'" in capsys.readouterr().err


def test_a_job_file_runs_named_code_only_with_trusted(workdir, capsys):
    marker = workdir / "pwned"
    job = _job(workdir / "job.yaml")
    import yaml

    evil = yaml.safe_load(job.read_text())
    evil["model"] = {"name": "os:system", "kwargs": {"command": f"touch {marker}"}}
    (workdir / "evil.json").write_text(json.dumps(evil))
    assert main(["compress", "evil.json", "--out", "e"]) == 1
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and "model.name 'os:system'" in err[0] and "--trusted" in err[0]
    assert not marker.exists() and not (workdir / "e").exists()  # nothing imported, nothing run
    for argv in (["compress", str(job), "--out", "j"], ["sparsify", str(job), "--out", "j"]):
        assert main(argv) == 1
        err = _errors(capsys.readouterr().err)[0]
        assert "data.factory 'clitask:loaders'" in err and "metrics.neg_mse" in err
    assert "--trusted" in _help(capsys, "compress")
    # a registered model needs no --trusted; the data function does
    with compresskit.models.MODELS.snapshot():
        ck.register_model("cli_test_net")(lambda width=8: torch.nn.Conv2d(3, 3, 1))
        from compresskit.cli import check_job_trusted, load_job

        plain = {**evil, "model": {"name": "cli_test_net"}, "metrics": {}}
        (workdir / "plain.json").write_text(json.dumps(plain))
        loaded = load_job("plain.json", None, [])
        with pytest.raises(ValueError, match="data.factory") as e:
            check_job_trusted(loaded, "plain.yaml", trusted=False)
        assert "model.name" not in str(e.value)
        check_job_trusted(loaded, "plain.yaml", trusted=True)


def _help(capsys, command):  # noqa: ANN001, ANN202
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return capsys.readouterr().out


def test_console_script_exit_code(workdir):
    script = Path(sys.executable).parent / "compresskit"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "compresskit.cli"]
    bad = subprocess.run([*cmd, "report", "nope.json"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and len(_errors(bad.stderr)) == 1


def test_set_lambda_selects_obproxsg(workdir):
    from compresskit.cli import load_job

    job = _job(workdir / "job.yaml")
    cfg = load_job(str(job), None, ["sparsify.lambda_=1e-4"]).compress
    assert (cfg.sparsify.method, cfg.sparsify.lambda_) == ("obproxsg", 1e-4)  # the papers' l1 training
    assert load_job(str(job), None, []).compress.sparsify.method == "progressive"
