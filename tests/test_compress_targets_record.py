"""benchmarks/compress_targets.py keeps the docs table's rows in docs/data/compress_targets.json: a run of
some teachers replaces their rows and keeps the others' measured on the same data; rows measured on other
data never mix into the table. Also: the committed record renders the committed table."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT / "examples"))
    import compress_targets

    return compress_targets


def _row(teacher, label, psnr):
    return {"teacher": teacher, "label": label, "psnr": psnr}


def test_a_run_replaces_its_teachers_rows_and_keeps_the_others(tmp_path):
    ct = _bench()
    record = tmp_path / "data" / "record.json"
    data = {"gap": 4, "clips": "a,b", "crop": 128, "batch_size": 4, "eval": 28}
    first = [_row("flow", "teacher", 30.0), _row("flow", "2x", 29.0), _row("rife", "teacher", 31.0),
             _row("rife", "5x", 30.5)]
    assert ct.merge_record(record, first, data) == first
    again = [_row("flow", "teacher", 30.4), _row("flow", "5x", 29.9)]
    merged = ct.merge_record(record, again, data)
    assert merged == again + first[2:]  # flow's rows all replaced, in the recorded teacher order
    assert json.loads(record.read_text()) == {"data": data, "rows": merged}
    other = {**data, "gap": 1}
    assert ct.merge_record(record, again, other) == again  # other data: nothing recorded is kept


def test_the_committed_record_renders_the_committed_table():
    ct = _bench()
    blob = json.loads((ROOT / "docs" / "data" / "compress_targets.json").read_text())
    data = blob["data"]
    page = (ROOT / "docs" / "results.md").read_text()
    committed = page[page.index(ct.BEGIN) + len(ct.BEGIN):page.index(ct.END)].strip("\n")
    args = type("Args", (), {"gap": data["gap"], "clips": data["clips"], "crop": data["crop"],
                             "batch_size": data["batch_size"], "large_gap": data["large_gap"]})()
    assert ct.table(blob["rows"], args, data["eval"], data["eval_large"]) == committed
