"""examples/plugins/: a cost measure ("memory") and an importance ("random") are each one file plus one
registration, reachable from ``ck.compress`` by name; docs/plugins.md quotes the files verbatim.

References: the bytes of a 2-layer conv net counted by hand; the l1 ordering of the same units; the
compressed model measured by the metric's own measurement.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import compresskit as ck
from compresskit.plan.importance import IMPORTANCES, L1Importance, get_importance, importance_fingerprint
from compresskit.plan.metric import METRICS, get_metric
from compresskit.stages import PlanStage

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "plugins"
PAGE = ROOT / "docs" / "plugins.md"


@pytest.fixture(scope="module")
def plugins():
    """The two example files imported once, their registrations undone afterwards."""
    sys.path.insert(0, str(EXAMPLES))
    names = ("memory_metric", "random_importance")
    try:
        with METRICS.snapshot(), IMPORTANCES.snapshot():
            yield {name: importlib.import_module(name) for name in names}
    finally:
        sys.path.remove(str(EXAMPLES))
        for name in names:
            sys.modules.pop(name, None)


def _two_conv() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))


# ------------------------------------------------------------------------------------------- the page
def test_the_page_quotes_every_example_file_verbatim():
    blocks = dict(re.findall(r"^```python\n# (examples/plugins/\w+\.py)\n(.*?)^```", PAGE.read_text(),
                             re.M | re.S))
    assert sorted(blocks) == sorted(f"examples/plugins/{p.name}" for p in EXAMPLES.glob("*.py"))
    for rel, body in blocks.items():
        assert body == (ROOT / rel).read_text(), f"docs/plugins.md is out of date with {rel}"


# ------------------------------------------------------------------------------------------ "memory"
def test_memory_is_the_hand_counted_bytes_of_weights_and_layer_outputs(plugins):
    net, x = _two_conv(), torch.rand(1, 3, 8, 8)
    # weights: conv1 8·3·9 + 8 = 224, conv2 4·8·9 + 4 = 292; outputs: conv1 8·8·8 = 512, conv2 4·8·8 = 256
    assert plugins["memory_metric"].memory_bytes(net, x) == 4 * (224 + 292 + 512 + 256)
    assert get_metric("memory").measure(net, x) == 4 * 1284


def test_memory_cost_model_predicts_the_shrunk_model_exactly(plugins):
    net, x = _two_conv(), torch.rand(1, 3, 8, 8)
    graph = ck.trace(net, (x,))
    (group,) = graph.prunable_groups  # conv1's 8 output channels (conv2's are the graph's output)
    cost = get_metric("memory").cost(net, graph, (x,))
    # keeping w of conv1's channels: weights 27w + w + 36w + 4, outputs 64w + 256 -> 128w + 260 elements
    assert cost.full() == 4 * (128 * 8 + 260)
    assert cost({group.id: 3}) == 4 * (128 * 3 + 260)
    small = ck.shrink(net, graph, keep={group.id: torch.tensor([0, 2, 5])})
    assert plugins["memory_metric"].memory_bytes(small, x) == 4 * (128 * 3 + 260)


# ------------------------------------------------------------------------------------------ "random"
def test_random_importance_is_seeded_and_not_the_l1_ordering(plugins):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 3, 3, padding=1))
    graph = ck.trace(net, (torch.rand(1, 3, 8, 8),))
    (group,) = graph.prunable_groups
    random = get_importance("random")  # by name, as the config names it
    first, again = random(net, graph), random(net, graph)
    other = plugins["random_importance"].RandomImportance(seed=1)(net, graph)
    l1 = L1Importance()(net, graph)
    scores = first[group.id]
    assert scores.shape == (32,) and scores.dtype == torch.float64 and ((scores >= 0) & (scores < 1)).all()
    assert torch.equal(scores, again[group.id])
    assert not torch.equal(scores, other[group.id])
    assert not torch.equal(torch.argsort(scores), torch.argsort(l1[group.id]))
    assert importance_fingerprint(random) == {"name": "random", "seed": 0}


# ---------------------------------------------------------------------------------- both, by name
def test_compress_meets_two_x_memory_by_the_metrics_own_measurement(plugins, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    random, calls = plugins["random_importance"].RandomImportance, []
    score = random.__call__

    def counted(self, model, graph):
        calls.append(self.seed)
        return score(self, model, graph)

    monkeypatch.setattr(random, "__call__", counted)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                        nn.ReLU(), nn.Conv2d(16, 3, 3, padding=1))
    batches = [(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)) for _ in range(2)]
    config = {"plan": {"importance": "random"}, "sparsify": {"steps": 2}, "recover": {"steps": 2},
              "progress": False, "measure_latency": False, "out_dir": str(tmp_path)}
    result = ck.compress(net, batches, target="2x memory", config=config)
    stamp = torch.load(tmp_path / PlanStage.artifact, weights_only=True)["fingerprint"]["plan"]
    assert stamp["importance"] == {"name": "random", "seed": 0}  # the strategies' own fingerprints
    assert [m["name"] for m in stamp["metrics"]] == ["memory"]
    assert result.report.target["target"] == "2x memory" and calls and set(calls) == {0}  # "random" ranked
    x = batches[0][0]
    measure = plugins["memory_metric"].memory_bytes
    assert measure(net, x) == 4 * (3203 + 2 * (16 + 16 + 3) * 16 * 16)  # weights + layer outputs, by hand
    assert measure(result.model, x) <= measure(net, x) / 2
    assert result.report.target["achieved"] == pytest.approx(measure(net, x) / measure(result.model, x))
