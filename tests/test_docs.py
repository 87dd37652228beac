"""Every code block in README.md and docs/ is run.

- ```python blocks run in order, one shared namespace per file, in a temporary working directory.
- ```bash / ```sh / ```console blocks: each command is checked the way a reader would first try it:
  our console scripts and example scripts are run with ``--help`` (they must parse and exit 0), make
  targets must exist (``make -n``), and any other program must be on PATH or in .venv/bin.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.M | re.S)
SHELL_LANGS = {"bash", "sh", "shell", "console"}
OUR_SCRIPTS = {"compresskit", "compresskit-vfi"}


def _blocks(path: Path, langs: set[str]) -> list[str]:
    return [m.group(2) for m in FENCE.finditer(path.read_text()) if m.group(1).lower() in langs]


def _commands(block: str) -> list[list[str]]:
    """Shell commands of a block: one per logical line, prompts and comments stripped."""
    text = re.sub(r"\\\n", " ", block)
    out = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line.startswith("$ "):
            line = line[2:]
        if not line or line.startswith("#"):
            continue
        for part in re.split(r"&&|;", line):
            words = shlex.split(part)
            # drop leading VAR=value assignments
            while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
                words = words[1:]
            if words:
                out.append(words)
    return out


def _bin(name: str) -> str | None:
    venv = Path(sys.executable).parent / name
    if venv.exists():
        return str(venv)
    from shutil import which

    return which(name)


@pytest.mark.parametrize("path", [p for p in DOCS if _blocks(p, {"python"})], ids=lambda p: p.name)
def test_python_blocks_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           isolated_registries: None) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COMPRESSKIT_DOCS_TEST", "1")
    namespace: dict = {"__name__": "__docs__"}
    for i, block in enumerate(_blocks(path, {"python"})):
        try:
            exec(compile(block, f"{path.name}[python block {i}]", "exec"), namespace)
        except Exception as e:  # pragma: no cover - the failure message is the point
            where = f"{path.relative_to(ROOT)}: python block {i}"
            pytest.fail(f"{where} failed: {type(e).__name__}: {e}\n{block}")


@pytest.mark.parametrize("path", [p for p in DOCS if _blocks(p, SHELL_LANGS)], ids=lambda p: p.name)
def test_shell_commands_parse(path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for block in _blocks(path, SHELL_LANGS):
        for words in _commands(block):
            prog = words[0]
            if prog in ("make",):
                targets = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
                r = subprocess.run(["make", "-n", "-C", str(ROOT), *targets], capture_output=True, text=True)
                # -n on a target that needs setup prints the commands; a missing target is an error
                assert "No rule to make target" not in r.stderr, f"{path.name}: {' '.join(words)}: {r.stderr}"
            elif prog in OUR_SCRIPTS or (prog in ("python", "python3", "torchrun") and any(
                    w.endswith(".py") for w in words)):
                if prog in OUR_SCRIPTS:
                    sub = [w for w in words[1:] if not w.startswith("-")][:1]
                    cmd = [_bin(prog) or prog, *sub, "--help"]
                else:
                    script = next(w for w in words if w.endswith(".py"))
                    assert (ROOT / script).is_file(), f"{path.name}: {script} does not exist"
                    cmd = [sys.executable, str(ROOT / script), "--help"]
                r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
                assert r.returncode == 0, f"{path.name}: `{' '.join(cmd)}` failed:\n{r.stderr[-2000:]}"
            elif prog in ("cd", "git", "pip", "export", "source", "ls", "cat", "mkdir", "torchrun"):
                continue
            else:
                assert _bin(prog), f"{path.name}: command {prog!r} is not installed"
