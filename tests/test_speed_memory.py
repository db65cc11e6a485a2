"""Smoke test of benchmarks/accuracy/speed_memory.py: a loss and its peer, the envelope, the results files."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("monai")
pytest.importorskip("kornia")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy" / "speed_memory.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("speed_memory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["speed_memory"] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_every_shape_the_peer_and_the_envelope(bench, tmp_path):
    assert bench.main(["--quick", "--losses", "dice", "--presets", "erm", "--out-dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "speed_memory_cpu_quick.json").read_text())
    assert [record["case"] for record in results["losses"]] == list(bench.QUICK_SHAPES)
    for record in results["losses"]:
        assert record["implementations"] == ["ours", "peer"] and all(ms > 0 for ms in record["ms"])
        assert all(mib >= 0 for mib in record["peak_mib"])
    assert len(results["envelope"]) == 2  # the two multiclass shapes
    markdown = (tmp_path / "speed_memory_cpu_quick.md").read_text()
    assert "monai DiceLoss(sigmoid, squared_pred)" in markdown and "| erm |" in markdown


def test_cpu_peak_memory_sees_the_step_and_scales_with_the_input(bench):
    small = bench.peak_memory_cpu("dice", "ours", (2, 4, 64, 64), threads=1)
    large = bench.peak_memory_cpu("dice", "ours", (4, 4, 256, 256), threads=1)
    assert large > 4  # the logits alone are 4 MiB; softmax, one-hot and gradients add several copies
    assert large > small + 8  # 16x the input


def test_a_loss_that_needs_more_than_logits_and_labels_is_listed_as_skipped(bench, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise TypeError("Expected `features` to be a Tensor, but got None.")

    monkeypatch.setattr(bench, "benchmark", refuse)
    assert bench.main(["--quick", "--losses", "iou", "--presets", "", "--out-dir", str(tmp_path)]) == 0
    markdown = (tmp_path / "speed_memory_cpu_quick.md").read_text()
    assert "skipped: TypeError: Expected `features`" in markdown
