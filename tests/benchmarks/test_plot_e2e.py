"""The end-to-end benchmark's plot is drawn from its JSON: check it on a synthetic result."""

import json
from pathlib import Path

import pytest

from benchmarks.plot_e2e import plot_e2e


def test_plot_is_written_whole_next_to_the_json(tmp_path: Path) -> None:
    rows = []
    for name, epochs in (("data A", 3), ("data B", 1)):
        for label, load, train, evaluate in (("reference PyTorch pipeline", 0.2, 7.0, 0.4),
                                             ("twotower, same settings", 0.05, 0.6, 0.01)):
            total = load + train + evaluate
            rows.append([name, epochs, label, f"{load:.2f}", f"{train:.1f}", "1,000", f"{evaluate:.2f}", "2,000",
                         f"{total:.1f}", f"{7.6 / total:.1f}x", "0.2"])
    path = tmp_path / "e2e.json"
    path.write_text(json.dumps({"rows": rows, "notes": []}))
    png = plot_e2e(path)
    assert png == tmp_path / "e2e.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e2e.json", "e2e.png"]


def test_a_malformed_result_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "e2e.json"
    path.write_text(
        json.dumps({"rows": [["data", 1, "pipeline", "n/a", "1.0", "1", "0.1", "1", "1.1", "1.0x", "0.2"]]})
    )
    with pytest.raises(ValueError):
        plot_e2e(path)
    assert [p.name for p in tmp_path.iterdir()] == ["e2e.json"]
