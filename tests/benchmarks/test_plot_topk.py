"""The top-K benchmark's plot is drawn from its JSON: check it on a synthetic result."""

import json
from pathlib import Path

import pytest

from benchmarks.plot_topk import plot_topk


def test_plot_is_written_whole_next_to_the_json(tmp_path: Path) -> None:
    rows = [["twotower ExactIndex.search", 1024, "650.0", "200", "1.00x", ""],
            ["PyTorch blocked matmul + topk", 1024, "4550.0", "29", "7.00x", ""],
            ["twotower ExactIndex.search", 1, "11.0", "11", "1.00x", "serving"],
            ["PyTorch blocked matmul + topk", 1, "13.0", "9", "1.18x", ""]]
    path = tmp_path / "topk.json"
    path.write_text(json.dumps({"rows": rows, "flops_per_batch": 1.0}))
    png = plot_topk(path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["topk.json", "topk.png"]


def test_a_malformed_result_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "topk.json"
    path.write_text(json.dumps({"rows": [["twotower", 1024, "fast", "1", "1.00x", ""]]}))
    with pytest.raises(ValueError):
        plot_topk(path)
    assert [p.name for p in tmp_path.iterdir()] == ["topk.json"]
