"""The quality benchmark's bookkeeping: seeds run one at a time add up, a changed configuration
starts afresh, the table shows mean ± spread next to the published rows, missing data skips."""

import benchmarks.quality as quality


def _run(seed, recall, ndcg):
    return {"seed": seed, "test": {"recall@20": recall, "ndcg@20": ndcg}, "valid": {"recall@20": 0.2, "ndcg@20": 0.1},
            "popularity_test": {"recall@20": 0.04, "ndcg@20": 0.03}, "seconds_per_epoch": 20.0, "total_seconds": 600.0}


def test_seeds_run_one_at_a_time_add_up_and_a_rerun_seed_replaces_its_run():
    entry = {"config": "a.toml", "epochs_override": None, "runs": [_run(0, 0.17, 0.14)]}
    entry = quality.merge_runs(entry, {"config": "a.toml", "epochs_override": None, "runs": [_run(2, 0.19, 0.15)]})
    entry = quality.merge_runs(entry, {"config": "a.toml", "epochs_override": None, "runs": [_run(0, 0.18, 0.145)]})
    assert [(r["seed"], r["test"]["recall@20"]) for r in entry["runs"]] == [(0, 0.18), (2, 0.19)]
    changed = quality.merge_runs(entry, {"config": "b.toml", "epochs_override": None, "runs": [_run(1, 0.1, 0.1)]})
    assert [r["seed"] for r in changed["runs"]] == [1]  # another configuration: its own runs only
    edited = quality.merge_runs({**entry, "settings": {"model": {"embedding_dim": 128}}},
                                {"config": "a.toml", "settings": {"model": {"embedding_dim": 256}},
                                 "epochs_override": None, "runs": [_run(1, 0.1, 0.1)]})
    assert [r["seed"] for r in edited["runs"]] == [1]  # the same file, edited: the old seeds no longer count


def test_the_stored_settings_leave_out_seeds_and_paths_but_see_an_edited_file(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text('[model]\nembedding_dim = 32\n[train]\nseed = 3\n[batches]\nseed = 4\n[data]\npath = "x.csv"\n')
    settings = quality._settings(str(path))
    assert settings["model"]["embedding_dim"] == 32 and "data" not in settings
    assert "seed" not in settings["train"] and "seed" not in settings["batches"]
    path.write_text('[model]\nembedding_dim = 64\n')
    assert quality._settings(str(path))["model"]["embedding_dim"] == 64


def test_the_table_gives_mean_and_spread_next_to_the_published_rows():
    text = quality.table("gowalla", {"tuned": {"config": "x.toml", "runs": [_run(0, 0.17, 0.14), _run(1, 0.19, 0.16)]}})
    assert "| LightGCN | published | 0.1830 | 0.1554 |" in text
    # mean 0.18, sample standard deviation of (0.17, 0.19) = 0.0141
    assert "| twotower, tuned (`x.toml`) | seeds 0, 1 | 0.1800 ± 0.0141 | 0.1500 ± 0.0141 |" in text
    assert "| most-popular |  | 0.0400 | 0.0300 |" in text


def test_a_refit_gets_its_own_row_next_to_the_train_only_figure():
    runs = [{**_run(0, 0.17, 0.14), "best_epoch": 19, "refit_test": {"recall@20": 0.18, "ndcg@20": 0.15}},
            {**_run(1, 0.19, 0.16), "best_epoch": 20, "refit_test": {"recall@20": 0.20, "ndcg@20": 0.17}}]
    text = quality.table("gowalla", {"tuned": {"config": "x.toml", "runs": runs}})
    assert "| twotower, tuned (`x.toml`) | seeds 0, 1 | 0.1800 ± 0.0141 | 0.1500 ± 0.0141 |" in text
    assert ("| twotower, tuned (`x.toml`), refit on train + valid (19, 20 epochs) | seeds 0, 1 | 0.1900 ± 0.0141 "
            "| 0.1600 ± 0.0141 |") in text


def test_a_missing_data_set_is_skipped(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(quality, "DATA_ROOT", tmp_path)
    assert quality.main(["--data", "gowalla"]) == 0
    assert "skipped" in capsys.readouterr().out


def test_a_stored_entry_keeps_its_seeds_when_the_new_settings_hold_tuples(tmp_path):
    """Settings fresh from a config hold tuples (e.g. batches.hard_rank_range); once stored as JSON
    they are lists. The same configuration must still merge, not start afresh."""
    import json

    path = tmp_path / "a.toml"
    path.write_text('[model]\nembedding_dim = 32\n')
    settings = quality._settings(str(path))
    assert any(isinstance(v, tuple) for section in settings.values() if isinstance(section, dict)
               for v in section.values())  # the case this test is about
    stored = json.loads(json.dumps({"config": str(path), "settings": settings, "epochs_override": None,
                                    "runs": [_run(0, 0.17, 0.14)]}))
    merged = quality.merge_runs(stored, {"config": str(path), "settings": quality._settings(str(path)),
                                         "epochs_override": None, "runs": [_run(1, 0.18, 0.15)]})
    assert [r["seed"] for r in merged["runs"]] == [0, 1]
