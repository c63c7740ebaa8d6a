"""`python -m benchmarks.graph_filter` on a tiny trained run: the figures it reports are the ones
an independent evaluation gives, the split-half judge keeps each half's users apart, and a missing
run is named and skipped."""

from __future__ import annotations

import json

import numpy as np
import pytest

import benchmarks.graph_filter as bench
import benchmarks.runner as runner
from tests.training.conftest import tiny_config


def test_restricted_targets_keep_exactly_the_chosen_users() -> None:
    from twotower.evaluate import SplitTargets

    rng = np.random.default_rng(0)
    per_user = [sorted(rng.choice(50, size=rng.integers(0, 6), replace=False).tolist()) for _ in range(12)]
    indptr = np.concatenate([[0], np.cumsum([len(items) for items in per_user])]).astype(np.int64)
    indices = np.array([item for items in per_user for item in items], dtype=np.int64)
    targets = SplitTargets(relevant=(indptr, indices), exclude=None, unreachable=np.arange(12), unreachable_users=3,
                           counts={})
    chosen = np.array([1, 4, 5, 9])
    part = bench._restricted(targets, chosen, 12)
    for user in range(12):
        got = part.relevant[1][part.relevant[0][user]:part.relevant[0][user + 1]].tolist()
        assert got == (per_user[user] if user in chosen else []), user
    assert part.unreachable.tolist() == [u if u in chosen else 0 for u in range(12)]
    assert part.unreachable_users == 0


def test_the_benchmark_reports_an_independent_evaluation_of_its_choice(tmp_path, monkeypatch, capsys) -> None:
    from twotower.data.csr import csr_pair
    from twotower.evaluate import evaluate_model
    from twotower.model.graph_filter import GraphFilter
    from twotower.model.model_dir import load_model_dir, trained_dataset
    from twotower.training.loop import fit

    run = tmp_path / "run"
    fit(tiny_config(), run, echo=lambda line: None)
    monkeypatch.setattr(runner, "RESULTS_DIR", tmp_path / "results")
    assert bench.main([str(run), str(tmp_path / "absent"), "--name", "tiny", "--weights", "0.5", "2.0",
                       "--sharpening", "0", "1.5", "--split-half", "2"]) == 0
    assert f"{tmp_path / 'absent'}: no model directory (RUN/model); skipped" in capsys.readouterr().out
    row = json.loads((tmp_path / "results" / "graph-filter-tiny.json").read_text())["rows"][0]
    trained = load_model_dir(run / "model")
    dataset = trained_dataset(trained)
    graph = GraphFilter.fit(*csr_pair(dataset.train_history), dataset.num_items, rank=trained.config["train_config"]
                            ["model"]["graph_filter_rank"]).with_weight(row["weight"], row["sharpening"])
    for split in ("valid", "test"):
        towers = evaluate_model(trained.model, dataset, split=split, ks=(10,), progress=False)
        blend = evaluate_model(trained.model, dataset, split=split, ks=(10,), progress=False, graph=graph)
        assert row[f"{split}_towers_ndcg"] == pytest.approx(towers["ndcg@10"], abs=1e-12)
        assert row[f"{split}_blend_ndcg"] == pytest.approx(blend["ndcg@10"], abs=1e-12)
    choices = {(c["sharpening"], c["weight"]): c["score"] for c in row["valid_by_choice"]}
    assert sorted(choices) == [(0.0, 0.0), (0.0, 0.5), (0.0, 2.0), (1.5, 0.5), (1.5, 2.0)]
    assert row["split_half_differ"].endswith("/4")
    assert 0 < row["split_half_two_step"] <= 1 and 0 < row["split_half_joint"] <= 1
    table = (tmp_path / "results" / "graph-filter-tiny.md").read_text()
    assert f"| run | {row['sharpening']} | {row['weight']} |" in table and "| mean ± spread |" in table
