"""`model.graph_filter`: the weight and sharpening chosen on validation, the blend in results, the
model directory, `evaluate` and `recommend`, and the refit."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest

from .conftest import tiny_config


def graph_config(weights: list[float], sharpening: tuple[float, ...] = (0.0,), **train: object):
    config = tiny_config(**train)
    config.model = dataclasses.replace(config.model, graph_filter=True, graph_filter_weights=weights,
                                       graph_filter_sharpening=list(sharpening), graph_filter_rank=8)
    return config


def filter_alone_ranker(graph, history, k: int):
    """float64 NumPy ranking by the filter's own scores (no towers; ties to the lower id, excluded
    items last), independent of the sweep's torch path."""
    from twotower.data.csr import take_rows

    def rank(users: np.ndarray, exclude) -> np.ndarray:
        scores = graph.scores(*take_rows(history, users)).astype(np.float64)
        for row, (start, stop) in enumerate(zip(exclude[0][:-1], exclude[0][1:], strict=True)):
            scores[row, exclude[1][start:stop]] = -np.inf
        order = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -scores), axis=1)[:, :k]
        return np.where(np.take_along_axis(scores, order, 1) > -np.inf, order, -1)

    return rank


def test_the_time_is_chosen_on_the_filter_alone_then_the_weight_on_the_blend(tmp_path) -> None:
    """Two steps, each checked against an independent evaluation: the sharpening time whose filter
    alone ranks validation best, then the weight whose blend at that time does (the towers alone,
    weight 0, competing); the chosen pair's test ranking is the sweep's."""
    from twotower.data.csr import csr_pair
    from twotower.datasets import load_dataset
    from twotower.evaluate import evaluate_model, evaluate_targets, split_targets
    from twotower.training.graph_blend import choose_graph_blend
    from twotower.training.loop import fit

    config = graph_config([0.0])  # train without a choice, then choose here
    fit(tiny_config(), tmp_path, echo=lambda line: None)
    from twotower.model.model_dir import load_model_dir

    trained = load_model_dir(tmp_path / "model")
    dataset = load_dataset(config.data)
    config.model.graph_filter_weights = [0.2, 1.0, 5.0]
    config.model.graph_filter_sharpening = [0.0, 1.5, 3.0]
    blend = choose_graph_blend(config, trained.model, dataset)
    metric, ks = config.train.select_metric, config.train.ks
    # the towers alone (weight 0, whatever the sharpening) always compete, once
    assert sorted(blend.valid_by_choice) == [(0.0, 0.0), *[(t, w) for t in (0.0, 1.5, 3.0) for w in (0.2, 1.0, 5.0)]]
    for (time, weight), score in blend.valid_by_choice.items():
        independent = evaluate_model(trained.model, dataset, split="valid", ks=ks, progress=False,
                                     graph=blend.graph.with_weight(weight, time))
        assert independent[metric] == pytest.approx(score, abs=1e-12)
    targets = split_targets(dataset, "valid")
    history = csr_pair(dataset.train_history)
    assert sorted(blend.valid_alone) == [0.0, 1.5, 3.0]
    for time, score in blend.valid_alone.items():
        ranker = filter_alone_ranker(blend.graph.with_weight(1.0, time), history, max(ks))
        independent = evaluate_targets(ranker, targets, num_items=dataset.num_items, ks=ks, progress=False, desc="")
        assert independent[metric] == pytest.approx(score, abs=1e-9)
    assert len({round(s, 12) for s in blend.valid_alone.values()}) == 3  # the time matters here
    best_alone = max(blend.valid_alone.values())
    chosen_time = min(t for t, s in blend.valid_alone.items() if s == best_alone)
    assert blend.graph.sharpening == chosen_time
    at_time = {w: s for (t, w), s in blend.valid_by_choice.items() if t == chosen_time or w == 0}
    assert blend.graph.weight == min(w for w, s in at_time.items() if s == max(at_time.values()))
    chosen_test = evaluate_model(trained.model, dataset, split="test", ks=ks, progress=False, graph=blend.graph)
    assert blend.test.metrics == pytest.approx(chosen_test.metrics, abs=1e-12)  # the sweep's test ranking
    described = blend.describe()
    assert [entry["sharpening"] for entry in described["valid_alone_by_sharpening"]] == [0.0, 1.5, 3.0]


