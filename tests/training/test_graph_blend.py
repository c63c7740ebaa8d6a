"""`model.graph_filter`: the weight chosen on validation, the blend in results, the model directory,
`evaluate` and `recommend`, and the refit."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest

from .conftest import tiny_config


def graph_config(weights: list[float], **train: object):
    config = tiny_config(**train)
    config.model = dataclasses.replace(config.model, graph_filter=True, graph_filter_weights=weights,
                                       graph_filter_rank=8)
    return config


def test_the_chosen_weight_is_the_best_on_validation_of_an_independent_evaluation(tmp_path) -> None:
    from twotower.datasets import load_dataset
    from twotower.evaluate import evaluate_model
    from twotower.training.graph_blend import choose_graph_blend
    from twotower.training.loop import fit

    config = graph_config([0.0])  # train without a choice, then choose here
    fit(tiny_config(), tmp_path, echo=lambda line: None)
    from twotower.model.model_dir import load_model_dir

    trained = load_model_dir(tmp_path / "model")
    dataset = load_dataset(config.data)
    config.model.graph_filter_weights = [0.2, 1.0, 5.0]
    blend = choose_graph_blend(config, trained.model, dataset)
    assert sorted(blend.valid_by_weight) == [0.0, 0.2, 1.0, 5.0]  # the towers alone always compete
    metric = config.train.select_metric
    for weight, score in blend.valid_by_weight.items():
        independent = evaluate_model(trained.model, dataset, split="valid", ks=config.train.ks, progress=False,
                                     graph=blend.graph.with_weight(weight))
        assert independent[metric] == pytest.approx(score, abs=1e-12)
    chosen_test = evaluate_model(trained.model, dataset, split="test", ks=config.train.ks, progress=False,
                                 graph=blend.graph)
    assert blend.test.metrics == pytest.approx(chosen_test.metrics, abs=1e-12)  # the sweep's test ranking
    best = max(blend.valid_by_weight.values())
    assert blend.valid_by_weight[blend.graph.weight] == best
    assert blend.graph.weight == min(w for w, s in blend.valid_by_weight.items() if s == best)


def test_a_run_with_the_filter_reports_saves_and_recommends_the_blend(tmp_path) -> None:
    from twotower.datasets import load_dataset
    from twotower.evaluate import evaluate_model
    from twotower.model.model_dir import load_model_dir
    from twotower.retrieval.graph_rank import graph_ranker
    from twotower.retrieval.recommend import Recommender
    from twotower.training.loop import fit

    config = graph_config([1.5])  # one weight: used as given
    result = fit(config, tmp_path, echo=lambda line: None)
    results = json.loads((tmp_path / "results.json").read_text())
    section = results["graph_filter"]
    assert section["weight"] == 1.5 and section["valid_by_weight"] == {} and section["rank"] == 8
    trained = load_model_dir(tmp_path / "model")
    assert trained.graph is not None and trained.graph.weight == 1.5
    dataset = load_dataset(config.data)
    kwargs = {"ks": config.train.ks, "progress": False}
    blended = evaluate_model(trained.model, dataset, split="test", graph=trained.graph, **kwargs)
    towers = evaluate_model(trained.model, dataset, split="test", **kwargs)
    assert results["test"]["metrics"] == blended.to_dict()["metrics"] == result.test.to_dict()["metrics"]
    assert section["towers"]["test"]["metrics"] == towers.to_dict()["metrics"]
    assert blended.metrics != towers.metrics  # the blend ranks differently here

    recommender = Recommender(trained)
    user_ids = [trained.user_vocab.decode(np.array([code]))[0] for code in (0, 5, 9)]
    answers = recommender.recommend(user_ids, k=7)
    codes = np.array([0, 5, 9])
    queries, exclude = recommender.code_queries(codes)
    seen = trained.seen
    from twotower.data.csr import take_rows

    order = graph_ranker(queries, trained.model.item_search_vectors(), trained.graph,
                         take_rows((seen.indptr, seen.indices), codes), 7)(np.arange(3), exclude)
    for answer, row in zip(answers, order, strict=True):
        np.testing.assert_array_equal(answer.items, trained.item_vocab.decode(row[row >= 0]))
    towers_only = [a.items for a in Recommender(dataclasses.replace(trained, graph=None)).recommend(user_ids, k=7)]
    assert any(not np.array_equal(a.items, b) for a, b in zip(answers, towers_only, strict=True))


def test_without_validation_several_weights_leave_the_towers_alone(tmp_path, caplog) -> None:
    from twotower.training.loop import fit

    config = graph_config([0.0, 1.0])
    config.data.options = dataclasses.replace(config.data.options, ratios=(0.8, 0.0, 0.2))
    with caplog.at_level(logging.WARNING, logger="twotower"):
        fit(config, tmp_path, echo=lambda line: None)
    assert "no validation split" in caplog.text
    assert "graph_filter" not in json.loads((tmp_path / "results.json").read_text())
    assert not (tmp_path / "model" / "graph_filter.safetensors").exists()


def test_the_refit_blends_with_the_weight_its_selection_chose(tmp_path) -> None:
    from twotower.model.model_dir import load_model_dir
    from twotower.training.loop import fit

    fit(graph_config([0.0, 3.0], epochs=2, patience=0, refit=True), tmp_path, echo=lambda line: None)
    chosen = json.loads((tmp_path / "results.json").read_text())["graph_filter"]["weight"]
    refit = json.loads((tmp_path / "refit" / "results.json").read_text())["graph_filter"]
    assert refit["weight"] == chosen and refit["valid_by_weight"] == {}
    graph = load_model_dir(tmp_path / "refit" / "model").graph
    assert (graph is None) == (chosen == 0) and (graph is None or graph.weight == chosen)


def test_bad_settings_are_named() -> None:
    from twotower.settings import TrainConfig

    for weights in ([], [-1.0], [float("nan")]):
        config = TrainConfig()
        config.model.graph_filter_weights = weights
        with pytest.raises(ValueError, match="graph_filter_weights must be a non-empty list of finite floats >= 0"):
            config.validate()
    config = TrainConfig()
    config.model.graph_filter_rank = -1
    with pytest.raises(ValueError, match="graph_filter_rank must be >= 0"):
        config.validate()


def test_a_finished_run_resumed_with_the_filter_gains_the_blend(tmp_path) -> None:
    """The filter comes after training: resuming a finished run with it only redoes the finish."""
    from twotower.training.loop import fit

    first = fit(tiny_config(), tmp_path, echo=lambda line: None)
    assert "graph_filter" not in json.loads((tmp_path / "results.json").read_text())
    again = fit(graph_config([2.0]), tmp_path, resume=True, echo=lambda line: None)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["graph_filter"]["weight"] == 2.0 and again.best_epoch == first.best_epoch
    assert results["graph_filter"]["towers"]["valid"]["metrics"] == first.valid.to_dict()["metrics"]
    assert (tmp_path / "model" / "graph_filter.safetensors").is_file()
