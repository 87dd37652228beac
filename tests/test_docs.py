"""Every code block in README.md and docs/ is run.

- ```python blocks run in order, one shared namespace per file, in a temporary working directory.
- An ```output block right after a ```python block is what that block prints: the text must match (a
  line ``...`` stands for any lines, ``...`` inside a line for any text) and every number must equal
  the printed one within the tolerance written on the fence (```output rel=0.05 abs=0.01; default:
  exact), so the numbers the docs show are the numbers the code computes.
- ```bash / ```sh / ```console blocks: each command is checked the way a reader would first try it:
  our console scripts and example scripts are run with ``--help`` (they must parse and exit 0), make
  targets must exist (``make -n``), and any other program must be on PATH or in .venv/bin.
"""

from __future__ import annotations

import contextlib
import io
import math
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


_FENCE_INFO = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.M | re.S)
_NUMBER = r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.])"


def _python_blocks(path: Path) -> list[tuple[str, str | None, dict[str, float]]]:
    """``(code, expected output or None, tolerances)`` of every python block of ``path``."""
    text = path.read_text()
    fences = list(_FENCE_INFO.finditer(text))
    out = []
    for i, m in enumerate(fences):
        if m.group(1).lower() != "python":
            continue
        nxt = fences[i + 1] if i + 1 < len(fences) else None
        if nxt is not None and nxt.group(1) == "output" and not text[m.end():nxt.start()].strip():
            tol = {k: float(v) for k, v in re.findall(r"(rel|abs)=([0-9.eE+-]+)", nxt.group(2))}
            out.append((m.group(3), nxt.group(3), tol))
        else:
            out.append((m.group(3), None, {}))
    return out


def output_mismatch(expected: str, got: str, rel: float = 0.0, abs_: float = 0.0) -> str | None:
    """Why ``got`` (printed) does not match ``expected`` (the docs' output block), or None."""
    pattern, numbers = [], []
    for line in expected.strip("\n").splitlines():
        line = line.rstrip()
        if line.strip() == "...":
            pattern.append(r"(?:.*\n)*?")
            continue
        parts = re.split(f"({_NUMBER})", line)
        rx = ""
        for k, part in enumerate(parts):
            if k % 2:
                rx += f"({_NUMBER})"
                numbers.append(part)
            else:
                rx += r".*?".join(re.escape(p) for p in part.split("..."))
        pattern.append(r"[ \t]*" + rx + r"[ \t]*\n")
    text = "".join(line.rstrip() + "\n" for line in got.strip("\n").splitlines())
    m = re.fullmatch("".join(pattern), text)
    if m is None:
        return f"the printed text differs:\n--- docs\n{expected.strip()}\n--- printed\n{text.strip()}"
    for want, have in zip(numbers, m.groups()):
        w, h = float(want), float(have)
        if not math.isclose(w, h, rel_tol=max(rel, 1e-9), abs_tol=abs_):
            return f"the docs say {want}, the code printed {have} (tolerance rel={rel}, abs={abs_})"
    return None


def test_output_blocks_are_compared_number_by_number() -> None:
    assert output_mismatch("params 3203 -> 2551\n", "params 3203 -> 2600\n", rel=0.05) is None
    assert "2551" in output_mismatch("params 3203 -> 2551", "params 3203 -> 3203", rel=0.05)
    assert output_mismatch("conv2 d=0.486", "conv3 d=0.486") is not None  # names are text, not numbers
    assert output_mismatch("a\n...\nz 1.0", "a\nb\nc\nz 1.0000001", abs_=1e-3) is None
    assert output_mismatch("Linear(...)", "Linear(in=3, out=4)") is None
    assert output_mismatch("x 1", "x 1\nextra line") is not None


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


@pytest.mark.filterwarnings("error:CompressConfig. flat keys are deprecated")  # docs teach the nested form
@pytest.mark.parametrize("path", [p for p in DOCS if _blocks(p, {"python"})], ids=lambda p: p.name)
def test_python_blocks_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           isolated_registries: None) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COMPRESSKIT_DOCS_TEST", "1")
    namespace: dict = {"__name__": "__docs__"}
    for i, (block, expected, tol) in enumerate(_python_blocks(path)):
        where = f"{path.relative_to(ROOT)}: python block {i}"
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                exec(compile(block, f"{path.name}[python block {i}]", "exec"), namespace)
        except Exception as e:  # pragma: no cover - the failure message is the point
            pytest.fail(f"{where} failed: {type(e).__name__}: {e}\n{block}")
        if expected is not None:
            why = output_mismatch(expected, printed.getvalue(), tol.get("rel", 0.0), tol.get("abs", 0.0))
            assert why is None, f"{where}: its output block is not what it prints: {why}"


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