def test_the_defaults_choose_the_filter_on_validation(tmp_path) -> None:
    """The filter is on by default: a run with the default filter settings chooses among every
    default (sharpening, weight) pair, the towers alone included, and reports the choice."""
    from twotower.settings import TrainConfig
    from twotower.training.loop import fit

    defaults = TrainConfig().model
    assert defaults.graph_filter
    config = tiny_config()
    config.model = dataclasses.replace(config.model, graph_filter=True)
    fit(config, tmp_path, echo=lambda line: None)
    section = json.loads((tmp_path / "results.json").read_text())["graph_filter"]
    pairs = {(c["sharpening"], c["weight"]) for c in section["valid_by_choice"]}
    times = sorted(defaults.graph_filter_sharpening)
    assert pairs == {(times[0], 0.0)} | {(t, w) for t in times for w in defaults.graph_filter_weights if w > 0}
    alone = {c["sharpening"]: c["score"] for c in section["valid_alone_by_sharpening"]}
    assert sorted(alone) == times and section["sharpening"] == max(times, key=lambda t: (alone[t], -t))
    at_time = [c["score"] for c in section["valid_by_choice"] if c["sharpening"] == section["sharpening"]
               or c["weight"] == 0]
    assert [c["score"] for c in section["valid_by_choice"]
            if (c["sharpening"], c["weight"]) == (section["sharpening"], section["weight"])
            or (section["weight"] == 0 and c["weight"] == 0)] == [max(at_time)]
    assert (tmp_path / "model" / "graph_filter.safetensors").is_file() == (section["weight"] > 0)


def test_a_run_with_the_filter_reports_saves_and_recommends_the_blend(tmp_path) -> None:
    from twotower.datasets import load_dataset
    from twotower.evaluate import evaluate_model
    from twotower.model.model_dir import load_model_dir
    from twotower.retrieval.graph_rank import graph_ranker
    from twotower.retrieval.recommend import Recommender
    from twotower.training.loop import fit

    config = graph_config([1.5], sharpening=(1.0,))  # one weight and one time: used as given
    result = fit(config, tmp_path, echo=lambda line: None)
    results = json.loads((tmp_path / "results.json").read_text())
    section = results["graph_filter"]
    assert (section["weight"], section["sharpening"], section["valid_by_choice"], section["rank"]) == (1.5, 1.0, [], 8)
    trained = load_model_dir(tmp_path / "model")
    assert trained.graph is not None and (trained.graph.weight, trained.graph.sharpening) == (1.5, 1.0)
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


def test_new_users_with_a_history_rank_by_the_blend_of_that_history(tmp_path) -> None:
    """`recommend_for_features(history=...)` of a model with a filter (whose towers pool no
    history): the unknown user's tower vector blended with the filter's scores of the given
    history, as a float64 brute force ranks them; the history left out; an empty history is the
    towers alone. Without a filter the same call is refused, naming both ways to take a history."""
    from twotower.model.model_dir import load_model_dir
    from twotower.retrieval.recommend import Recommender
    from twotower.training.loop import fit

    fit(graph_config([1.5], sharpening=(1.0,)), tmp_path / "blend", echo=lambda line: None)
    trained = load_model_dir(tmp_path / "blend" / "model")
    assert trained.graph is not None and not trained.model.config.user_history
    ids = trained.item_vocab.ids
    rows = [[ids[3], ids[40], ids[41]], [ids[7]], []]
    recommender = Recommender(trained)
    got = recommender.recommend_for_features(history=rows, k=6)
    queries = recommender.encode_new_users(history=rows).astype(np.float64)
    codes = [trained.item_vocab.encode(np.array(row, dtype=ids.dtype)) if row else np.zeros(0, np.int64)
             for row in rows]
    indptr = np.concatenate([[0], np.cumsum([len(c) for c in codes])]).astype(np.int64)
    filtered = trained.graph.scores(indptr, np.concatenate(codes).astype(np.int64)).astype(np.float64)
    towers = queries @ trained.model.item_search_vectors().astype(np.float64).T

    def z(x):
        spread = x.std(1, keepdims=True)
        return np.where(spread > 0, (x - x.mean(1, keepdims=True)) / np.where(spread > 0, spread, 1), 0)

    scores = z(towers) + trained.graph.weight * z(filtered)
    for row, row_codes in enumerate(codes):
        scores[row, row_codes] = -np.inf
    for answer, row_scores, row_codes in zip(got, scores, codes, strict=True):
        want = np.argsort(-row_scores, kind="stable")[:6]
        np.testing.assert_array_equal(answer.items, trained.item_vocab.decode(want))
        assert not set(answer.items.tolist()) & set(trained.item_vocab.decode(row_codes).tolist())
    towers_only = np.argsort(-towers[2], kind="stable")[:6]
    np.testing.assert_array_equal(got[2].items, trained.item_vocab.decode(towers_only))
    assert not np.array_equal(got[0].items, trained.item_vocab.decode(np.argsort(-towers[0], kind="stable")[:6]))

    plain = Recommender(dataclasses.replace(trained, graph=None))
    with pytest.raises(ValueError, match=r"pools histories \(model.user_history\) or that blends a graph filter"):
        plain.recommend_for_features(history=rows, k=6)


