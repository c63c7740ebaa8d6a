"""The protocol benchmark scores one saved model under every combination of the rules."""

import json

import pytest

from benchmarks.eval_protocols import every_protocol, protocol_rows
from tests.training.conftest import tiny_config
from twotower.training.loop import fit


@pytest.mark.slow  # a training, then eight evaluations: CI only
def test_every_combination_is_scored_and_the_default_row_is_the_runs_result(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the CPU loss path, as training users get
    fit(tiny_config(epochs=1), tmp_path)
    assert [name for name, _ in every_protocol()] == ["twotower", "", "lightgcn", "recbole", "", "", "lightgcn++", ""]
    rows, counts = protocol_rows(tmp_path / "model", "tiny")
    assert len(rows) == 8 and counts["unknown_item_rows"] == counts["repeat_target_count"] == 0
    test = json.loads((tmp_path / "results.json").read_text())["test"]
    assert rows[0][1] == "twotower" and rows[0][9] == f"{test['metrics']['ndcg@20']:.4f}"
    assert rows[0][5] == f"{test['num_users']:,}"
