"""Every Python block of docs/distillation.md runs as written (in one namespace, in a scratch folder)."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "distillation.md"


def test_distillation_page_code_blocks_run(tmp_path, monkeypatch, isolated_registries):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_distillation"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name}[block {i}]", "exec"), namespace)
    assert (tmp_path / "runs" / "demo" / "metrics.jsonl").is_file()