def test_the_filter_runs_on_every_core_after_training(tmp_path, monkeypatch) -> None:
    """With `train.num_threads` unset the step leaves a core to the batch worker; the filter's fit,
    choice and test ranking come after it and take every core."""
    import os

    import torch

    import twotower.training.run_outputs as outputs
    from twotower.training.loop import fit

    seen = []
    real = outputs.choose_graph_blend
    monkeypatch.setattr(outputs, "choose_graph_blend",
                        lambda *args: seen.append(torch.get_num_threads()) or real(*args))
    before = torch.get_num_threads()
    fit(graph_config([1.0], sharpening=(1.0,), num_threads=0, epochs=1), tmp_path, echo=lambda line: None)
    assert seen == [os.cpu_count()]
    assert torch.get_num_threads() == before


def test_without_validation_several_weights_leave_the_towers_alone(tmp_path, caplog) -> None:
    from twotower.training.loop import fit

    config = graph_config([0.0, 1.0])
    config.data.options = dataclasses.replace(config.data.options, ratios=(0.8, 0.0, 0.2))
    with caplog.at_level(logging.WARNING, logger="twotower"):
        fit(config, tmp_path, echo=lambda line: None)
    assert "no validation split" in caplog.text
    assert "graph_filter" not in json.loads((tmp_path / "results.json").read_text())
    assert not (tmp_path / "model" / "graph_filter.safetensors").exists()


def test_the_refit_blends_with_the_weight_and_sharpening_its_selection_chose(tmp_path) -> None:
    from twotower.model.model_dir import load_model_dir
    from twotower.training.loop import fit

    fit(graph_config([0.0, 3.0], sharpening=(0.0, 2.0), epochs=2, patience=0, refit=True), tmp_path,
        echo=lambda line: None)
    chosen = json.loads((tmp_path / "results.json").read_text())["graph_filter"]
    refit = json.loads((tmp_path / "refit" / "results.json").read_text())["graph_filter"]
    assert (refit["weight"], refit["sharpening"]) == (chosen["weight"], chosen["sharpening"])
    assert refit["valid_by_choice"] == []
    graph = load_model_dir(tmp_path / "refit" / "model").graph
    assert (graph is None) == (chosen["weight"] == 0)
    assert graph is None or (graph.weight, graph.sharpening) == (chosen["weight"], chosen["sharpening"])


def test_bad_settings_are_named() -> None:
    from twotower.settings import TrainConfig

    for weights in ([], [-1.0], [float("nan")]):
        config = TrainConfig()
        config.model.graph_filter_weights = weights
        with pytest.raises(ValueError, match="graph_filter_weights must be a non-empty list of finite floats >= 0"):
            config.validate()
    for times in ([], [-0.5], [float("inf")], [True]):
        config = TrainConfig()
        config.model.graph_filter_sharpening = times
        with pytest.raises(ValueError, match="graph_filter_sharpening must be a non-empty list of finite floats >= 0"):
            config.validate()
    config = TrainConfig()
    config.model.graph_filter_ideal_weight = -0.1
    with pytest.raises(ValueError, match="graph_filter_ideal_weight must be a finite float >= 0"):
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
